"""Execute the notebooks (smoke parameters) with papermill, build the book, open it in Chromium."""

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from browser import chromium, needs_chromium
from equidiff import build
from equidiff.report import browser_check

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.book
def test_circles_notebook_smoke_metrics(built_book):
    book, _ = built_book
    m = json.loads((book / "_generated" / "01_circles" / "metrics.json").read_text())
    assert m["test_accuracy"] >= 0.98
    assert len(m["queries"]) == 3
    for q in m["queries"]:
        assert set(q) == {"point", "p", "n", "max_abs_error", "coverage"}
        assert q["n"] > 0 and q["max_abs_error"] < 0.005
    for name in ("figure_3_1.png", "figure_prior.png", "figure_znorm.png"):
        assert (book / "_generated" / "01_circles" / name).stat().st_size > 10_000


@pytest.mark.book
def test_book_loads_mathjax_locally(built_book):
    book, index = built_book
    html = (book / "_build" / "html" / "theory.html").read_text()
    scripts = re.findall(r'<script[^>]*src="([^"]*)"', html)
    assert any(s.startswith("_static/../mathjax/tex-svg.js") for s in scripts), scripts
    assert not any("cdn" in s for s in scripts)
    assert (book / "_build" / "html" / "mathjax" / "tex-svg.js").exists()


# ------------------------------------------------------------------ the whole book in a real browser

def _listing(problems: dict[str, list[str]]) -> str:
    return "\n".join(f"{page}:\n" + "\n".join(f"  - {p}" for p in probs) for page, probs in problems.items())


@pytest.fixture(scope="module")
def book_check(built_book):
    """Every page of the smoke book opened in headless Chromium once (screenshots included)."""
    book, _ = built_book
    with chromium() as driver:
        return browser_check.check_book(book, driver=driver)


def _pages_with(check, kind: str) -> dict[str, list[str]]:
    """The problems of one kind (the start of a PageCheck.problems() line), by page."""
    out = {}
    for page, probs in check.problems().items():
        hits = [p for p in probs if p.startswith(kind)]
        if hits:
            out[page] = hits
    return out


@pytest.mark.book
@needs_chromium
def test_the_browser_check_covers_every_page_of_the_toc(built_book, book_check):
    book, _ = built_book
    toc = yaml.safe_load((book / "_toc.yml").read_text())
    listed = {f"{f}.html" for f in browser_check._toc_files(toc)}
    assert not book_check.missing, f"listed in _toc.yml but not built: {book_check.missing}"
    assert listed <= set(book_check.pages), sorted(listed - set(book_check.pages))
    # pages the toc does not list but the pages link to (the index of terms, the search page) load too
    assert "genindex.html" in book_check.pages and "search.html" in book_check.pages, sorted(book_check.pages)


@pytest.mark.book
@needs_chromium
def test_every_page_loads_without_a_console_error(book_check):
    bad = _pages_with(book_check, "console error")
    assert not bad, "SEVERE console entries:\n" + _listing(bad)


@pytest.mark.book
@needs_chromium
def test_every_image_and_internal_link_of_the_book_resolves(book_check):
    assert sum(len(c.images) for c in book_check.pages.values()) >= 20
    assert sum(c.n_links for c in book_check.pages.values()) >= 100
    bad = {**_pages_with(book_check, "image not loaded"), **_pages_with(book_check, "broken link")}
    assert not bad, "images or links that do not resolve:\n" + _listing(bad)


@pytest.mark.book
@needs_chromium
def test_formulas_are_rendered_on_every_page(book_check):
    with_math = {p for p, c in book_check.pages.items() if c.n_math}
    # the check is not empty: the theory page and every chapter from the 2D one on have formulas
    assert {"theory.html", "_generated/01_circles.html"} <= with_math, sorted(with_math)
    bad = {}
    for kind in ("formulas not rendered", "MathJax error", "raw TeX"):
        for page, probs in _pages_with(book_check, kind).items():
            bad.setdefault(page, []).extend(probs)
    assert not bad, "formulas MathJax did not render:\n" + _listing(bad)


