"""The built docs site is self-contained: formulas render, and no page loads anything from the internet.

MathJax is copied into the site at build time by docs/hooks/offline_math.py (from the
django-static-mathjax wheel of the `docs` extra); mkdocs-material's Google Fonts are off.
"""

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATHJAX = "javascripts/mathjax/tex-mml-chtml.js"

# <link rel=...> values that make the browser fetch the target (a rel="canonical" or an <a> does not).
FETCHING_RELS = {"stylesheet", "preconnect", "preload", "prefetch", "dns-prefetch", "modulepreload", "icon",
                 "apple-touch-icon", "manifest"}  # fmt: skip


class _Loads(HTMLParser):
    """Collects every URL a page makes the browser load, and whether it has math."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self.has_math = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "arithmatex" in (attrs.get("class") or "").split():
            self.has_math = True
        if attrs.get("src"):
            self.urls.append(attrs["src"])
            if tag == "script":
                self.scripts.append(attrs["src"])
        if tag == "link" and FETCHING_RELS & set((attrs.get("rel") or "").lower().split()):
            self.urls.append(attrs.get("href") or "")
        if "url(" in (attrs.get("style") or ""):
            self.urls += _css_urls(attrs["style"])


def _css_urls(css: str) -> list[str]:
    urls = []
    for chunk in css.split("url(")[1:]:
        urls.append(chunk.split(")")[0].strip("'\" "))
    for chunk in css.split("@import")[1:]:
        urls.append(chunk.split(";")[0].strip("'\" "))
    return urls


def _is_external(url: str) -> bool:
    return url.startswith("//") or urlsplit(url).scheme in {"http", "https"}


def _resolve(site: Path, page: Path, url: str) -> Path:
    path = unquote(urlsplit(url).path)
    return (site / path.lstrip("/")) if path.startswith("/") else (page.parent / path)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--quiet", "--site-dir", str(site_dir)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


def _pages(site: Path):
    for page in sorted(site.rglob("*.html")):
        parser = _Loads()
        parser.feed(page.read_text())
        yield page, parser


def test_no_page_loads_anything_from_the_internet(site):
    external = [
        f"{page.relative_to(site)}: {url}" for page, loads in _pages(site) for url in loads.urls if _is_external(url)
    ]
    for css in sorted(site.rglob("*.css")):
        external += [f"{css.relative_to(site)}: {url}" for url in _css_urls(css.read_text()) if _is_external(url)]
    assert not external, "the site must work offline:\n" + "\n".join(external)


def test_every_local_asset_a_page_loads_exists(site):
    missing = [
        f"{page.relative_to(site)}: {url}"
        for page, loads in _pages(site)
        for url in loads.urls
        if not _is_external(url) and not url.startswith("data:") and not _resolve(site, page, url).is_file()
    ]
    assert not missing, "\n".join(missing)


def test_math_is_rendered_by_mathjax_from_the_site(site):
    mathjax = site / MATHJAX
    assert mathjax.is_file() and mathjax.stat().st_size > 100_000, "MathJax was not copied into the site"
    fonts = list((site / "javascripts/mathjax/output/chtml/fonts/woff-v2").glob("*.woff"))
    assert len(fonts) > 10, "MathJax's CHTML fonts are missing"
    assert (site / "javascripts/mathjax/input/tex/extensions/boldsymbol.js").is_file()  # autoloaded
    pages_with_math = 0
    for page, loads in _pages(site):
        if loads.has_math:
            pages_with_math += 1
            targets = {_resolve(site, page, src).resolve() for src in loads.scripts}
            assert mathjax.resolve() in targets, f"{page.relative_to(site)} has math but does not load MathJax"
            config = next(i for i, src in enumerate(loads.scripts) if src.endswith("javascripts/mathjax.js"))
            assert config < [_resolve(site, page, s).resolve() for s in loads.scripts].index(mathjax.resolve())
    assert pages_with_math > 5


def test_parser_sees_what_a_browser_loads():
    html = (
        '<link rel="preconnect" href="https://fonts.gstatic.com"><link rel="canonical" href="https://x.org/">'
        '<script src="https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js"></script><a href="https://x.org">x</a>'
        '<div style="background: url(https://x.org/a.png)"></div><span class="arithmatex">\\(x\\)</span>'
    )
    parser = _Loads()
    parser.feed(html)
    assert [u for u in parser.urls if _is_external(u)] == [
        "https://fonts.gstatic.com",
        "https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js",
        "https://x.org/a.png",
    ]
    assert parser.has_math
    assert _css_urls('@import "https://fonts.googleapis.com/css";') == ["https://fonts.googleapis.com/css"]
