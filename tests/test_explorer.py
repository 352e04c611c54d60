"""The book's interactive invariant-set explorer (issue 17): its exported data, and the page in a real browser.

The browser tests need no book build: a minimal page in a temp folder holds the explorer's markup (taken from
``book/explorer.md``), ``_static/explorer.js`` and the ``explorer_data.js`` that :func:`export_explorer`
writes; every value the page shows is checked against the Python model.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from equidiff.report.explorer import SAMPLES_FILE, TOLERANCE, export_explorer, read_samples
from browser import chromium, console_errors, needs_chromium

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


def _payload(path: Path) -> dict:
    text = path.read_text()
    m = re.search(r"window\.EQUIDIFF_EXPLORER = (\{.*\});\s*$", text, re.S)
    assert m, text[:200]
    return json.loads(m.group(1))


def _hidden(model, points) -> list[np.ndarray]:
    """The MLP's hidden activations (after each SiLU) at (n, 2) points."""
    with torch.no_grad():
        h1 = model.net[1](model.net[0](torch.as_tensor(np.asarray(points), dtype=torch.float32)))
        h2 = model.net[3](model.net[2](h1))
    return [h1.numpy(), h2.numpy()]


# --------------------------------------------------------------------------- the exported data


def test_export_holds_the_shipped_model_exactly(tmp_path, circles_model):
    from equidiff.worlds.circles import BOX, probability_of

    model, _ = circles_model
    d = _payload(export_explorer(tmp_path))
    assert d["model"]["layers"] == [2, 32, 32, 1] and d["model"]["activation"] == "silu"
    assert d["extent"] == BOX and d["tolerance"] == TOLERANCE
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for w, b, lin in zip(d["model"]["weights"], d["model"]["biases"], linears):
        # the float32 values themselves, bit for bit
        assert np.array_equal(np.asarray(w, dtype=np.float32), lin.weight.detach().numpy())
        assert np.array_equal(np.asarray(b, dtype=np.float32), lin.bias.detach().numpy())
    # the exported numbers, evaluated in numpy, give the model's outputs
    x = np.random.default_rng(0).uniform(-BOX, BOX, (500, 2))
    h = x
    ws = [np.asarray(w) for w in d["model"]["weights"]]
    bs = [np.asarray(b) for b in d["model"]["biases"]]
    for i, (w, b) in enumerate(zip(ws, bs)):
        a = h @ w.T + b
        h = a / (1 + np.exp(-a)) if i < len(ws) - 1 else a
    p = 1 / (1 + np.exp(-h[:, 0]))
    assert np.abs(p - probability_of(model, x)).max() < 1e-6


def test_export_says_when_chapter_one_did_not_run(tmp_path):
    d = _payload(export_explorer(tmp_path))
    assert d["chapter"] is None and "01_circles" in d["chapter_missing"] and "not run" in d["chapter_missing"]
    (tmp_path / "_generated" / "01_circles").mkdir(parents=True)
    d = _payload(export_explorer(tmp_path))
    assert d["chapter"] is None and SAMPLES_FILE in d["chapter_missing"]
    with pytest.raises(ValueError, match="book must be an existing book source folder"):
        export_explorer(tmp_path / "nowhere")


def _fake_chapter(book: Path) -> dict:
    """Chapter 1's samples file, as the chapter writes it, from results shaped like analyse_query's."""
    from equidiff.chapters.circles import save_explorer_samples

    rows = [{"point": [0.5, 0.3], "p": 0.7, "tau": 0.005, "n_requested": 4,
             "points": np.array([[0.1, 0.2], [0.3, -0.4]], dtype=np.float32)},
            {"point": [-1.3, 0.6], "p": 0.1, "tau": 0.005, "n_requested": 4, "points": np.zeros((0, 2))}]
    save_explorer_samples(book / "_generated" / "01_circles", rows)
    return rows


