"""The tutorials' code blocks run, so the docs cannot rot."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("page", ["tutorials/maml_in_a_few_lines.md", "index.md", "../README.md"])
def test_tutorial_code_runs(page, capsys):
    blocks = _python_blocks(DOCS / page)
    assert blocks, f"{page} has no python code"
    namespace = {"ITERATIONS": 2}
    for block in blocks:
        exec(compile(block, str(DOCS / page), "exec"), namespace)  # noqa: S102
    if page.startswith("tutorials/maml"):
        out = capsys.readouterr().out
        assert "matches finite differences" in out
        assert "['lrs', 'params']" in out
