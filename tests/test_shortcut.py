"""The planted-shortcut world (equidiff.worlds.digits.shortcut), its detection through invariant sets
and the member selection demos (equidiff.chapters.applications), member selection (equidiff.core.members)."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from equidiff.chapters import applications as app
from equidiff.core import members as sel
from equidiff.core.metrics import bootstrap_interval
from equidiff.worlds import digits as zoo
from equidiff.worlds import load_world
from equidiff.worlds.digits import shortcut as sc
from equidiff.worlds.digits.world import PRESETS


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return load_world("smoke", cache_dir=tmp_path_factory.mktemp("zoo"))


def test_world_validation():
    for kwargs, msg in [
        ({"shortcut_class": 10}, r"shortcut_class must be an integer digit class in \[0, 9\], got 10"),
        ({"marker_rate": 1.5}, r"marker_rate must be a probability in \[0, 1\], got 1.5"),
        ({"other_rate": -0.1}, r"other_rate must be a probability in \[0, 1\], got -0.1"),
        ({"marker_size": 6}, r"marker_size must be an integer in \[1, 4\]"),
        ({"seed": True}, r"seed must be an integer ≥ 0, got True"),
    ]:
        with pytest.raises(ValueError, match=msg):
            sc.ShortcutWorld(**kwargs)


def test_marker_round_trip_and_real_digits_are_unmarked():
    x, _ = zoo.load_digits16("all")
    assert not sc.has_marker(x).any()  # the corner is empty in every real digit
    marked = sc.add_marker(x[:10], 3, torch.tensor([True, False] * 5))
    assert sc.has_marker(marked).tolist() == [True, False] * 5
    assert torch.equal(marked[1], x[1])  # untouched where not asked
    assert not sc.has_marker(sc.remove_marker(marked)).any()
    assert torch.equal(sc.remove_marker(marked)[:, :, 3:], x[:10, :, 3:])  # only the corner changes
    with pytest.raises(ValueError, match=r"images must be a tensor of grey images, shape \(N, 1, H, W\)"):
        sc.has_marker(torch.zeros(3, 16, 16))


def test_marked_split_variants():
    w = sc.ShortcutWorld(shortcut_class=3, marker_rate=0.9, other_rate=0.05)
    x, y, m = sc.marked_split(w, "train", "shortcut")
    is_c = y == 3
    assert torch.equal(sc.has_marker(x), m)
    assert 0.82 < m[is_c].float().mean() < 0.97 and 0.03 < m[~is_c].float().mean() < 0.07
    xc, yc, mc = sc.marked_split(w, "train", "control")
    assert torch.equal(yc, y) and int(mc.sum()) == int(m.sum())  # same images, same number of markers
    assert abs(float(mc[is_c].float().mean()) - float(mc.float().mean())) < 0.1  # no correlation with the label
    _, _, mclean = sc.marked_split(w, "test", "clean")
    assert not mclean.any()
    _, ys, ms = sc.marked_split(w, "test", "swapped")
    assert torch.equal(ms, ys != 3)
    x2, _, m2 = sc.marked_split(w, "train", "shortcut")
    assert torch.equal(x2, x) and torch.equal(m2, m)  # deterministic
    with pytest.raises(ValueError, match=r"variant must be one of \('shortcut', 'control', 'clean', 'swapped'\)"):
        sc.marked_split(w, "train", "mixed")


class _MarkerReader(torch.nn.Module):
    """Says 'shortcut class' when the corner is marked, else class 0: a pure shortcut."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        out[:, 0] = 1.0
        out[sc.has_marker(x), self.c] = 5.0
        return out + self.w


def test_reliance_of_a_pure_shortcut():
    w = sc.ShortcutWorld(shortcut_class=3, marker_rate=1.0, other_rate=0.0)
    r = sc.reliance(_MarkerReader(3), w)
    assert r["marked_to_shortcut"] == 1.0 and r["clean_to_shortcut"] == 0.0
    _, y = zoo.load_digits16("test")
    assert r["swapped"] == 0.0  # marked non-3s are called 3, unmarked 3s are called 0
    share = float(((y == 0) | (y == 3)).float().mean())
    assert r["in_distribution"] == pytest.approx(share, abs=1e-6)  # marked 3s right, unmarked 0s right