@pytest.mark.book
@needs_chromium
def test_no_page_contains_a_path_of_the_build_machine(book_check):
    bad = _pages_with(book_check, "machine path")
    assert not bad, "paths of the build machine in the HTML:\n" + _listing(bad)


@pytest.mark.book
@needs_chromium
def test_a_screenshot_of_each_page_is_written_beside_the_build(built_book, book_check):
    book, _ = built_book
    assert book_check.pages["index.html"].redirect == "intro.html"  # Jupyter Book's index redirects
    for page, c in book_check.pages.items():
        if c.redirect is not None:  # the browser shows the target, which has its own screenshot
            assert c.screenshot is None
            continue
        shot = book / "_build" / "screenshots" / (page[: -len(".html")] + ".png")
        assert c.screenshot == shot and shot.is_file(), page
        head = shot.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n", page
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        assert width >= 1200 and height >= 600, (page, width, height)  # the window's width, the whole page


@pytest.mark.book
@needs_chromium
def test_chapter_renders_in_a_real_browser(built_book, book_check):
    book, _ = built_book
    page = book / "_build" / "html" / "_generated" / "01_circles.html"
    c = book_check.pages["_generated/01_circles.html"]
    # MathJax ran in the browser and typeset the formulas as SVG
    assert c.n_svg >= 3 and c.n_svg == c.n_typeset
    # the figures are on the page, loaded, with their captions, and the files exist
    pngs = [s for s in c.images if s.endswith(".png")]
    assert len(pngs) >= 3 and not c.broken_images
    for src in pngs:
        assert (page.parent / src).resolve().exists(), src
    assert "Thesis Figure 3.1 recomputed" in c.text


# ------------------------------------------------------------------ the check itself, on a made-up site

