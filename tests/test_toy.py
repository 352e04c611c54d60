import numpy as np
import pytest
import torch

from equidiff.worlds import circles as toy
from equidiff.chapters import circles as circles_chapter


def test_classifier_accuracy_and_probabilities_strictly_inside(circles_model):
    model, info = circles_model
    assert info["test_accuracy"] >= 0.98
    g = np.linspace(-toy.BOX, toy.BOX, 101, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    p = toy.probability_of(model, grid)
    assert 0.0 < p.min() and p.max() < 1.0  # every level set is a proper curve in float32


def test_training_is_deterministic():
    cfg = toy.CirclesConfig(epochs=30)
    a, _ = toy.train_classifier(cfg)
    b, _ = toy.train_classifier(cfg)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_cache_round_trip(tmp_path):
    cfg = toy.CirclesConfig(epochs=20)
    m1, info1 = toy.load_classifier(cfg, cache_dir=tmp_path)
    files = sorted(p.name for p in next(tmp_path.iterdir()).iterdir())
    assert files == ["config.json", "model.safetensors"]  # no pickles
    m2, info2 = toy.load_classifier(cfg, cache_dir=tmp_path)
    x = torch.randn(5, 2)
    assert torch.equal(m1(x), m2(x)) and info1 == info2


def test_invariant_points_cover_the_exact_level_curve(circles_model):
    model, _ = circles_model
    r = circles_chapter.analyse_query(model, [0.7, -0.6], n=512, tau=0.005)
    assert r["n"] == 512
    assert r["max_abs_error"] < 0.005
    assert r["coverage"] >= 0.95
    # the measure can fail: a handful of points cannot cover the curve
    few = circles_chapter.analyse_query(model, [0.7, -0.6], n=8, tau=0.005)
    assert few["coverage"] < 0.5


def test_coverage_and_best_coverage_geometry():
    t = np.linspace(0, 2 * np.pi, 2001)
    circle = [np.stack([np.cos(t), np.sin(t)], 1)]
    assert toy.coverage(circle[0][::10], circle) == pytest.approx(1.0)
    half = circle[0][t <= np.pi]
    assert toy.coverage(half, circle) == pytest.approx(0.5 + 0.1 / (2 * np.pi), abs=0.01)
    # k equally spaced points cover 2·0.05·k of the 2π length
    assert toy.best_coverage(circle, 32) == pytest.approx(32 * 0.1 / (2 * np.pi), abs=0.02)


def test_prior_maps_noise_onto_the_moons_and_is_differentiable():
    cfg = toy.ToyPriorConfig(train_steps=300)
    den, _ = toy.train_prior(cfg)
    prior = toy.ToyDDIMPrior(den, cfg, num_steps=5)
    z = prior.sample_latents(64, torch.Generator().manual_seed(0)).requires_grad_(True)
    x = prior(z)
    x.sum().backward()
    assert x.shape == (64, 2) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"num_steps must be an integer in \[1, 200\].*got 0"):
        toy.ToyDDIMPrior(den, cfg, num_steps=0)


@pytest.mark.parametrize(
    "query,message",
    [([0.1], r"query must be a point \[x, y\] of two finite numbers, got \[0.1\]"),
     ([3.0, 0.0], r"query must lie in the plane shown, \[-2.5, 2.5\]², got \[3.0, 0.0\]"),
     ("ab", r"query must be a point \[x, y\]")],
)
def test_bad_query_points(circles_model, query, message):
    with pytest.raises(ValueError, match=message):
        circles_chapter.analyse_query(circles_model[0], query, n=4)


def test_bad_tau_and_config():
    with pytest.raises(ValueError, match=r"tau must be a probability tolerance in \(0, 1\), got 1.5"):
        toy.tau_for_probability(1.5)
    with pytest.raises(ValueError, match=r"epochs must be an integer ≥ 1, got 0"):
        toy.CirclesConfig(epochs=0)
    with pytest.raises(ValueError, match=r"extent must be in \(1, 2.5\]"):
        toy.CirclesConfig(extent=0.5)


