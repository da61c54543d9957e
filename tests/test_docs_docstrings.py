r"""Docstrings reach the docs as written: LaTeX unmangled, examples printing what they return.

In a docstring that is not raw, `$\theta$` written without an `r` prefix reaches the page as a tab and
"heta", and `$\nabla$` as a line break and "abla". Griffe renders every bare string statement
(module, class, function and attribute docstrings), so all of them are scanned, from source.
"""

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "metaops"
SOURCES = sorted(PACKAGE.rglob("*.py"))

MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$", flags=re.S)
INLINE_MATH = re.compile(r"(?<!\$)\$(?!\$)([^$\n]+)\$")
# Python's escapes: the pair "\\" is one backslash; every other "\x" changes or may change the text.
ESCAPE = re.compile(r"\\(.)", flags=re.S)
HARMLESS = {"\\", "'", '"'}


def _string_tokens(source: str, node: ast.Constant) -> list[str]:
    segment = ast.get_source_segment(source, node)
    tokens = tokenize.generate_tokens(io.StringIO(segment).readline)
    return [token.string for token in tokens if token.type == tokenize.STRING]


def _docstrings(path: Path):
    """(line, literal source text of each string token, value) of every bare string statement."""
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            yield node.lineno, _string_tokens(source, node.value), node.value.value


def escape_problems(literal: str) -> list[str]:
    """Escapes in one string literal's source that would mangle its text (none if it is raw)."""
    prefix = literal[: len(literal) - len(literal.lstrip("rRuUbBfF"))]
    if "r" in prefix.lower():
        return []
    quote = literal[len(prefix) : len(prefix) + 3]
    quote = quote if quote in ('"""', "'''") else quote[0]
    body = literal[len(prefix) + len(quote) : len(literal) - len(quote)]
    math = [m.span() for m in MATH.finditer(body)]
    problems = []
    for match in ESCAPE.finditer(body):
        char = match.group(1)
        in_math = any(start <= match.start() < end for start, end in math)
        if char in HARMLESS or (char == "n" and not in_math):
            continue
        shown = "\\" + char if char != "\n" else "\\<newline>"
        problems.append(f"{shown!r} in {body[max(0, match.start() - 20) : match.end() + 20]!r}")
    return problems


def value_problems(doc: str) -> list[str]:
    """What is wrong with a docstring's text as the docs receive it."""
    problems = [f"control character {c!r}" for c in sorted(set(doc)) if ord(c) < 32 and c != "\n"]
    problems += [
        f"LaTeX line break '\\\\' inside inline math ${m.group(1)}$"
        for m in INLINE_MATH.finditer(doc)
        if "\\\\" in m.group(1)
    ]
    return problems


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE.parent)) for p in SOURCES])
def test_docstrings_survive_python_escapes(path):
    problems = []
    for line, literals, value in _docstrings(path):
        for literal in literals:
            problems += [f"line {line}: {p}" for p in escape_problems(literal)]
        problems += [f"line {line}: {p}" for p in value_problems(value)]
    assert not problems, (
        f"{path.relative_to(PACKAGE.parent)}: write LaTeX docstrings as r-strings with single backslashes:\n"
        + "\n".join(problems)
    )


@pytest.mark.parametrize(
    "literal, bad",
    [
        ('"""Meta-parameters $\\theta$."""', True),  # the tab in "\theta"
        ('"""Gradient $\\nabla f$."""', True),  # a line break inside math
        ('"""Distance $\\lVert a\\rVert$."""', True),  # "\r" and an invalid escape "\l"
        ('"""Meta-parameters $\\\\theta$."""', False),  # escaped: the text is "\theta"
        ('r"""Meta-parameters $\\theta$."""', False),  # raw
        ('"""First line.\\n\\nSecond."""', False),  # "\n" outside math is a line break, as meant
    ],
)
def test_escape_scanner(literal, bad):
    assert bool(escape_problems(literal)) is bad


def test_value_scanner():
    assert value_problems("Meta-parameters $\\\\theta$.")  # raw "\\theta": a LaTeX line break
    assert value_problems("Meta-parameters $\theta$.")  # a tab
    assert not value_problems("Meta-parameters $\\theta$ and $$a \\\\ b$$.")


def test_doctests_compare_numbers_exactly():
    """Without doctest's NUMBER flag `-0.1` does not match -0.141: a reader copies the value."""
    config = (PACKAGE.parent / "pyproject.toml").read_text()
    assert "NUMBER" not in config.split("doctest_optionflags", 1)[1].split("\n", 1)[0]
