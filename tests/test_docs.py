"""The docs' Python code runs as a reader runs it, so the docs cannot rot.

The convention, for everyone who writes docs:

- The ```python blocks of a page are **one program**: a reader who pastes them in order into a
  fresh Python session (or one file), from the repository's root folder, gets what the page
  shows. A page whose blocks are independent examples makes each block complete on its own.
  The test runs every page so, in a fresh namespace: no name is injected, nothing is skipped.
  Keep the run short by writing a small iteration count into the snippet itself, with a comment.
- A block that cannot run as it stands (a sketch of code that goes into the reader's own
  program) carries a visible title that starts with "Fragment", e.g.
  ```python title="Fragment: inside your training loop"; the test skips it. Keep these rare.
- Other code is fenced with another language (```bash, ```text); ```py and the like are refused,
  so that no Python escapes the test.
"""

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", flags=re.S | re.M)
FRAGMENT = re.compile(r"""\btitle=(["'])Fragment""")
PYTHON_ALIASES = {"py", "py3", "python3", "pycon", "ipython"}

# Pages that take more than a few seconds (compiling, a 2,000-iteration recipe run, CartPole
# rollouts) run in the slow tier, which `make test` and CI include.
SLOW = {"guides/performance.md", "recipes/maml_sine.md", "tutorials/rl_meta_gradients.md"}


def fences(path: Path) -> list[tuple[str, str]]:
    """(language line, code) of each fenced block, the code dedented to the fence's indent.

    The code is preceded by blank lines, so that a traceback names the line of the page.
    """
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        indent = len(match["indent"])
        code = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        blocks.append((match["info"].strip(), "\n" * text.count("\n", 0, match.start("body")) + code))
    return blocks


def program(path: Path) -> list[str]:
    """The page's runnable Python blocks, in order (fragments left out)."""
    return [
        code for info, code in fences(path) if info.split(" ")[0] == "python" and not FRAGMENT.search(info)
    ]


def _pages():
    pages = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]
    for path in pages:
        name = path.relative_to(DOCS).as_posix() if path.is_relative_to(DOCS) else path.name
        if program(path):
            marks = [pytest.mark.slow] if name in SLOW else []
            yield pytest.param(path, id=name, marks=marks)


PAGES = list(_pages())


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_as_a_program(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the snippets write runs/...; keep them out of the repository
    main = types.ModuleType("__main__")  # a fresh script, as `python page.py` runs it (and as
    monkeypatch.setitem(sys.modules, "__main__", main)  # torch.compile looks its globals up)
    for i, code in enumerate(program(page)):
        # a real .py file per block, so that tracebacks, inspect and torch.compile read the
        # source the code came from (the .md page's lines do not match the block's)
        script = tmp_path / f"{page.stem}_block{i}.py"
        script.write_text(code)
        exec(compile(code, str(script), "exec"), main.__dict__)  # noqa: S102
    out = capsys.readouterr().out
    if page.name == "maml_in_a_few_lines.md":
        assert "matches finite differences" in out
        assert "['lrs', 'params']" in out
    if page.name == "envs.md" and page.parent.name == "api":
        assert "torch.Size([40, 20, 200])" in out


def test_pages_are_found():
    tested = {param.values[0] for param in PAGES}
    for page in ["../README.md", "index.md", "tutorials/maml_in_a_few_lines.md", "api/experiment.md"]:
        assert (DOCS / page).resolve() in tested, page


def test_no_python_hides_under_another_fence():
    for path in sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]:
        for info, _ in fences(path):
            language = info.split(" ")[0].lower()
            assert language not in PYTHON_ALIASES, f"{path}: fence ```{info}: write ```python (see {__name__})"


def test_fragment_convention(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n```python\nx = 1\n```\n\n"
        '```python title="Fragment: inside your loop"\nundefined_name\n```\n\n'
        "!!! note\n    ```python\n    y = x + 1\n    ```\n\n```bash\nmake docs\n```\n"
    )
    assert [code.strip() for code in program(page)] == ["x = 1", "y = x + 1"]