def test_a_query_of_the_wrong_width_names_the_expected_shape(circles_model):
    """3 features for the 2D MLP: a ValueError naming query, its shape and the (B, 2) the MLP takes."""
    from equidiff import InvariantConfig, find_invariants
    from equidiff.core.objectives import class_logit

    obj = class_logit(circles_model[0], 0, name="circle MLP")
    with pytest.raises(ValueError, match=r"query of shape \(1, 3\) does not fit the objective 'logit 0 of circle MLP' "
                                         r"\(its model's first layer takes \(B, 2\)\): mat1 and mat2 shapes"):
        find_invariants(obj, torch.zeros(1, 3), None, InvariantConfig(n_samples=2, steps=1))


def test_the_2d_prior_is_a_public_ddim_chain():
    from equidiff.core.priors import DDIMChain

    cfg = toy.ToyPriorConfig(train_steps=1)
    prior = toy.ToyDDIMPrior(toy.ToyDenoiser(cfg.hidden), cfg, num_steps=2)
    assert isinstance(prior, DDIMChain)
    x = torch.tensor([[3.0, -4.0]])
    assert torch.equal(prior.finish(x), x)  # the plane extends beyond [-1, 1]: no clamping


def _shown(value) -> str:
    """What ``{glue:text}`key``` shows for a glued value (myst-nb reads glued text through literal_eval)."""
    from myst_nb.core.variables import format_plain_text

    return format_plain_text(str(value), "")


def test_prose_values_state_what_the_run_measured(circles_model):
    model, info = circles_model
    pcfg = toy.ToyPriorConfig(train_steps=1)
    prior = toy.ToyDDIMPrior(toy.ToyDenoiser(pcfg.hidden), pcfg, num_steps=2)  # untrained: its points are replaced
    qs = [[0.7, -0.6], [0.5, 0.3]]
    results = [circles_chapter.analyse_query(model, q, n=16, tau=0.005, steps=40) for q in qs]
    with_prior = [circles_chapter.analyse_query(model, q, n=8, tau=0.005, steps=5, prior=prior) for q in qs]
    typical = circles_chapter.analyse_query(model, qs[0], n=8, tau=0.005, steps=5, prior=prior, keep_norm=True)
    moons = toy.manifold_data(pcfg).numpy()
    # the prior's points, replaced by three points of the moons and one far off them: a share of 3/4 on the moons
    with_prior[0]["points"], with_prior[1]["points"] = moons[:3], np.array([[2.4, 2.4]], np.float32)
    v = circles_chapter.prose_values(model, info, results, with_prior, typical, moons)
    assert v["n_queries"] == 2 and v["n_requested"] == 16 and v["n_layers"] == 3 and v["n_hidden_layers"] == 2
    assert _shown(v["n_found"]) == f"{results[0]['n']} and {results[1]['n']}"
    assert v["tau"] == 0.005 and v["test_accuracy"] == info["test_accuracy"] and v["n_train"] == 1500
    worst = max(r["max_abs_error"] for r in results)
    assert _shown(v["max_abs_error"]) == f"{worst:.1e}"  # shown as formatted, not read back as a float
    assert _shown(v["error_verdict"]) == ("all" if worst < 0.005 else "not all")
    assert _shown(v["coverage_list"]) == " and ".join(f"{r['coverage']:.2f}" for r in results)
    assert v["coverage_radius"] == 0.05
    assert v["prior_near_share"] == pytest.approx(0.75)
    assert 0 <= v["free_near_share"] <= 1
    free, kept = with_prior[0]["result"].success_rate, typical["result"].success_rate
    assert (v["free_success"], v["kept_success"]) == (free, kept)
    assert _shown(v["kept_vs_free"]) == ("as many" if kept == free else "more" if kept > free else "fewer")
    assert v["typical_z_norm"] == pytest.approx(toy.typical_norm(2))
