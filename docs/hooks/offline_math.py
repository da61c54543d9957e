"""mkdocs hook: serves MathJax from the built site, so that formulas render without internet.

MathJax 3 comes from the `django-static-mathjax` wheel (the `docs` extra of pyproject.toml), a
plain copy of the `mathjax-full` npm package that needs no Django and no node. Nothing of it is
committed: at every build (and every `mkdocs serve` rebuild) this hook adds the parts a browser
can load to the site under `javascripts/mathjax/`, which mkdocs.yml's `extra_javascript` names.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

SITE_DIR = "javascripts/mathjax"

# The combined component that mkdocs.yml loads, plus what it loads lazily from the same folder:
# TeX extensions (`\boldsymbol` and the like autoload), CHTML fonts, the SVG renderer and the
# accessibility tools (both selectable from MathJax's context menu), and the menu itself.
PARTS = ("tex-mml-chtml.js", "input", "output", "ui", "a11y", "sre")


def mathjax_dir() -> Path:
    """The installed MathJax `es5` folder (the browser build)."""
    try:
        import mathjax  # the django-static-mathjax distribution
    except ImportError as error:
        raise PluginError(
            "MathJax is not installed; the docs need it to render formulas offline. "
            'Install the docs extra: pip install -e ".[docs]"'
        ) from error
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / PARTS[0]).is_file():
        raise PluginError(f"{es5 / PARTS[0]} is missing: reinstall django-static-mathjax")
    return es5


def on_files(files: Files, config: MkDocsConfig) -> Files:
    es5 = mathjax_dir()
    for part in PARTS:
        root = es5 / part
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            uri = f"{SITE_DIR}/{path.relative_to(es5).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