def test_chapter_samples_round_trip(tmp_path):
    from equidiff.chapters.circles import save_explorer_samples

    _fake_chapter(tmp_path)
    d = _payload(export_explorer(tmp_path))["chapter"]
    assert d["queries"] == [[0.5, 0.3], [-1.3, 0.6]] and d["p"] == [0.7, 0.1] and d["n_requested"] == 4
    assert np.allclose(d["samples"][0], [[0.1, 0.2], [0.3, -0.4]], atol=1e-6) and d["samples"][1] == []
    with pytest.raises(ValueError, match="with_prior must be a non-empty list of analyse_query results"):
        save_explorer_samples(tmp_path, [])
    (tmp_path / "_generated" / "01_circles" / SAMPLES_FILE).write_text('{"queries": [[0, 0]], "p": [], "samples": []}')
    chapter, why = read_samples(tmp_path / "_generated" / "01_circles")
    assert chapter is None and "malformed" in why


# --------------------------------------------------------------------------- the page in Chromium


def _markup() -> str:
    """The explorer's <div> exactly as book/explorer.md has it."""
    text = (BOOK / "explorer.md").read_text()
    m = re.search(r'^<div id="equidiff-explorer">.*^</div>\s*$', text, re.S | re.M)  # to its last line
    assert m, "book/explorer.md has no <div id=\"equidiff-explorer\"> block"
    return m.group(0)


def _site(folder: Path, with_div: bool = True) -> Path:
    """A minimal page loading the scripts the way the book does (both in <head>, data first or not)."""
    (folder / "_static").mkdir(parents=True, exist_ok=True)
    shutil.copy(BOOK / "_static" / "explorer.js", folder / "_static" / "explorer.js")
    export_explorer(folder)
    body = _markup() if with_div else "<p>Another page of the book.</p>"
    page = folder / ("explorer.html" if with_div else "other.html")
    page.write_text("<!doctype html><html><head><meta charset='utf-8'>"
                    "<script src='_static/explorer.js'></script><script src='_static/explorer_data.js'></script>"
                    f"</head><body>{body}</body></html>")
    return page


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(driver, the Python model) on the explorer page, with chapter 1's samples (from a fake chapter)."""
    from equidiff.worlds.circles import load_classifier

    folder = tmp_path_factory.mktemp("explorer")
    _fake_chapter(folder)
    url = _site(folder).as_uri()
    model, _ = load_classifier()
    with chromium() as driver:
        driver.get(url)
        assert driver.execute_script("return typeof window.equidiffExplorer") == "object", console_errors(driver)
        yield driver, model
        assert console_errors(driver) == []


def _state(driver) -> dict:
    return driver.execute_script("return window.equidiffExplorer.state()")


def _choose(driver, objective: str, layer: int | None = None) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "explorer-objective")).select_by_value(objective)
    if layer is not None:
        Select(driver.find_element(By.ID, "explorer-layer")).select_by_value(str(layer))