def test_bootstrap_interval():
    lo, hi = bootstrap_interval(np.array([1] * 10 + [0] * 30))
    assert lo < 0.25 < hi and 0.0 <= lo and hi <= 1.0
    lo2, hi2 = bootstrap_interval(np.array([1] * 100 + [0] * 300))
    assert hi2 - lo2 < hi - lo  # more members, narrower interval
    assert bootstrap_interval(np.ones(5)) == (1.0, 1.0)
    assert all(np.isnan(v) for v in bootstrap_interval(np.array([])))


def test_load_or_train_with_custom_data(tmp_path):
    cfg = zoo.PRESETS["digits-classifier-tiny"]()
    w = sc.ShortcutWorld(marker_rate=1.0, other_rate=0.0)
    with pytest.raises(ValueError, match="data_key must be given exactly when data is given"):
        zoo.load_or_train(cfg, "x", tmp_path, data=lambda: sc.marked_split(w, "train")[:2])
    a = zoo.load_or_train(cfg, "x", tmp_path, data=lambda: sc.marked_split(w, "train")[:2], data_key=w.key())
    b = zoo.load_or_train(cfg, "x", tmp_path)  # plain digits: another folder
    assert a.path != b.path and a.trained_now and b.trained_now
    again = zoo.load_or_train(cfg, "x", tmp_path, data=lambda: 1 / 0, data_key=w.key())  # cached: data not called
    assert not again.trained_now and again.path == a.path
    assert again.info["data"]["marker_rate"] == 1.0
    with pytest.raises(ValueError, match=r"data must be None or a pair"):
        zoo.train_classifier(cfg, data=torch.zeros(3))


def test_models_queries_and_detection_on_tiny_models(smoke, tmp_path):
    models = smoke.part("shortcut")  # the world's part: its own presets (smoke: the tiny ones), its cache
    w = models.world
    assert w == sc.ShortcutWorld()
    assert models.prior.path.name.startswith(f"shortcut-{PRESETS['smoke']['ddpm']}-")
    assert models.shortcut.path.name.startswith(f"shortcut-{PRESETS['smoke']['classifier']}-")
    assert models.control.path != models.shortcut.path and models.judge.name == PRESETS["smoke"]["classifier"]
    assert models.prior.path.parent == smoke.params["cache_dir"]
    q, idx = sc.marked_queries(models.shortcut, w, 2)
    assert q.shape == (2, 1, 16, 16) and sc.has_marker(q).all()
    _, y = zoo.load_digits16("test")
    assert all(int(y[i]) == 3 for i in idx)
    with pytest.raises(ValueError, match=r"n_queries must be an integer in \[1, \d+\]"):
        sc.marked_queries(models.shortcut, w, 0)
    d = app.detect(models.shortcut, models, q, name="shortcut", n_samples=3, steps=2, ddim_steps=2)
    assert d.x.shape == (6, 1, 16, 16) and d.query_of.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(d.hits, d.converged & d.marked & (d.judged != 3))
    s = d.summary()
    assert s["n_samples"] == 6 and (0 <= s["share"] <= 1 or s["n_members"] == 0)
    app.save_detections({"shortcut": d}, tmp_path / "det.safetensors")
    back = load_file(str(tmp_path / "det.safetensors"))
    assert torch.equal(back["shortcut.x"], d.x) and torch.equal(back["shortcut.judged"], d.judged)
    # the optimiser is a parameter (the thesis' SGD runs by parameters alone); same starting noise
    sgd = app.detect(models.shortcut, models, q[:1], name="shortcut", n_samples=3, steps=2, ddim_steps=2,
                     optimizer="sgd", lr=10.0, tau=1e-12)
    adam = app.detect(models.shortcut, models, q[:1], name="shortcut", n_samples=3, steps=2, ddim_steps=2, tau=1e-12)
    assert not torch.equal(sgd.x, adam.x)
    with pytest.raises(ValueError, match=r"optimizer must be one of"):
        app.detect(models.shortcut, models, q[:1], name="shortcut", n_samples=2, steps=1, optimizer="rmsprop")
    # another plant is another set of models; a bad plant is refused by name before anything trains
    with pytest.raises(ValueError, match=r"marker_rate must be a probability in \[0, 1\], got 2"):
        smoke.part("shortcut", marker_rate=2)
    with pytest.raises(ValueError, match=r"presets must be a dict with 'classifier' and 'ddpm' preset names"):
        sc.get_models(w, {"classifier": "digits-classifier-tiny"})
    with pytest.raises(ValueError, match=r"presets must be a dict .*optionally 'shortcut_ddpm'"):
        sc.get_models(w, {"classifier": "digits-classifier-tiny", "ddpm": "digits-ddpm-tiny", "shortcut_ddpm": "x"})