_PNG_1x1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def _site(root: Path) -> Path:
    """A two-page book as Jupyter Book would leave it, with one of every problem on bad.html."""
    import mathjax

    html = root / "_build" / "html"
    (html / "mathjax").mkdir(parents=True)
    shutil.copy(Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg.js", html / "mathjax")
    (html / "fig.png").write_bytes(_PNG_1x1)
    (root / "_toc.yml").write_text("format: jb-book\nroot: home\nchapters:\n  - file: good\n"
                                   "  - file: bad\n  - file: gone\n")
    mj = '<script defer src="mathjax/tex-svg.js"></script>'
    refresh = '<html><head><meta http-equiv="Refresh" content="0; url={}" /></head></html>'
    (html / "index.html").write_text(refresh.format("home.html"))
    (html / "moved.html").write_text(refresh.format("elsewhere.html"))
    (html / "home.html").write_text('<html><body><h1 id="top">Book</h1>'
                                    '<a href="good.html">good</a> <a href="bad.html">bad</a></body></html>')
    (html / "good.html").write_text(
        f'<html><head>{mj}</head><body><p>A formula <span class="math">\\(x^2 + y^2\\)</span>.</p>'
        '<div class="math">\\[\\lVert L(x) - L(x^*) \\rVert^2 < \\tau\\]</div>'
        '<img src="fig.png"> <a href="home.html#top">top</a> <a href="#">here</a> '
        '<a href="https://example.org/x">out</a> <a href="extra.html">more</a></body></html>')
    (html / "extra.html").write_text('<html><body><p>Reached by a link only.</p></body></html>')
    (html / "bad.html").write_text(
        '<html><head><script src="missing.js"></script></head><body>'
        '<p>Unrendered <span class="math">\\(a+b\\)</span> and $$c$$.</p>'
        '<img src="nowhere.png"> <a href="lost.html">lost</a> <a href="good.html#nope">no anchor</a>'
        '<a href="/etc/passwd">absolute</a> <a href="moved.html">moved</a>'
        '<pre>output_dir = "/home/someone/book/_generated/01"</pre></body></html>')
    return root


@needs_chromium
def test_the_browser_check_finds_each_kind_of_problem(tmp_path):
    book = _site(tmp_path / "book")
    with chromium() as driver:
        result = browser_check.check_book(book, driver=driver)
    assert list(result.pages) == ["index.html", "home.html", "good.html", "bad.html", "extra.html", "moved.html"]
    assert result.missing == ["gone.html"]
    probs = result.problems()
    assert set(probs) == {"bad.html", "moved.html", "gone.html"}, _listing(probs)
    assert result.pages["index.html"].redirect == "home.html" and result.pages["index.html"].screenshot is None
    assert probs["moved.html"] == ["broken link: elsewhere.html: no file elsewhere.html"]
    good = result.pages["good.html"]
    assert (good.n_math, good.n_typeset, good.n_svg, good.n_links) == (2, 2, 2, 3)
    assert good.images == ["fig.png"] and "A formula" in good.text
    bad = "\n".join(probs["bad.html"])
    assert "console error" in bad and "missing.js" in bad
    assert "image not loaded: nowhere.png" in bad
    assert "broken link: lost.html: no file lost.html" in bad
    assert "broken link: good.html#nope: no id 'nope' in good.html" in bad
    assert "broken link: /etc/passwd: an absolute path" in bad
    assert "formulas not rendered: MathJax typeset 0 of 1 math elements" in bad
    assert "raw TeX in the visible text" in bad and "$$c$$" in bad and "\\(a+b\\)" in bad
    assert "machine path in the HTML" in bad and "/home/someone/book/_generated/01" in bad
    # the path inside <pre> is still found: the check reads the HTML source, not the visible text
    for page in ("home.html", "good.html", "bad.html", "extra.html"):
        shot = book / "_build" / "screenshots" / page.replace(".html", ".png")
        assert shot.read_bytes()[:4] == b"\x89PNG", page


def test_machine_paths_reports_each_path_once_with_its_context(tmp_path):
    book = tmp_path / "book"
    src = f'<p>x = "{book}/_generated/02"</p>\n<p>and /root/.cache and /work/nothing</p><p>/usr/share is fine</p>'
    found = browser_check.machine_paths(src, book=book, repo=Path("/nowhere/repo"))
    assert len(found) == 3, found  # the book's own path (under /tmp/) counts once
    assert f"{book}/_generated/02" in found[0] and "/root/.cache" in found[1] and "/work/nothing" in found[2]
    assert browser_check.machine_paths("<p>/usr/share/doc and https://example.org/tmp/x</p>", repo=Path("/r")) == []


def test_the_browser_check_refuses_a_folder_with_no_built_book(tmp_path):
    with pytest.raises(ValueError, match=r"book=.*no built book there"):
        browser_check.check_book(tmp_path)


@pytest.mark.book
def test_sae_notebook_smoke_metrics(built_book):
    book, _ = built_book
    out = book / "_generated" / "03_sae"
    m = json.loads((out / "metrics.json").read_text())
    assert {"variance_explained", "l0", "dead_fraction"} <= set(m["sae"])
    assert m["sae"]["d_sae"] == 4 * m["sae"]["d_in"] and 0 <= m["sae"]["dead_fraction"] <= 1
    assert len(m["features"]) == 2
    for f in m["features"]:
        assert {"feature", "selectivity", "l2_mean", "l2_std", "success_rate", "sample_label_histogram",
                "real_label_histogram"} <= set(f)
        assert len(f["sample_label_histogram"]) == 10 and sum(f["sample_label_histogram"]) == f["n_samples"] == 4
        assert sum(f["real_label_histogram"]) == f["n_top"]
        assert 0 <= f["success_rate"] <= 1 and f["l2_mean"] >= 0
    for name in ("top_images.png", "figure_4_3.png", "label_histograms.png"):
        assert (out / name).stat().st_size > 10_000


@pytest.mark.book
def test_classifier_notebook_smoke_metrics(built_book):
    book, _ = built_book
    out = book / "_generated" / "04_classifier"
    m = json.loads((out / "metrics.json").read_text())
    assert m["modes"] == ["class_probability", "distribution"]
    names = ["equidiff", "equidiff_no_lowpass", "pixel", "pixel_fourier", "guidance"]
    assert [r["name"] for r in m["methods"]] == names * 2
    for r in m["methods"]:
        assert {"name", "success_rate", "l2_mean", "kl_mean", "high_freq_share", "fid", "diversity", "seconds"} <= set(r)
        assert 0 <= r["success_rate"] <= 1 and r["l2_mean"] >= 0 and r["kl_mean"] >= 0 and r["seconds"] > 0
        assert r["n"] == 4
    c = m["cutoff_curve"]
    assert len(c["cutoffs"]) == len(c["query"]) == len(c["samples"]["mean"]) == len(c["samples"]["std"]) == 9
    assert set(c["by_mode"]) == {"class_probability", "distribution"}
    for name in ("figure_4_4.png", "figure_4_5.png", "methods.png", "convergence.png"):
        assert (out / name).stat().st_size > 10_000


@pytest.mark.book
def test_neurons_notebook_smoke_metrics(built_book):
    book, _ = built_book
    out = book / "_generated" / "02_neurons"
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["neurons"]) == 3 and m["n_samples"] == 4
    for n in m["neurons"]:
        for k in ("channel", "concept", "alignment", "l2_mean", "l2_std", "l1_mean", "fid", "diversity",
                  "success_rate", "n_restarted", "seconds"):
            assert k in n, k
        assert 0 <= n["success_rate"] <= 1 and n["l2_mean"] >= 0
    for name in ("top_images.png", "figure_4_1.png", "figure_4_2.png"):
        assert (out / name).stat().st_size > 10_000
    # the progress line is one display output updated in place: the executed notebook keeps its last
    # state only (a text bar on stderr would keep every redraw)
    nb = json.loads((book / "_generated" / "02_neurons.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "run_all(" in "".join(c["source"]))
    lines = ["".join(o["data"]["text/plain"]) for o in cell["outputs"] if o["output_type"] == "display_data"]
    assert len(lines) == 1 and "invariant samples below τ" in lines[0] and "3/3 neurons done" in lines[0]
    assert not any(o.get("name") == "stderr" and "below τ" in "".join(o["text"]) for o in cell["outputs"])


@pytest.mark.book
def test_applications_notebook_smoke_metrics(built_book):
    book, _ = built_book
    out = book / "_generated" / "05_applications"
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["shortcut_reliance"]) == {"shortcut", "control", "judge"}
    for r in m["shortcut_reliance"].values():
        assert {"clean", "in_distribution", "swapped", "marked_to_shortcut"} <= set(r)
        assert all(0 <= v <= 1 for v in r.values())
    d = m["detection"]
    for name in ("shortcut", "control"):
        lo, hi = d[f"{name}_interval"]
        assert 0 <= lo <= d[f"{name}_share"] <= hi <= 1
        assert d[name]["n_samples"] == 4
    s = m["selection"]
    assert 0 <= s["precision_at_k_selected"] <= 1 and 0 <= s["precision_at_k_random"] <= 1 and s["k"] == 2
    for name in ("world.png", "reliance.png", "samples_shortcut.png", "samples_control.png", "shares.png",
                 "selection_shortcut.png", "selection_circles.png", "selection_neuron.png"):
        assert (out / name).stat().st_size > 5_000


def _without_timing(d):
    """A metrics record without its wall-clock figures (the only values a rerun may change)."""
    if isinstance(d, dict):
        return {k: _without_timing(v) for k, v in d.items() if k not in ("seconds", "train_seconds")}
    if isinstance(d, list):
        return [_without_timing(v) for v in d]
    return d


@pytest.mark.book
def test_a_smoke_chapter_run_twice_says_the_same(built_book, tmp_path):
    """The classifier chapter executed again from scratch (force) writes the same metrics.json."""
    book, _ = built_book
    again = tmp_path / "book"
    shutil.copytree(ROOT / "book", again, ignore=shutil.ignore_patterns("_build", "_generated", "_extra"))
    build.execute_notebooks(again, profile="smoke", only=["04_classifier"], force=True)
    first = json.loads((book / "_generated" / "04_classifier" / "metrics.json").read_text())
    second = json.loads((again / "_generated" / "04_classifier" / "metrics.json").read_text())
    first["parameters"].pop("output_dir"), second["parameters"].pop("output_dir")  # the two runs' own folders
    assert _without_timing(first) == _without_timing(second)
