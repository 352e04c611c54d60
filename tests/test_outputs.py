"""Classifier-output chapter (thesis Section 4.4): queries, methods, metrics rows, cutoff curves, table."""

import pytest
import torch

from equidiff.chapters import classifier as O
from equidiff.worlds.digits import models as zoo
from equidiff.core.invariants import InvariantConfig, InvariantResult


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("zoo")
    clf = zoo.get_model("digits-classifier-tiny", cache_dir=cache, progress=False)
    ddpm = zoo.get_model("digits-ddpm-tiny", cache_dir=cache, progress=False)
    x, y = zoo.load_digits16("test")
    return clf, ddpm, x, y


def _fake_run(x, query, mode, clf, converged=None):
    n = len(x)
    obj = O.make_objective(clf, mode, query.label)
    with torch.no_grad():
        meas, tgt = obj(x), obj(query.image)
    loss = ((meas - tgt) ** 2).sum(1)
    conv = loss < 0.01 if converged is None else converged
    res = InvariantResult(x=x, z=x, z_init=x, measurements=meas, target=tgt, loss=loss, converged=conv,
                          steps_to_converge=torch.where(conv, 3, -1), history={}, config=InvariantConfig(n_samples=n),
                          description=obj.description, seconds=1.5)
    return O.MethodRun("equidiff", mode, res)


def test_resolvers_and_their_errors():
    assert O.resolve_modes("both") == list(O.MODES)
    assert O.resolve_modes("distribution") == ["distribution"]
    assert O.resolve_methods("all") == list(O.METHODS)
    assert O.resolve_methods(["pixel", "guidance"]) == ["pixel", "guidance"]
    with pytest.raises(ValueError, match=r"mode must be 'both', one of \('class_probability', 'distribution'\), or a list"):
        O.resolve_modes("logits")
    with pytest.raises(ValueError, match=r"methods must be 'all' or a list of distinct names among"):
        O.resolve_methods(["pixel", "pixel"])
    with pytest.raises(ValueError, match=r"methods must be 'all' or a list .*got \['adam'\]"):
        O.resolve_methods(["adam"])
    with pytest.raises(ValueError, match=r"profile must be one of \('cpu', 'smoke', 'paper'\), got 'gpu'"):
        O.resolve_profile("gpu")
    assert O.resolve_profile("paper") == O.PAPER_PROFILE


def test_query_and_objectives(tiny):
    clf, _, x, y = tiny
    q = O.load_query(clf, 7)
    assert torch.equal(q.image, x[7:8]) and q.label == int(y[7])
    assert q.probs.shape == (10,) and torch.isclose(q.probs.sum(), torch.tensor(1.0))
    assert q.p_true == pytest.approx(float(q.probs[q.label]))
    assert f"test digit #7, a '{q.label}'" in q.describe()
    assert O.make_objective(clf, "class_probability", q.label)(x[:3]).shape == (3, 1)
    p = O.make_objective(clf, "distribution", q.label)(x[:3])
    assert p.shape == (3, 10) and torch.allclose(p.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match=r"query_index must be an integer in \[0, 359\] \(digits test split\), got 360"):
        O.load_query(clf, 360)
    with pytest.raises(ValueError, match=r"mode must be one of \('class_probability', 'distribution'\), got 'logits'"):
        O.make_objective(clf, "logits", 0)