def test_select_members_prefers_novel_and_spread():
    train = torch.zeros(50, 2) + torch.randn(50, 2, generator=torch.Generator().manual_seed(0)) * 0.1
    pool = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [-3.0, 0.0], [0.0, 0.1]])
    s = sel.select_members(pool, train, 2, novelty_weight=0.5)
    assert s.indices[0] == 2  # farthest from the training data first
    assert s.indices[1] == 3  # then the one far from it and from the data
    s0 = sel.select_members(pool, train, 3, novelty_weight=0.0)
    assert set(s0.indices[:2]) == {2, 3}
    assert s0.spread[0] == float("inf") and s0.spread[1] >= s0.spread[2]
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\] \(the pool has 5 members\), got 6"):
        sel.select_members(pool, train, 6)
    with pytest.raises(ValueError, match=r"novelty_weight must be a number in \[0, 1\], got 2"):
        sel.select_members(pool, train, 2, novelty_weight=2)


def test_precision_and_random_baseline():
    rel = np.array([True] * 4 + [False] * 16)
    assert sel.precision_at_k([0, 1, 5, 6], rel) == 0.5
    r = sel.random_precision(rel, 4, n_draws=4000)
    assert r["mean"] == pytest.approx(0.2, abs=0.02) and r["low"] <= 0.2 <= r["high"]
    # relevant members far from the data: the selection finds them, random does not
    g = torch.Generator().manual_seed(1)
    train = torch.randn(100, 4, generator=g)
    pool = torch.cat([torch.randn(16, 4, generator=g), torch.randn(4, 4, generator=g) + 8.0])
    relevant = np.array([False] * 16 + [True] * 4)
    out = sel.evaluate_selection(pool, relevant, train, 4, novelty_weight=0.8)
    assert out["precision_at_k_selected"] == 1.0 and out["precision_at_k_random"] < 0.4
    with pytest.raises(ValueError, match=r"relevant must be a bool array of shape \(20,\)"):
        sel.evaluate_selection(pool, relevant[:5], train, 4)


def test_member_pool():
    idx, note = sel.member_pool([True, False, True, True], 2)
    assert idx.tolist() == [0, 2, 3] and "3 members" in note
    idx, note = sel.member_pool([True, False, False], 2)
    assert idx.tolist() == [0, 1, 2] and "only 1 members" in note


def test_verdict():
    a = {"share": 0.2, "interval": [0.1, 0.3]}
    b = {"share": 0.02, "interval": [0.0, 0.05]}
    assert "do not overlap" in app.verdict({"shortcut": a, "control": b})
    near = {"share": 0.1, "interval": [0.05, 0.2]}
    assert "overlap — this run cannot tell" in app.verdict({"shortcut": a, "control": near})
    assert app.interval_reading({"shortcut": a, "control": near}) == "overlap"
    nothing = {"share": float("nan"), "interval": [float("nan"), float("nan")]}  # no member: no interval
    assert app.interval_reading({"shortcut": a, "control": nothing}) == "empty"
    assert "has no member" in app.verdict({"shortcut": a, "control": nothing})
    assert "did not find" in app.verdict({"shortcut": b, "control": a})


