"""Execute the notebooks (smoke parameters) with papermill, build the book, open it in Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from equidiff import build

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")


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


@pytest.mark.book
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chapter_renders_in_a_real_browser(built_book, tmp_path):
    book, _ = built_book
    page = book / "_build" / "html" / "_generated" / "01_circles.html"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files",
           "--virtual-time-budget=20000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    # MathJax ran in the browser and typeset the formulas as SVG
    assert len(re.findall(r"<mjx-container[^>]*jax=\"SVG\"", dom)) >= 3
    assert "<svg" in dom
    # the figures are on the page, with their captions, and the files exist
    imgs = re.findall(r'<img[^>]*src="([^"]+\.png)"', dom)
    assert len(imgs) >= 3
    for src in imgs:
        assert (page.parent / src).resolve().exists(), src
    assert "Thesis Figure 3.1 recomputed" in dom


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