@pytest.mark.parametrize("mode", O.MODES)
def test_method_row_of_exact_copies_and_of_other_digits(tiny, mode):
    clf, _, x, y = tiny
    q = O.load_query(clf, 0)
    exact = _fake_run(q.image.repeat(4, 1, 1, 1), q, mode, clf)
    row = O.method_row(exact, clf, q, x, tau=0.01, lowpass_cutoff=0.5)
    assert row["success_rate"] == 1.0 and row["success_lowpass"] == 1.0
    assert row["l2_mean"] == pytest.approx(0.0, abs=1e-10) and row["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert row["diversity"] == pytest.approx(0.0, abs=1e-6) and row["same_class_rate"] == 1.0
    assert row["seconds"] == 1.5 and row["steps_median"] == 3.0
    # other digits: the classifier's probability vectors differ from the query's
    others = x[(y != q.label)][:6]
    row = O.method_row(_fake_run(others, q, mode, clf), clf, q, x, tau=0.01, lowpass_cutoff=0.5)
    assert row["l2_mean"] > 0 and row["kl_mean"] > 0 and row["diversity"] > 0
    assert set(row) >= {"name", "success_rate", "l2_mean", "kl_mean", "high_freq_share", "fid", "diversity", "seconds"}


def test_cutoff_curves_vanish_at_cutoff_one_for_copies(tiny):
    clf, _, x, y = tiny
    q = O.load_query(clf, 0)
    runs = {"equidiff": _fake_run(q.image.repeat(3, 1, 1, 1), q, "distribution", clf)}
    c = O.cutoff_curves(clf, q, runs, x[y == q.label][:5], [0.1, 0.5, 1.0])
    assert c["cutoffs"] == [0.1, 0.5, 1.0]
    assert c["query"][-1] == pytest.approx(0.0, abs=1e-7)  # c = 1 filters nothing
    assert c["methods"]["equidiff"]["mean"] == pytest.approx(c["query"], abs=1e-6)  # copies deviate as the query
    assert c["methods"]["equidiff"]["std"] == pytest.approx([0, 0, 0], abs=1e-6)
    assert c["real_same_class"]["n"] == 5 and c["real_same_class"]["mean"][-1] == pytest.approx(0.0, abs=1e-7)


def test_run_methods_evaluate_and_metrics(tiny):
    clf, ddpm, x, y = tiny
    q = O.load_query(clf, 0)
    runs = O.run_methods(clf, ddpm, q, "class_probability", O.METHODS,
                         n_samples=2, steps=2, ddim_steps=2, seed=1)
    assert list(runs) == list(O.METHODS)
    for r in runs.values():
        assert r.x.shape == (2, 1, 16, 16) and r.x.abs().max() <= 1
    assert runs["guidance"].result.config.steps == 0
    assert runs["equidiff"].result.config.lowpass_cutoff == 0.5
    assert runs["equidiff_no_lowpass"].result.config.lowpass_cutoff is None
    # EquiDiff and guidance start from the same seeded noise
    assert torch.equal(runs["equidiff"].result.z_init, runs["guidance"].result.z_init)
    rows = O.evaluate(runs, clf, q, x, tau=0.01, lowpass_cutoff=0.5)
    assert [r["name"] for r in rows] == list(O.METHODS) and all(0 <= r["success_rate"] <= 1 for r in rows)
    ref = O.reference_row(clf, q, x, y, x, n=4)
    html = O.table_html(rows, ref, 0.01, 0.5)
    for label in list(O.METHOD_LABELS.values()) + ["real digits (reference)"]:
        assert label in html
    curves = {"class_probability": O.cutoff_curves(clf, q, runs, x[y == q.label][:4], [0.3, 0.6])}
    m = O.chapter_metrics({"class_probability": runs}, curves, ref, q, seed=1)
    assert [r["name"] for r in m["methods"]] == list(O.METHODS)
    assert m["cutoff_curve"]["samples"]["method"] == "equidiff" and len(m["cutoff_curve"]["samples"]["mean"]) == 2
    assert m["cutoff_curve"]["query"] == curves["class_probability"]["query"] and m["seed"] == 1
    block = O.spectra_block(runs["equidiff"], clf, q, 0.01)
    assert len(block["captions"]) == 2 and block["ok"].dtype == torch.bool
    assert len(O.comparison_rows(runs, clf, q, 0.01)) == len(O.METHODS)


def test_run_methods_rejects_bad_input(tiny):
    clf, ddpm, _, _ = tiny
    q = O.load_query(clf, 0)
    with pytest.raises(ValueError, match=r"n_samples must be an integer ≥ 2 \(FID and diversity need two samples\), got 1"):
        O.run_methods(clf, ddpm, q, "distribution", ["pixel"], n_samples=1)
    with pytest.raises(ValueError, match=r"lowpass_cutoff must be a number in \(0, 1\)"):
        O.run_methods(clf, ddpm, q, "distribution", ["pixel"], lowpass_cutoff=1.0)
    with pytest.raises(ValueError, match=r"mode must be one of"):
        O.run_methods(clf, ddpm, q, "both", ["pixel"])
