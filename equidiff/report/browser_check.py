"""The whole-book browser check: every page of the built HTML book, opened in headless Chromium.

For each page the table of contents lists, and each page reachable from them by internal links
(``search.html``, ``genindex.html``, ...), it records:

- the SEVERE console entries the page logged while loading (a missing script, a JS error);
- every ``<img>`` that did not load (``naturalWidth == 0``);
- every internal link (``href`` not ``http(s):``, ``mailto:``, ...) whose file does not exist, or
  whose ``#anchor`` is not an ``id`` / ``name`` in that file;
- the formulas: how many math elements Sphinx wrote, how many ``mjx-container`` MathJax made,
  MathJax errors, and any TeX delimiter (``$$``, ``\\(``, ``\\[``) left in the visible text;
- every path of the build machine in the page's HTML source (the repository, the book folder,
  ``/tmp/``, ``/home/``, ``/root/``, ``/work/``), with the snippet around it;
- a full-page screenshot, written to ``<book>/_build/screenshots/<page>.png``.

The test suite (``tests/test_book.py``) and a maintainer share it::

    python -m equidiff.report.browser_check book            # prints one line per page, then each problem
    python -m equidiff.report.browser_check book --no-screenshots

The exit status is 1 when any page has a problem. Needs Debian's ``chromium`` and
``chromium-driver``; Selenium is given the driver's path, so it never downloads one.
"""

from __future__ import annotations

import contextlib
import html.parser
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["PageCheck", "BookCheck", "book_pages", "check_book", "check_page", "chromium", "machine_paths",
           "main"]

REPO = Path(__file__).resolve().parents[2]
# the generic places a build machine's path starts with (the repository and the book folder are added)
MACHINE_PREFIXES = ("/tmp/", "/home/", "/root/", "/work/")
# link schemes that leave the book (not checked: the book is built and read offline)
EXTERNAL_SCHEMES = {"http", "https", "mailto", "tel", "ftp", "javascript", "data"}
TEX_DELIMITERS = ("$$", "\\(", "\\)", "\\[", "\\]")
SNIPPET = 60                # characters each side of an offending string in a report
MAX_SHOT_HEIGHT = 30_000    # px: a longer page is cut here (Chromium's captures fail far beyond it)


@dataclass
class PageCheck:
    """What one page showed in the browser. ``page`` is its path under ``_build/html``."""

    page: str
    redirect: str | None = None      # where a redirect page (<meta http-equiv="refresh">) sends the reader
    console_errors: list[str] = field(default_factory=list)   # SEVERE console entries while loading
    images: list[str] = field(default_factory=list)           # the src of every <img>, as written
    broken_images: list[str] = field(default_factory=list)    # the src of each <img> with naturalWidth 0
    n_links: int = 0                                          # internal links checked
    broken_links: list[str] = field(default_factory=list)     # "href: why"
    n_math: int = 0                  # math elements Sphinx wrote (span/div class="math")
    n_typeset: int = 0               # mjx-container elements MathJax produced
    n_svg: int = 0                   # ... of them typeset as SVG
    math_errors: list[str] = field(default_factory=list)     # MathJax's parse errors (data-mjx-error)
    raw_tex: list[str] = field(default_factory=list)         # visible-text snippets still holding a TeX delimiter
    machine_paths: list[str] = field(default_factory=list)   # HTML-source snippets holding a machine path
    text: str = ""                   # the visible text after rendering (what a reader sees)
    screenshot: Path | None = None

    def problems(self) -> list[str]:
        """One line per problem found on this page (empty: the page is fine)."""
        out = [f"console error: {e}" for e in self.console_errors]
        out += [f"image not loaded: {s}" for s in self.broken_images]
        out += [f"broken link: {s}" for s in self.broken_links]
        if self.n_math and self.n_typeset < self.n_math:
            out.append(f"formulas not rendered: MathJax typeset {self.n_typeset} of {self.n_math} math elements")
        out += [f"MathJax error: {e}" for e in self.math_errors]
        out += [f"raw TeX in the visible text: «{s}»" for s in self.raw_tex]
        out += [f"machine path in the HTML: «{s}»" for s in self.machine_paths]
        return out

    def summary(self) -> str:
        if self.redirect is not None:
            return (f"{self.page}: redirects to {self.redirect} (checked there), "
                    f"{len(self.broken_links)} broken links, {len(self.machine_paths)} machine paths")
        shot = f", screenshot {self.screenshot.name}" if self.screenshot else ""
        return (f"{self.page}: {len(self.console_errors)} console errors, "
                f"images {len(self.images) - len(self.broken_images)}/{len(self.images)}, "
                f"links {self.n_links - len(self.broken_links)}/{self.n_links}, "
                f"formulas {self.n_typeset}/{self.n_math}, {len(self.machine_paths)} machine paths{shot}")