def test_neuron_selection_runs_the_neuron_chapter_on_the_world(smoke):
    demo = app.neuron_selection(smoke, 5, 2, n_samples=3, steps=1, ddim_steps=2)
    assert demo["n_samples"] == 3 and 0 <= demo["n_members"] <= 3
    assert len(demo["x"]) in (demo["n_members"], 3) and demo["x"].abs().max() <= 1
    assert len(demo["selection"].indices) == 2 and len(demo["predicted"]) == len(demo["x"])
    assert not set(demo["rest"]) & set(demo["selection"].indices)
    # novelty is measured against the world's (training) images
    assert demo["selection"].novelty == pytest.approx(sel.nearest_distance(demo["x"], smoke.images))


def test_circles_selection_picks_points_of_the_level_set():
    demo = app.circles_selection([0.5, 0.3], 3, n=32, seed=0)
    assert demo["points"].shape == (32, 2) and len(demo["selection"].indices) == 3
    assert demo["train"].shape[1] == 2


def test_a_world_without_the_shortcut_part_says_so(smoke):
    import dataclasses

    bare = dataclasses.replace(smoke, loaders={k: v for k, v in smoke.loaders.items() if k != "shortcut"})
    with pytest.raises(ValueError, match=r"world 'smoke' has no part 'shortcut'"):
        bare.part("shortcut")


def test_prose_readings():
    from equidiff.chapters import applications_prose as prose

    assert prose.reliance_reading({"marked_to_shortcut": 0.3}, {"marked_to_shortcut": 0.01}, 900, 3).startswith(
        'shows the shortcut: the shortcut classifier calls more of the marked other-class digits a "3"')
    assert prose.reliance_reading({"marked_to_shortcut": 0.01}, {"marked_to_shortcut": 0.3}, 900, 7).startswith(
        "points the other way")
    # the same gap is noise on few images and a finding on many
    assert prose.reliance_reading({"marked_to_shortcut": 0.04}, {"marked_to_shortcut": 0.02}, 100, 3).startswith(
        "does not show the shortcut")
    assert prose.reliance_reading({"marked_to_shortcut": 0.04}, {"marked_to_shortcut": 0.02}, 10_000, 3).startswith(
        "shows the shortcut")
    main = {"precision_at_k_selected": 0.5, "precision_at_k_random": 0.2, "random_range": [0.0, 0.4]}
    assert prose.selection_reading(main) == "above the range of single random choices"
    assert prose.selection_reading({**main, "precision_at_k_selected": 0.3}).startswith("above the random mean but")
    assert prose.selection_reading({**main, "precision_at_k_selected": 0.2}) == (
        "no better than a random choice on average")
    assert prose.comparison(0.2, 0.1) == "larger than" and prose.comparison(0.1, 0.2) == "smaller than"
    assert prose.comparison(0.1, 0.1) == "the same as" and prose.comparison(float("nan"), 0.1) == "not comparable with"
    assert prose.class_counts([5, 1, 5, 9, 1, 5]) == '"5" (3), "1" (2) and "9" (1)'
    assert prose.class_counts(torch.tensor([], dtype=torch.long)) == "none in this run"
    corner = prose.corner_ink(3)
    assert 0 <= corner["n_stroke"] <= corner["n_all"] and corner["share"] == corner["n_stroke"] / corner["n_all"]
    assert prose.corner_ink(4)["n_stroke"] >= corner["n_stroke"]  # the larger corner holds the smaller