@pytest.mark.book
@needs_chromium
def test_a_click_on_the_canvas_gives_the_models_probability(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from equidiff.worlds.circles import probability_of

    driver, model = page
    _choose(driver, "probability")
    canvas = driver.find_element(By.ID, "explorer-canvas")
    target = (0.8, -0.45)
    px = driver.execute_script("return window.equidiffExplorer.toPixel(arguments[0], arguments[1])", *target)
    rect = canvas.rect
    ActionChains(driver).move_to_element_with_offset(canvas, px["x"] - rect["width"] / 2,
                                                     px["y"] - rect["height"] / 2).click().perform()
    s = _state(driver)
    one_pixel = 2 * 2.5 / 440
    assert np.abs(np.subtract(s["x_star"], target)).max() < 1.5 * one_pixel, s["x_star"]
    p = float(probability_of(model, [s["x_star"]])[0])
    assert abs(s["value"] - p) < 1e-4
    shown = float(driver.find_element(By.ID, "explorer-value").text)
    assert abs(shown - p) < 1e-4
    assert s["objective"] == "probability" and s["epsilon"] > 0


@pytest.mark.book
@needs_chromium
def test_the_drawn_level_curve_is_the_exact_invariant_set(page):
    from equidiff.worlds.circles import level_curves, probability_of

    driver, model = page
    _choose(driver, "probability")
    s = driver.execute_script("return window.equidiffExplorer.clickAt(-1.3, 0.6)")
    p = float(probability_of(model, [[-1.3, 0.6]])[0])
    assert abs(s["value"] - p) < 1e-4 and s["tolerance"] == TOLERANCE
    pts = np.asarray(s["curve_points"])
    assert len(pts) > 200
    err = np.abs(probability_of(model, pts) - p)
    assert err.max() < TOLERANCE, err.max()
    # the whole level set, not a piece of it: every point of the Python ground truth (contourpy) is near a drawn one
    from scipy.spatial import cKDTree

    truth = np.concatenate(level_curves(model, p))
    d, _ = cKDTree(pts).query(truth)
    assert d.max() < 0.03, d.max()


@pytest.mark.book
@needs_chromium
def test_the_epsilon_band_follows_the_slider(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver, _ = page
    _choose(driver, "probability")
    driver.execute_script("window.equidiffExplorer.clickAt(0.5, 0.3)")
    before = _state(driver)
    slider = driver.find_element(By.ID, "explorer-epsilon")
    slider.send_keys(*([Keys.ARROW_RIGHT] * 20))
    wider = _state(driver)
    assert wider["epsilon"] > before["epsilon"] and wider["band_fraction"] > before["band_fraction"] > 0
    slider.send_keys(*([Keys.ARROW_LEFT] * 40))
    narrower = _state(driver)
    assert narrower["epsilon"] < before["epsilon"] and narrower["band_fraction"] < before["band_fraction"]
    assert narrower["curve_points"] == before["curve_points"]  # the slider moves the band, not the curve


@pytest.mark.book
@needs_chromium
@pytest.mark.parametrize("layer", [1, 2])
def test_one_hidden_unit(page, layer):
    driver, model = page
    _choose(driver, "unit", layer)
    s = driver.execute_script("return window.equidiffExplorer.clickAt(0.5, 0.3)")
    assert s["layer"] == layer and len(s["units"]) == 1
    unit = s["units"][0]
    h_star = _hidden(model, [[0.5, 0.3]])[layer - 1][0, unit]
    assert abs(s["value"] - h_star) < 1e-4
    pts = np.asarray(s["curve_points"])
    assert len(pts) > 50
    assert np.abs(_hidden(model, pts)[layer - 1][:, unit] - h_star).max() < TOLERANCE


@pytest.mark.book
@needs_chromium
@pytest.mark.parametrize("layer", [1, 2])
def test_two_hidden_units_leave_a_handful_of_points(page, layer):
    driver, model = page
    _choose(driver, "two_units", layer)
    s = driver.execute_script("return window.equidiffExplorer.clickAt(0.5, 0.3)")
    a, b = s["units"]
    assert a != b
    h = _hidden(model, [[0.5, 0.3]])[layer - 1][0]
    assert np.allclose(s["value"], [h[a], h[b]], atol=1e-4)
    pts = np.asarray(s["curve_points"])
    assert 1 <= len(pts) <= 20 and np.isfinite(pts).all()
    got = _hidden(model, pts)[layer - 1]
    assert np.abs(got[:, a] - h[a]).max() < TOLERANCE and np.abs(got[:, b] - h[b]).max() < TOLERANCE
    assert np.linalg.norm(pts - [0.5, 0.3], axis=1).min() < 1e-3  # x* itself is one of them
    assert len(s["curves"]) == 2 and all(len(c) > 50 for c in s["curves"])  # the two level curves drawn


def _first_layer_crossings(model, a: int, b: int, q) -> np.ndarray:
    """IS(q) of first-layer units a and b, exactly: unit a's level set is one or two lines w_a·x + c_a = t
    (the t with silu(t) = h_a(q)); walk each line finely through the box and keep where unit b crosses h_b(q)."""
    w = model.net[0].weight.detach().numpy().astype(np.float64)
    c = model.net[0].bias.detach().numpy().astype(np.float64)
    silu = lambda t: t / (1 + np.exp(-t))  # noqa: E731
    q = np.asarray(q, dtype=np.float64)
    ha, hb = silu(w[a] @ q + c[a]), silu(w[b] @ q + c[b])
    t = np.linspace(-40, 40, 800001)
    r = silu(t) - ha
    found = []
    for t0 in t[:-1][np.sign(r[1:]) != np.sign(r[:-1])]:
        direction = np.array([-w[a, 1], w[a, 0]]) / np.linalg.norm(w[a])
        x0 = w[a] * (t0 - c[a]) / (w[a] @ w[a])
        s = np.linspace(-8, 8, 800001)
        x = x0 + s[:, None] * direction
        inside = (np.abs(x) <= 2.5).all(1)
        f = silu(x @ w[b] + c[b]) - hb
        k = np.where((np.sign(f[1:]) != np.sign(f[:-1])) & inside[1:] & inside[:-1])[0]
        found += list(x[k])
    return np.asarray(found).reshape(-1, 2)


@pytest.mark.book
@needs_chromium
def test_two_first_layer_units_give_exactly_the_crossings_of_their_lines(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, model = page
    _choose(driver, "two_units", 1)
    a = int(Select(driver.find_element(By.ID, "explorer-unit-a")).first_selected_option.get_attribute("value"))
    others = [o.get_attribute("value") for o in Select(driver.find_element(By.ID, "explorer-unit-b")).options
              if o.is_enabled() and int(o.get_attribute("value")) != a]
    assert len(others) >= 2
    counts = set()
    for b in others:
        Select(driver.find_element(By.ID, "explorer-unit-b")).select_by_value(b)
        s = driver.execute_script("return window.equidiffExplorer.clickAt(0.5, 0.3)")
        truth = _first_layer_crossings(model, a, int(b), [0.5, 0.3])
        got = np.asarray(s["curve_points"]).reshape(-1, 2)
        assert len(got) == len(truth), (a, b, got, truth)
        gap = np.linalg.norm(got[:, None] - truth[None], axis=2)  # (found, true) distances
        assert gap.min(1).max() < 1e-3 and gap.min(0).max() < 1e-3, (a, b, got, truth)
        counts.add(len(got))
    assert max(counts) >= 2  # some pair leaves more than x* itself


@pytest.mark.book
@needs_chromium
def test_chapter_samples_are_overlaid_and_a_point_off_the_plane_is_refused(page):
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import JavascriptException

    driver, _ = page
    assert "EquiDiff samples" in driver.find_element(By.ID, "explorer-chapter").text
    buttons = driver.find_elements(By.CSS_SELECTOR, "#explorer-queries button")
    assert len(buttons) == 2
    _choose(driver, "probability")
    buttons[1].click()
    assert _state(driver)["x_star"] == [-1.3, 0.6]
    assert driver.find_element(By.ID, "explorer-samples").is_enabled()
    with pytest.raises(JavascriptException, match=r"x\* must be a point of the plane"):
        driver.execute_script("window.equidiffExplorer.clickAt(3, 0)")
    console_errors(driver)  # the refused call was logged on purpose


@needs_chromium
@pytest.mark.book
def test_without_chapter_one_and_on_other_pages(tmp_path):
    from selenium.webdriver.common.by import By

    page = _site(tmp_path)  # no _generated/01_circles: chapter 1 did not run
    other = _site(tmp_path, with_div=False)
    with chromium() as driver:
        driver.get(page.as_uri())
        # under load headless Chromium may hand back control before the page is parsed (one CI run failed here)
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait
        WebDriverWait(driver, 20).until(EC.presence_of_element_located((By.ID, "explorer-chapter")))
        note = driver.find_element(By.ID, "explorer-chapter").text
        assert "No EquiDiff samples to overlay" in note and "not run" in note
        assert not driver.find_element(By.ID, "explorer-samples").is_enabled()
        assert driver.execute_script("return window.equidiffExplorer.state().curve_points.length") > 100
        assert console_errors(driver) == []
        driver.get(other.as_uri())  # every page of the book loads the script: it must stay quiet there
        assert driver.execute_script("return typeof window.equidiffExplorer") == "undefined"
        assert console_errors(driver) == []