@dataclass
class BookCheck:
    """The check of a whole book: one :class:`PageCheck` per page, plus problems of the book itself."""

    html: Path                                          # the built book's _build/html
    pages: dict[str, PageCheck]                         # page path under html -> its check
    missing: list[str] = field(default_factory=list)    # toc entries with no built page

    def problems(self) -> dict[str, list[str]]:
        """``{page: [problem, ...]}`` for every page with at least one problem."""
        out = {p: c.problems() for p, c in self.pages.items() if c.problems()}
        for m in self.missing:
            out.setdefault(m, []).append("listed in _toc.yml but not built")
        return out

    def report(self) -> str:
        lines = [c.summary() for c in self.pages.values()]
        for page, probs in self.problems().items():
            lines.append(f"\n{page}:")
            lines += [f"  - {p}" for p in probs]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- pages

def _toc_files(toc: dict) -> list[str]:
    """The ``file`` entries of a Jupyter Book 1 ``_toc.yml`` (root first), in order."""
    files = [toc["root"]] if "root" in toc else []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({k: v for k, v in toc.items() if k != "root"})
    return files


def _html_page(file: str) -> str:
    """A toc entry (``_generated/01_circles``, maybe with a suffix) -> its built page path."""
    stem = file.rsplit(".", 1)[0] if file.endswith((".md", ".ipynb", ".rst")) else file
    return f"{stem}.html"