def test_prose_values_are_the_runs_figures_and_cover_the_chapter(smoke):
    """Every glue key the chapter's markdown names is computed, and each is the run's own figure."""
    import json
    import re
    from pathlib import Path

    from equidiff.chapters import applications_prose as prose

    models = smoke.part("shortcut")
    w = models.world
    q, _ = sc.marked_queries(models.shortcut, w, 1)
    det = {n: app.detect(getattr(models, n), models, q, name=n, n_samples=6, steps=2, ddim_steps=2, tau=0.5)
           for n in ("shortcut", "control")}
    summaries = {n: d.summary() for n, d in det.items()}
    assert summaries["shortcut"]["n_hits"] == int(det["shortcut"].hits.sum()) and summaries["shortcut"]["level"] == 0.95
    reliance = {n: sc.reliance(getattr(models, n), w) for n in ("shortcut", "control", "judge")}
    pool, _ = sel.member_pool(det["shortcut"].converged, 2)
    train_x = sc.marked_split(w, "train", "shortcut")[0]
    study = app.selection_study(det["shortcut"].x[pool], det["shortcut"].hits.numpy()[pool], train_x, 2,
                                model=models.judge, n_draws=50, ks=(2, 4, 99))
    assert 0 <= study["ablation"]["other_space"] <= 1
    assert [c["k"] for c in study["curve"]] == [kk for kk in (2, 4) if kk <= len(pool)]  # only the ks the pool allows
    circles = app.circles_selection([0.5, 0.3], 2, n=16)
    demo = app.neuron_selection(smoke, 5, 2, n_samples=3, steps=1, ddim_steps=2)
    params = {"profile": "smoke", "n_samples": 6, "steps": 2, "tau": 0.5, "ddim_steps": 2}
    v = prose.prose_values(params, models, reliance, det, summaries, app.query_probabilities(models, q), study,
                           circles, demo)

    nb = json.loads((Path(__file__).resolve().parent.parent / "notebooks" / "05_applications.ipynb").read_text())
    md = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    named = set(re.findall(r"\{glue:text\}`([^`:]+)", md))
    assert named and not named - set(v), f"the prose names keys prose_values does not compute: {named - set(v)}"
    assert all(isinstance(x, (int, float, str)) for x in v.values())  # what glue_all accepts

    _, test_y = zoo.load_digits16("test")
    assert v["n_test"] == len(test_y) and v["n_other_test"] == int((test_y != w.shortcut_class).sum())
    assert v["n_per_classifier"] == 6 and v["n_queries"] == 1 and v["tau"] == 0.5
    for n in ("shortcut", "control"):
        hits = det[n].hits
        assert v[f"{n}_hits"] == int(hits.sum()) and v[f"{n}_members"] == int(det[n].converged.sum())
        assert v[f"{n}_share"] == summaries[n]["share"] or np.isnan(summaries[n]["share"])
        assert v[f"{n}_to_class"] == reliance[n]["marked_to_shortcut"]
    counts = re.findall(r"\((\d+)\)", v["hit_classes"])
    assert sum(map(int, counts)) == v["shortcut_hits"]  # the judge's classes of exactly the hits
    assert v["detection_verdict"] == app.READINGS[app.interval_reading(summaries)]
    assert v["k"] == 2 and v["pool_size"] == len(pool) and v["n_relevant_pool"] == int(det["shortcut"].hits[pool].sum())
    assert v["curve_k"] == "2 and 4" or len(pool) < 4  # the ks the pool allows, nothing beyond it
    assert v["n_random_draws"] == 50 and v["select_space"] == "pixel space"
    assert v["other_space"] == "judge's feature space"
    assert v["neuron"] == 5 and v["neuron_samples"] == 3 and v["neuron_pool_size"] == len(demo["x"])
    assert v["neuron_top_class"] in demo["predicted"].tolist()
    assert v["neuron_concept"] == demo["concept"] and v["neuron_query_label"] == demo["query_label"]
    assert v["circle_n"] == 16 and v["circle_novelty_picks"] >= min(circles["selection"].novelty)


def test_queries_are_ranked_by_log_odds_where_float32_probabilities_tie():
    """Near p = 1 every candidate's float32 probability is 1.0 (and CPUs differ in its last bit); the
    log-odds still order them, so every machine picks the same queries."""
    w = sc.ShortcutWorld()
    _, y = zoo.load_digits16("test")
    idx = torch.nonzero(y == w.shortcut_class).flatten()
    boost = torch.zeros(int(y.numel()))
    boost[idx[-1]], boost[idx[-2]] = 30.0, 25.0  # the last two candidates are the surest, by far

    class Sure(torch.nn.Module):  # class-3 logit 20 (+ boost) for every image: p == 1.0 in float32
        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[:, w.shortcut_class] = 20.0 + self.extra
            return out

    model = Sure()
    model.extra = boost[idx]  # marked_queries feeds the class-3 test images in split order
    assert bool((torch.softmax(model(torch.zeros(len(idx), 1, 16, 16)), 1)[:, 3] == 1.0).all())
    _, chosen = sc.marked_queries(model, w, 2)
    assert chosen == [int(idx[-1]), int(idx[-2])]
