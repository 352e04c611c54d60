"""Classifier-output chapter (thesis Section 4.4) on the one World: settings, queries, methods,
metrics rows, the reference row, cutoff curves, table — for a world with labels and held-out
images (the smoke digits world) and for one without them (the same world with its labels,
test split and guidance taken away, as the paper world lacks them)."""

import ast
import dataclasses

import pytest
import torch

from equidiff.chapters import classifier as O, classifier_prose as P
from equidiff.core.invariants import InvariantConfig, InvariantResult
from equidiff.core.metrics import classifier_features, diversity, feature_fid
from equidiff.report.glue import Text
from equidiff.worlds import load_world
from equidiff.worlds.settings import SETTINGS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return load_world("smoke", cache_dir=tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def bare(world):
    """The smoke world as the paper world is: 40 images from files, no labels, no held-out images, no guidance."""
    return dataclasses.replace(
        world, name="bare", images=world.images[:40], labels=None, test_images=None, test_labels=None,
        image_files=[f"img{i:02d}.png" for i in range(40)], image_noun="images",
        lacks={"labels": "no labels here", "test_images": "no held-out images here", "guidance": "no pixel chain here"})


def _settings(world, **kw):
    return O.Settings(**{"n_samples": 2, "steps": 2, "ddim_steps": 2, "seed": 1, **kw}).for_world(world)


def _fake_run(world, x, query, mode, converged=None):
    n = len(x)
    obj = O.make_objective(world.classifier, mode, query.label)
    with torch.no_grad():
        meas, tgt = obj(x), obj(query.image)
    loss = ((meas - tgt) ** 2).sum(1)
    conv = loss < 0.01 if converged is None else converged
    res = InvariantResult(x=x, z=x, z_init=x, measurements=meas, target=tgt, loss=loss, converged=conv,
                          steps_to_converge=torch.where(conv, 3, -1), history={}, config=InvariantConfig(n_samples=n),
                          description=obj.description, seconds=1.5)
    return O.MethodRun("equidiff", mode, res)


def test_resolvers_and_their_errors(world, bare):
    assert O.resolve_modes("both") == list(O.MODES)
    assert O.resolve_modes("distribution") == ["distribution"]
    assert O.resolve_methods("all") == list(O.METHODS)
    assert O.resolve_methods("all", world) == list(O.METHODS)
    assert O.resolve_methods(["pixel", "guidance"], world) == ["pixel", "guidance"]
    # a world without a pixel chain: "all" is every method it supports; guidance by name is refused
    assert O.resolve_methods("all", bare) == ["equidiff", "equidiff_no_lowpass", "pixel", "pixel_fourier"]
    with pytest.raises(ValueError, match=r"methods must be 'all' or names among \('equidiff', .*'pixel_fourier'\) "
                                         r"in world 'bare' \(guidance needs .*: no pixel chain here\), "
                                         r"got \['guidance'\]"):
        O.resolve_methods(["guidance"], bare)
    with pytest.raises(ValueError, match=r"mode must be 'both', one of \('class_probability', 'distribution'\), "
                                         r"or a list"):
        O.resolve_modes("logits")
    with pytest.raises(ValueError, match=r"methods must be 'all' or a list of distinct names among"):
        O.resolve_methods(["pixel", "pixel"])
    with pytest.raises(ValueError, match=r"methods must be 'all' or a list .*got \['adam'\]"):
        O.resolve_methods(["adam"])


@pytest.mark.parametrize("kwargs, message", [
    ({"guidance_scale": -1}, r"guidance_scale must be a finite number ≥ 0 .*got -1"),
    ({"cutoffs": [0.0, 0.5]}, r"cutoffs must be a non-empty list of numbers in \(0, 1\] .*got \[0.0, 0.5\]"),
    ({"cutoffs": []}, r"cutoffs must be a non-empty list"),
    ({"cutoffs": "0.5"}, r"cutoffs must be a non-empty list"),
    ({"ddim_steps": 0}, r"ddim_steps must be None or an integer ≥ 1 .*got 0"),
    ({"ddim_steps": 2.5}, r"ddim_steps must be None or an integer ≥ 1"),
    ({"n_samples": 1}, r"n_samples must be None or an integer ≥ 2 \(FID and diversity need two samples\), got 1"),
    ({"lowpass_cutoff": 1.0}, r"lowpass_cutoff must be a number in \(0, 1\)"),
    ({"optimizer": "rmsprop"}, r"optimizer must be one of \('adam', 'sgd'"),
    ({"lr": 0}, r"lr must be a finite number > 0, got 0"),
    ({"steps": -1}, r"steps must be an integer ≥ 0"),
    ({"tau": 0}, r"tau must be a finite number > 0"),
    ({"seed": -1}, r"seed must be an integer ≥ 0"),
    ({"keep_norm": 1}, r"keep_norm must be True or False"),
    ({"mode": "both_"}, r"mode must be 'both'"),
    ({"methods": ["pixel", "gradient"]}, r"methods must be 'all' or a list"),
])
def test_settings_are_checked_at_the_chapter_entry_naming_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        O.Settings(**kwargs)  # no world, no model: before any minute of work


def test_settings_take_the_world_values_for_none(world, bare):
    s = O.Settings().for_world(world)
    assert (s.n_samples, s.steps, s.ddim_steps) == (4, 3, 3)  # worlds/settings.py, smoke / classifier
    assert s.methods == list(O.METHODS) and s.modes == list(O.MODES) and s.optimizer == "adam"
    s = O.Settings(n_samples=6, steps=0, ddim_steps=7, methods="all").for_world(bare)
    assert (s.n_samples, s.steps, s.ddim_steps) == (6, 0, 7) and "guidance" not in s.methods
    with pytest.raises(ValueError, match=r"methods must be 'all' or names among"):
        O.Settings(methods=["equidiff", "guidance"]).for_world(bare)
    rec = s.record()
    assert rec["steps_budget"] == 0 and rec["optimizer"] == "adam" and rec["cutoffs"] == list(O.Settings().cutoffs)


def test_query_and_objectives(world, bare):
    clf = world.classifier
    x, y = world.test_images, world.test_labels
    q = O.load_query(world, 7)
    assert torch.equal(q.image, x[7:8]) and q.label == int(y[7]) and q.label_source == "label"
    with torch.no_grad():
        assert torch.equal(q.probs, torch.softmax(clf(x[7:8]), dim=1)[0])  # as the chapter always computed it
    assert q.probs.shape == (10,) and torch.isclose(q.probs.sum(), torch.tensor(1.0))
    assert q.p_true == pytest.approx(float(q.probs[q.label]))
    assert f"query #7, a '{q.label}'" in q.describe()
    assert O.make_objective(clf, "class_probability", q.label)(x[:3]).shape == (3, 1)
    p = O.make_objective(clf, "distribution", q.label)(x[:3])
    assert p.shape == (3, 10) and torch.allclose(p.sum(1), torch.ones(3))
    n = len(world.test_images)
    with pytest.raises(ValueError, match=rf"query_index must be an integer in \[0, {n - 1}\] "
                                         rf"\(the {n} held-out digits\), got {n}"):
        O.load_query(world, n)
    with pytest.raises(ValueError, match=r"mode must be one of \('class_probability', 'distribution'\), got 'logits'"):
        O.make_objective(clf, "logits", 0)
    # no labels, no held-out images: the query is one of the world's images, its class the classifier's
    qb = O.load_query(bare, 3)
    assert torch.equal(qb.image, bare.images[3:4]) and qb.label == qb.predicted and qb.label_source == "classifier"
    assert qb.source == "img03.png" and "(img03.png), by the classifier a" in qb.describe()
    with pytest.raises(ValueError, match=r"query_index must be an integer in \[0, 39\] "
                                         r"\(the 40 images of world 'bare'\)"):
        O.load_query(bare, 40)


@pytest.mark.parametrize("mode", O.MODES)
def test_method_row_of_exact_copies_and_of_other_digits(world, mode):
    x, y = world.test_images, world.test_labels
    q = O.load_query(world, 0)
    exact = _fake_run(world, q.image.repeat(4, 1, 1, 1), q, mode)
    row = O.method_row(exact, world, q, tau=0.01, lowpass_cutoff=0.5)
    assert row["success_rate"] == 1.0 and row["success_lowpass"] == 1.0
    assert row["l2_mean"] == pytest.approx(0.0, abs=1e-10) and row["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert row["diversity"] == pytest.approx(0.0, abs=1e-6) and row["same_class_rate"] == 1.0
    assert row["seconds"] == 1.5 and row["steps_median"] == 3.0
    # other digits: the classifier's probability vectors differ from the query's
    others = x[(y != q.label)][:6]
    row = O.method_row(_fake_run(world, others, q, mode), world, q, tau=0.01, lowpass_cutoff=0.5)
    assert row["l2_mean"] > 0 and row["kl_mean"] > 0 and row["diversity"] > 0
    assert set(row) >= {"name", "success_rate", "l2_mean", "kl_mean", "high_freq_share", "fid", "diversity", "seconds"}
    # the world's FID is the chapter's old one: classifier features against the test digits
    assert row["fid"] == feature_fid(world.classifier, others, x)
    assert row["fid_reason"] is None and row["fid_features"] == "digits classifier, pooled"


def test_reference_row_is_the_old_real_digit_row_and_says_why_a_floor_is_missing(world, bare):
    q = O.load_query(world, 0)
    ref = O.reference_row(world, q, n=6, seed=2)
    # the numbers of the chapter before the World: the same draws, in the same order
    gen = torch.Generator().manual_seed(2)
    train_x, train_y, test_x = world.images, world.labels, world.test_images
    pick = train_x[torch.randperm(len(train_x), generator=gen)[:6]]
    same = train_x[train_y == q.label]
    same = same[torch.randperm(len(same), generator=gen)[:6]]
    assert ref["name"] == "real_digits" and ref["label"] == "real digits (reference)" and ref["n"] == 6
    assert ref["fid"] == feature_fid(world.classifier, pick, test_x)
    assert ref["diversity"] == diversity(classifier_features(world.classifier, same))
    assert "fid_reason" not in ref
    # no held-out images: no FID floor, and the row says why; same-class images by the classifier
    qb = O.load_query(bare, 0)
    rb = O.reference_row(bare, qb, n=6)
    assert rb["fid"] is None and rb["fid_reason"] == "no held-out images here" and rb["name"] == "real_images"
    same_b = O.real_same_class(bare, qb)
    with torch.no_grad():
        assert (bare.classifier(same_b).argmax(1) == qb.label).all() and len(same_b) >= 1


def test_cutoff_curves_vanish_at_cutoff_one_for_copies(world):
    x, y = world.test_images, world.test_labels
    q = O.load_query(world, 0)
    runs = {"equidiff": _fake_run(world, q.image.repeat(3, 1, 1, 1), q, "distribution")}
    c = O.cutoff_curves(world, q, runs, [0.1, 0.5, 1.0], real=x[y == q.label][:5])
    assert c["cutoffs"] == [0.1, 0.5, 1.0]
    assert c["query"][-1] == pytest.approx(0.0, abs=1e-7)  # c = 1 filters nothing
    assert c["methods"]["equidiff"]["mean"] == pytest.approx(c["query"], abs=1e-6)  # copies deviate as the query
    assert c["methods"]["equidiff"]["std"] == pytest.approx([0, 0, 0], abs=1e-6)
    assert c["real_same_class"]["n"] == 5 and c["real_same_class"]["mean"][-1] == pytest.approx(0.0, abs=1e-7)
    # default: every training digit of the query's class
    c = O.cutoff_curves(world, q, runs, [0.5])
    assert c["real_same_class"]["n"] == int((world.labels == q.label).sum())


def test_run_methods_evaluate_and_metrics(world):
    q = O.load_query(world, 0)
    s = _settings(world, mode="class_probability", guidance_scale=1.0)
    runs = O.run_methods(world, q, "class_probability", s)
    assert list(runs) == list(O.METHODS)
    for r in runs.values():
        assert r.x.shape == (2, 1, 16, 16) and r.x.abs().max() <= 1
    assert runs["guidance"].result.config.steps == 0
    assert runs["equidiff"].result.config.lowpass_cutoff == 0.5
    assert runs["equidiff_no_lowpass"].result.config.lowpass_cutoff is None
    # EquiDiff and guidance start from the same seeded noise
    assert torch.equal(runs["equidiff"].result.z_init, runs["guidance"].result.z_init)
    rows = O.evaluate(runs, world, q, tau=0.01, lowpass_cutoff=0.5)
    assert [r["name"] for r in rows] == list(O.METHODS) and all(0 <= r["success_rate"] <= 1 for r in rows)
    ref = O.reference_row(world, q, n=4)
    html = O.table_html(world, rows, ref, 0.01, 0.5)
    for label in [*O.METHOD_LABELS.values(), "real digits (reference)", f"{len(world.test_images)} held-out digits"]:
        assert label in html
    curves = {"class_probability": O.cutoff_curves(world, q, runs, [0.3, 0.6])}
    m = O.chapter_metrics({"class_probability": runs}, curves, ref, q, **s.record())
    assert [r["name"] for r in m["methods"]] == list(O.METHODS)
    assert m["cutoff_curve"]["samples"]["method"] == "equidiff" and len(m["cutoff_curve"]["samples"]["mean"]) == 2
    assert m["cutoff_curve"]["query"] == curves["class_probability"]["query"] and m["seed"] == 1
    assert m["steps_budget"] == 2 and m["ddim_steps"] == 2 and m["optimizer"] == "adam"
    block = O.spectra_block(runs["equidiff"], world, q, 0.01)
    assert len(block["captions"]) == 2 and block["ok"].dtype == torch.bool
    assert len(O.comparison_rows(runs, world, q, 0.01)) == len(O.METHODS)
    assert len(O.deviation_lines(curves, 0.5, world.image_noun)) == 1


def test_run_methods_takes_the_optimizer_from_the_parameters(world):
    """Chapter 04 used to hard-code Adam: SGD (the thesis' optimiser) now runs through the parameters."""
    q = O.load_query(world, 0)
    runs = O.run_methods(world, q, "distribution", _settings(world, methods=["equidiff", "pixel"], optimizer="sgd",
                                                             lr=10.0, lowpass_cutoff=0.25, tau=1e-12))
    for r in runs.values():
        assert r.result.config.optimizer == "sgd" and r.result.config.lr == 10.0
    assert runs["equidiff"].result.config.lowpass_cutoff == 0.25
    adam = O.run_methods(world, q, "distribution", _settings(world, methods=["equidiff"], lowpass_cutoff=0.25,
                                                             tau=1e-12))
    assert torch.equal(adam["equidiff"].result.z_init, runs["equidiff"].result.z_init)  # same start, other steps
    assert not torch.equal(adam["equidiff"].result.x, runs["equidiff"].result.x)


def test_a_world_without_guidance_runs_the_rest_and_refuses_guidance(bare):
    q = O.load_query(bare, 0)
    runs = O.run_methods(bare, q, "class_probability", _settings(bare, methods="all", steps=1))
    assert list(runs) == ["equidiff", "equidiff_no_lowpass", "pixel", "pixel_fourier"]
    rows = O.evaluate(runs, bare, q, tau=0.01, lowpass_cutoff=0.5)
    assert all(r["fid"] is not None for r in rows)  # the world's FID, against its own images
    ref = O.reference_row(bare, q, n=4)
    assert "no FID floor (no held-out images here)" in O.table_html(bare, rows, ref, 0.01, 0.5)
    with pytest.raises(ValueError, match=r"methods must be 'all' or names among .*no pixel chain here"):
        O.run_methods(bare, q, "class_probability", O.Settings(methods=["guidance"], n_samples=2, steps=1,
                                                               ddim_steps=2))


def test_run_methods_rejects_a_bad_mode(world):
    q = O.load_query(world, 0)
    with pytest.raises(ValueError, match=r"mode must be one of"):
        O.run_methods(world, q, "both", _settings(world, methods=["pixel"]))


def test_prose_helpers():
    assert P.per_constraint([0.5, 0.25], ".2f") == "0.50 / 0.25"
    assert P.per_constraint([None, 0.25], ".2f") == "– / 0.25"
    assert P.per_constraint([None, float("nan")], ".2f") == "–" and P.per_constraint([3], "d") == "3"
    cuts = [0.1, 0.2, 0.3, 0.4]
    assert P.intact_from([0.9, 0.01, 0.2, 0.01], cuts) == 0.4  # a dip below the bound does not count
    assert P.intact_from([0.9, 0.3, 0.01, 0.0], cuts) == 0.3 and P.intact_from([0.0, 0.0, 0.0, 0.5], cuts) is None
    # 16×16: c keeps k ≤ 8c; 0.5 and 0.6 are one filter, 0.1 only the mean
    bands = P.filter_bands(16, 16, [0.1, 0.2, 0.5, 0.6, 1.0])
    assert bands == ("c = 0.1 keeps k = 0 (only the mean grey level); c = 0.2 keeps k ≤ 1; "
                     "c = 0.5 and 0.6 keep k ≤ 4; c = 1 keeps k ≤ 8")


@pytest.fixture(scope="module")
def chapter_run(world):
    """Both constraints, every method, smoke-size budgets: what the notebook hands prose_values."""
    s = _settings(world, steps=3, cutoffs=[0.1, 0.3, 0.4, 0.6, 0.9])
    q = O.load_query(world, 2)
    runs = {m: O.run_methods(world, q, m, s) for m in s.modes}
    for m in s.modes:
        O.evaluate(runs[m], world, q, tau=s.tau, lowpass_cutoff=s.lowpass_cutoff)
    curves = {m: O.cutoff_curves(world, q, runs[m], s.cutoffs) for m in s.modes}
    return s, q, runs, curves, O.reference_row(world, q, s.n_samples, s.seed)


def test_prose_values_state_what_the_run_measured(world, chapter_run):
    s, q, runs, curves, ref = chapter_run
    v = P.prose_values(world, q, s, runs, curves, ref)
    assert all(isinstance(x, (int, float, Text)) and not isinstance(x, bool) for x in v.values())
    per_method = [f"{k}_{m}" for m in P.SHORT.values() for k in ("success", "lpsuccess", "hf", "hfratio", "fid", "div",
                                                                 "time", "l2lp", "same", "steps", "intact", "below",
                                                                 "gapreal")]
    assert set(per_method) <= set(v)
    rows = {m: {n: r.row for n, r in runs[m].items()} for m in runs}
    cp, dist = rows["class_probability"], rows["distribution"]
    # the run's own numbers, a / b for the two constraints
    assert v["success_pixel"] == f"{cp['pixel']['success_rate']:.2f} / {dist['pixel']['success_rate']:.2f}"
    assert v["fid_equidiff"] == f"{cp['equidiff']['fid']:.1f} / {dist['equidiff']['fid']:.1f}"
    assert v["success_min"] == min(r["success_rate"] for d in rows.values() for r in d.values())
    full = {P.PROSE_LABELS[n] for n, r in cp.items() if r["success_rate"] == 1.0}
    assert (v["all_in_cp"] == "no method") == (not full) and all(lab in v["all_in_cp"] for lab in full)
    missed = [round((1 - d["guidance"]["success_rate"]) * d["guidance"]["n"]) for d in (cp, dist)]
    assert v["guidance_missed"] == f"{missed[0]} / {missed[1]}"
    # the world and the query, not the numbers of an older run
    x, y = world.test_images, world.test_labels
    with torch.no_grad():
        p = torch.softmax(world.classifier(x), 1)
    assert v["n_heldout"] == len(x) and v["n_classes"] == 10 and v["image_size"] == "16×16"
    assert v["accuracy"] == pytest.approx(float((p.argmax(1) == y).float().mean()))
    assert v["ambiguous_index"] == int(p.max(1).values.argmin())
    assert v["query_p"] == pytest.approx(q.p_true) and v["query_class"] == str(q.label)
    assert v["rest_vs_radius"] == ("below" if 1 - q.p_true < s.tau ** 0.5 else "above")
    assert v["n_real_same"] == int((world.labels == q.label).sum()) and v["c_below"] == 0.4
    c = P.intact_from(curves["class_probability"]["query"], s.cutoffs)
    assert v["intact_query"] == (f"{c:g}" if c is not None else "none")
    assert v["dev_real_below"] == pytest.approx(curves["class_probability"]["real_same_class"]["mean"][2])
    assert v["hf_real"] == pytest.approx(ref["high_freq_share"]) and v["fid_floor"] == pytest.approx(ref["fid"])
    # no text myst-nb would read back as a Python literal ("0.100" -> 0.1, "32, 150, 10" -> a tuple)
    for key, x in v.items():
        if isinstance(x, Text):
            try:
                ast.literal_eval(x)
            except (ValueError, SyntaxError):
                continue
            assert str(ast.literal_eval(x)) == x, (key, x)
    cpu = SETTINGS["cpu"]["classifier"]
    assert v["defaults_cpu"] == f"{cpu['n_samples']}, {cpu['steps']} and {cpu['ddim_steps']}"
    assert v["cutoffs"] == "0.1, 0.3, 0.4, 0.6 and 0.9"


def test_prose_values_say_what_was_not_run(world, chapter_run):
    s, q, runs, curves, ref = chapter_run
    full = P.prose_values(world, q, s, runs, curves, ref)
    one = {"distribution": {n: r for n, r in runs["distribution"].items() if n != "guidance"}}
    v = P.prose_values(world, q, s, one, {"distribution": curves["distribution"]}, ref)
    assert set(v) == set(full)  # the prose's keys never go missing: the book build would fail
    assert v["success_guidance"] == "–" and v["guidance_missed"] == "–" and v["all_in_cp"] == "–"
    assert v["below_guidance"] == "–" and v["intact_guidance"] == "–"
    assert v["success_equidiff"] == f"{runs['distribution']['equidiff'].row['success_rate']:.2f}"  # one value