class _Links(html.parser.HTMLParser):
    """The ids / names and the link targets of one HTML file (no JavaScript: the file as served)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.refresh: str | None = None  # the url of a <meta http-equiv="refresh"> (a redirect page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        if tag in ("a", "link") and a.get("href") is not None:
            self.hrefs.append(a["href"])
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh":
            _, _, url = (a.get("content") or "").partition("url=")
            self.refresh = url.strip().strip("'\"")
            self.hrefs.append(self.refresh)


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    return p


def _internal_target(html: Path, page: Path, href: str) -> tuple[Path | None, str, str | None]:
    """``(file, anchor, why_not)`` for an internal link on ``page``; ``file`` None for an external one."""
    parts = urlsplit(href)
    if parts.scheme.lower() in EXTERNAL_SCHEMES or parts.netloc:
        return None, "", None
    if parts.scheme:  # file:, or anything else a published book cannot follow
        return page, "", f"a {parts.scheme}: link does not work once the book is published"
    path = unquote(parts.path)
    if path.startswith("/"):
        return page, "", "an absolute path does not work once the book is published"
    target = (page.parent / path).resolve() if path else page
    if target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment), None


def book_pages(book: Path) -> tuple[list[str], list[str]]:
    """``(pages, missing)``: the built pages the toc lists, then every built page reachable from them
    by internal links (paths under ``_build/html``); and the toc entries that have no built page."""
    import yaml

    book = Path(book)
    html = book / "_build" / "html"
    toc = yaml.safe_load((book / "_toc.yml").read_text())
    listed = [_html_page(f) for f in _toc_files(toc)]
    missing = [p for p in listed if not (html / p).is_file()]
    pages = [p for p in dict.fromkeys(["index.html", *listed]) if (html / p).is_file()]
    seen, queue = set(pages), list(pages)
    while queue:
        page = html / queue.pop(0)
        for href in _parse(page).hrefs:
            target, _, why = _internal_target(html, page, href)
            if target is None or why or target.suffix != ".html" or not target.is_file():
                continue
            try:
                rel = target.relative_to(html.resolve()).as_posix()
            except ValueError:  # a link out of the built book: reported by the link check
                continue
            if rel not in seen:
                seen.add(rel)
                pages.append(rel)
                queue.append(rel)
    return pages, missing


# ---------------------------------------------------------------------------------------- checks

def machine_paths(source: str, book: Path | None = None, repo: Path = REPO) -> list[str]:
    """The snippets of ``source`` (an HTML file's text) around each path of the build machine."""
    markers = set(MACHINE_PREFIXES)
    for p in (repo, book):
        if p is not None:
            markers |= {str(Path(p)), str(Path(p).resolve())}
    markers.discard("/")
    hits: dict[int, int] = {}  # start -> end of the longest marker starting there
    for m in markers:
        i = source.find(m)
        while i >= 0:
            # a path starts here, not in the middle of a word or a URL (example.org/tmp/ is no machine's)
            if i == 0 or not (source[i - 1].isalnum() or source[i - 1] in "._-~%"):
                hits[i] = max(hits.get(i, i), i + len(m))
            i = source.find(m, i + 1)
    out, covered = [], -1
    for start in sorted(hits):
        if start < covered:  # inside a longer match already reported (/tmp/ in the book's own path)
            continue
        covered = hits[start]
        lo, hi = max(0, start - SNIPPET), min(len(source), hits[start] + SNIPPET)
        out.append(" ".join(source[lo:hi].split()))
    return out


# The browser side, one script per step. Each returns JSON-able values.
_WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
const mj = window.MathJax;
if (!mj || !mj.startup || !mj.startup.promise) { done(false); return; }
mj.startup.promise.then(() => done(true), () => done(false));
"""

_WAIT_FOR_IMAGES = """
const done = arguments[arguments.length - 1];
const imgs = [...document.images];
imgs.forEach(i => { i.loading = 'eager'; });   // a lazy image off screen would never load
const t0 = Date.now();
(function poll() {
  if (imgs.every(i => i.complete) || Date.now() - t0 > 20000) {
    done(imgs.map(i => [i.getAttribute('src') || '', i.naturalWidth]));
  } else { setTimeout(poll, 100); }
})();
"""

_READ_PAGE = """
const body = document.body.cloneNode(true);
body.querySelectorAll('pre, code, script, style, textarea, noscript, mjx-container, .MathJax')
    .forEach(e => e.remove());
return {
  links: [...document.querySelectorAll('a[href], link[href]')].map(a => a.getAttribute('href')),
  n_math: document.querySelectorAll('.math').length,
  n_typeset: document.querySelectorAll('mjx-container').length,
  n_svg: document.querySelectorAll('mjx-container[jax="SVG"]').length,
  math_errors: [...document.querySelectorAll('[data-mjx-error]')].map(e => e.getAttribute('data-mjx-error')),
  raw_text: body.textContent,
  text: document.body.innerText,
};
"""


def _tex_snippets(text: str) -> list[str]:
    """The snippets of ``text`` around each TeX delimiter in it (one per stretch of nearby ones)."""
    found = sorted((i, i + len(d)) for d in TEX_DELIMITERS for i in _find_all(text, d))
    out, covered = [], -1
    for start, end in found:
        if start < covered:
            continue
        lo, covered = max(0, start - SNIPPET // 2), min(len(text), end + SNIPPET // 2)
        out.append(" ".join(text[lo:covered].split()))
    return out


def _find_all(text: str, sub: str):
    i = text.find(sub)
    while i >= 0:
        yield i
        i = text.find(sub, i + len(sub))


def _screenshot(driver, path: Path) -> Path:
    """The whole page at the window's width: the window is made as tall as the page (cut at
    MAX_SHOT_HEIGHT px) for one capture, then given its size back."""
    size = driver.get_window_size()
    frame = size["height"] - driver.execute_script("return window.innerHeight")  # the window's own bars
    try:
        height = 0
        for _ in range(3):  # a taller window can reflow the page (100vh sidebars): measure again
            want = min(driver.execute_script("return document.documentElement.scrollHeight"), MAX_SHOT_HEIGHT)
            if want <= height:
                break
            height = want
            driver.set_window_size(size["width"], height + frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path


def _broken_links(html: Path, page: Path, hrefs: list[str], ids: dict) -> list[str]:
    """``"href: why"`` for each internal link of ``page`` whose file or ``#anchor`` is missing.
    ``ids``: a cache of each target file's ids, shared between pages."""
    out = []
    for href in hrefs:
        target, anchor, why = _internal_target(html, page, href)
        if target is None:
            continue
        if why:
            out.append(f"{href}: {why}")
        elif not target.is_file():
            shown = target.relative_to(html) if target.is_relative_to(html) else target
            out.append(f"{href}: no file {shown}")
        elif anchor and target.suffix == ".html":
            if target not in ids:
                ids[target] = _parse(target).ids
            if anchor not in ids[target]:
                out.append(f"{href}: no id {anchor!r} in {target.name}")
    return out


def check_page(driver, html: Path, page: str, book: Path | None = None, shots: Path | None = None,
               repo: Path = REPO, _ids: dict | None = None) -> PageCheck:
    """Open ``html/page`` in ``driver`` and check it (see the module's docstring).

    ``shots``: the folder the screenshot goes to (as ``<page>.png``), or None for none.
    """
    html = Path(html).resolve()
    path = html / page
    if not path.is_file():
        raise ValueError(f"page={page!r}: no such file under {html}")
    ids = {} if _ids is None else _ids
    source = path.read_text(encoding="utf-8", errors="replace")
    parsed = _parse(path)
    check = PageCheck(page=page, machine_paths=machine_paths(source, book=book, repo=repo))
    if parsed.refresh is not None:
        # a redirect page (Jupyter Book's index.html): the browser would show the target, which is
        # checked as a page of its own; here only that the target exists
        check.redirect = parsed.refresh
        check.n_links = 1
        check.broken_links = _broken_links(html, path, [parsed.refresh], ids)
        return check
    driver.get_log("browser")  # drain what an earlier page logged
    driver.get(path.as_uri())
    driver.set_script_timeout(60)
    driver.execute_async_script(_WAIT_FOR_MATHJAX)
    imgs = driver.execute_async_script(_WAIT_FOR_IMAGES)
    seen = driver.execute_script(_READ_PAGE)
    check.console_errors = list(dict.fromkeys(  # an image retried once logs its failure twice
        e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"))

    check.images = [src for src, _ in imgs]
    check.broken_images = [src for src, w in imgs if not w]
    links = list(dict.fromkeys(seen["links"]))
    check.n_links = sum(_internal_target(html, path, h)[0] is not None for h in links)
    check.broken_links = _broken_links(html, path, links, ids)
    check.n_math, check.n_typeset, check.n_svg = seen["n_math"], seen["n_typeset"], seen["n_svg"]
    check.math_errors = seen["math_errors"]
    check.raw_tex = _tex_snippets(seen["raw_text"])
    check.text = seen["text"]
    if shots is not None:
        check.screenshot = _screenshot(driver, Path(shots) / (page.rsplit(".", 1)[0] + ".png"))
    return check


def check_book(book: Path, driver=None, screenshots: bool = True, repo: Path = REPO) -> BookCheck:
    """Check every page of the book built in ``book/_build/html`` (see the module's docstring).

    ``driver``: a Selenium WebDriver on Chromium that logs the console (``goog:loggingPrefs``
    ``browser: ALL``); None opens one with :func:`chromium`. ``screenshots``: write one per page
    to ``book/_build/screenshots/``.
    """
    book = Path(book)
    html = book / "_build" / "html"
    if not (html / "index.html").is_file():
        raise ValueError(f"book={str(book)!r}: no built book there ({html / 'index.html'} is missing); "
                         "build it first (python -m equidiff.build html --book ...)")
    pages, missing = book_pages(book)
    shots = book / "_build" / "screenshots" if screenshots else None
    if shots is not None and shots.exists():
        shutil.rmtree(shots)
    with contextlib.ExitStack() as stack:
        if driver is None:
            driver = stack.enter_context(chromium())
        ids: dict = {}
        checks = {p: check_page(driver, html, p, book=book, shots=shots, repo=repo, _ids=ids) for p in pages}
    return BookCheck(html=html, pages=checks, missing=missing)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900):
    """A Selenium WebDriver on Debian's headless ``chromium`` that records the console.

    The driver binary is given explicitly (``chromedriver`` on the PATH), so Selenium never tries
    to download one.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, drv = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or drv is None:
        raise FileNotFoundError("the browser check needs Debian's chromium and chromium-driver "
                                "(apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--allow-file-access-from-files", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(drv), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m equidiff.report.browser_check",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("book", type=Path, help="the book folder (holding _toc.yml and _build/html)")
    ap.add_argument("--no-screenshots", action="store_true", help="do not write _build/screenshots/")
    args = ap.parse_args(argv)
    result = check_book(args.book, screenshots=not args.no_screenshots)
    print(result.report())
    if not args.no_screenshots:
        print(f"\nscreenshots: {args.book / '_build' / 'screenshots'}")
    return 1 if result.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
