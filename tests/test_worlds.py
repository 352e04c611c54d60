"""The digits worlds of the registry (``cpu`` / ``smoke``): what a chapter gets, and the parameters it refuses.

Runs on the ``smoke`` world (the ``*-tiny`` presets) in a temporary cache: a few seconds.
"""

import inspect

import pytest
import torch

from equidiff.core.metrics import FIDResult
from equidiff.core.priors import PixelDDIMPrior
from equidiff.worlds import load_world, world_names
from equidiff.worlds.digits import world as digits_world
from equidiff.worlds.digits.data import load_digits16
from equidiff.worlds.digits.models import ZooModel
from equidiff.worlds.imagenet.world import paper_world


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("world-cache")
    return load_world("smoke", cache_dir=root), root


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_registry_names_the_digits_worlds():
    assert {"cpu", "smoke", "paper"} <= set(world_names())


def test_smoke_world_has_tiny_models_and_the_digits(smoke):
    world, root = smoke
    assert world.name == "smoke" and world.params == {"cache_dir": root}
    # tiny presets: 11,470 and 44,969 parameters (the cpu world's classifier has 310,226, its DDPM 636,465)
    assert _n_params(world.classifier) < 30_000
    zoo = world.part("zoo")
    assert isinstance(zoo["ddpm"], ZooModel) and zoo["ddpm"].name == "digits-ddpm-tiny"
    assert _n_params(zoo["ddpm"].model) < 100_000
    assert zoo["classifier"].path.parent == root  # cache_dir is passed through
    assert world.judge is world.classifier
    x, y = load_digits16("train")
    xt, yt = load_digits16("test")
    assert torch.equal(world.images, x) and torch.equal(world.labels, y)
    assert torch.equal(world.test_images, xt) and torch.equal(world.test_labels, yt)
    assert world.has("labels") and world.has("test_images") and world.has("judge") and world.has("fid")
    assert world.class_names == [str(d) for d in range(10)]
    assert world.record == {"world": "smoke", "presets": digits_world.PRESETS["smoke"]}
    # the neuron layer exists in the classifier and is the last stage's activation
    assert dict(world.classifier.named_modules())[world.neuron_layer] is world.classifier.layer4[0].act2


def test_smoke_prior_decodes_seeded_noise_and_fid_is_a_result(smoke):
    world, _ = smoke
    prior = world.make_prior(3)
    assert isinstance(prior, PixelDDIMPrior)
    with torch.no_grad():
        z = prior.sample_latents(4, torch.Generator().manual_seed(0))
        x = prior(z)
        again = prior(prior.sample_latents(4, torch.Generator().manual_seed(0)))
    assert x.shape == (4, 1, 16, 16) and torch.isfinite(x).all() and torch.equal(x, again)
    result = world.fid(x, world.test_images[:8], "smoke test")
    assert isinstance(result, FIDResult)
    assert result.computed and result.reason is None and result.figure == "smoke test"
    assert result.n_samples == 4 and result.n_reference == 8
    assert result.value >= 0 and torch.isfinite(torch.tensor(result.value))


def test_the_vit_part_is_the_tiny_preset(smoke):
    world, root = smoke
    vit = world.part("vit")
    assert vit.name == "digits-vit-tiny" and vit.path.parent == root
    assert world.part("vit") is vit  # loaded once


@pytest.mark.parametrize("name", ["paper_config", "query_images", "batch_size", "bf16", "device", "ddim_steps"])
def test_paper_only_parameters_are_refused_by_name_unless_none(name, smoke):
    _, root = smoke
    assert load_world("smoke", cache_dir=root, **{name: None}).name == "smoke"  # notebooks pass them all
    with pytest.raises(ValueError, match=rf"^{name} is a parameter of the 'paper' world only; for the 'smoke' "
                                         rf"world leave it None.*got 7$"):
        load_world("smoke", cache_dir=root, **{name: 7})


def test_unknown_and_bad_parameters_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"^preset is not a parameter of the 'cpu' world, got preset='big'; "
                                         r"it takes cache_dir and progress"):
        load_world("cpu", preset="big")
    with pytest.raises(ValueError, match=r"progress must be True or False, got 'yes'"):
        load_world("smoke", cache_dir=tmp_path, progress="yes")
    with pytest.raises(ValueError, match=r"cache_dir must be None or a folder path .*got 3"):
        load_world("smoke", cache_dir=3)
    with pytest.raises(ValueError, match=r"profile must be one of \(.*'smoke'.*\), got 'laptop'"):
        load_world("laptop")
    assert list(tmp_path.iterdir()) == []  # refused before anything was trained


def test_paper_only_names_are_the_paper_worlds_parameters():
    named = {n for n, p in inspect.signature(paper_world).parameters.items() if p.kind is not p.VAR_KEYWORD}
    assert set(digits_world.PAPER_ONLY) == named


def test_world_chapter_compares_the_same_noises_through_a_longer_chain(smoke):
    from ast import literal_eval

    from equidiff.chapters import world as eqw
    from equidiff.report import figures as plots

    world, _ = smoke
    # the same chain length twice: the "longer" chain must then see the very same starting noises
    ov = eqw.overview(world, n_samples=16, seed=3, ddim_steps=2, compare_steps=2, stochastic_steps=0)
    same = ov["compare_chain"]
    assert same["class_counts"] == ov["quality"]["class_counts"] and sum(same["class_counts"]) == 16
    assert same["share_confident"] == pytest.approx(ov["quality"]["share_confident"])
    v = eqw.prose_values(ov)
    counts = same["class_counts"]
    assert v["compare_steps"] == 2 and v["compare_rarest_count"] == min(counts)
    assert counts[v["compare_commonest_class"]] == max(counts) and literal_eval(v["compare_share"]) == f"{same['share_confident']:.3f}"
    none = eqw.overview(world, n_samples=16, seed=3, ddim_steps=2, compare_steps=0, stochastic_steps=0)
    assert none["compare_chain"] is None and str(eqw.prose_values(none)["compare_share"]) == "–"
    assert none["stochastic_chain"] is None and str(eqw.prose_values(none)["stochastic_verdict"]) == "–"
    fig = plots.class_mix({"a": counts, "b": [1] * 10}, reference=[400] * 10, title="t")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]  # shares in %, one bar per class and chain
    assert len(heights) == 20 and sum(heights[:10]) == pytest.approx(100.0) and heights[10] == pytest.approx(10.0)
    assert ax.get_ylabel() == "share of images (%)"
    with pytest.raises(ValueError, match="compare_steps"):
        eqw.check_parameters({"seed": 0, "n_samples": 10, "ddim_steps": 1, "compare_steps": -1, "stochastic_steps": 0,
                              "stochastic_samples": 10, "profile": "cpu", "output_dir": "x"})


def test_world_chapter_measures_the_model_through_a_stochastic_chain(smoke):
    from ast import literal_eval

    from equidiff.chapters import world as eqw
    from equidiff.worlds.digits.models import quality_gate

    world, _ = smoke
    ov = eqw.overview(world, n_samples=16, seed=3, ddim_steps=2, compare_steps=0, stochastic_steps=4,
                      stochastic_samples=12)
    c = ov["stochastic_chain"]
    ddpm = world.part("zoo")["ddpm"]
    alone = quality_gate(ddpm.model, ddpm.scheduler, world.judge, n=12, num_inference_steps=4, seed=3, eta=1.0)
    assert c["share_confident"] == pytest.approx(alone.share) and c["class_counts"] == alone.class_counts()
    assert c["n"] == 12 and c["eta"] == 1.0 and sum(c["class_counts"]) == 12
    assert c["share_se"] == pytest.approx((alone.share * (1 - alone.share) / 12) ** 0.5)
    v = eqw.prose_values(ov)
    assert literal_eval(v["stochastic_share"]) == f"{alone.share:.3f}" and v["stochastic_n"] == 12
    gap = 100 * (alone.share - ov["quality"]["share_confident"])
    assert str(v["stochastic_gap_words"]) == f"{abs(gap):.1f} percentage points {'above' if gap >= 0 else 'below'}"
    passes = alone.share >= ov["gate_share"]
    assert str(v["stochastic_verdict"]) == ("at or above" if passes else "below")
    assert str(v["stochastic_reading"]) == eqw._reading(passes, None)  # no longer deterministic chain ran
    assert eqw._reading(False, False).startswith("Even with fresh noise")
    assert "both deterministic chains fall short" in eqw._reading(True, False)
    assert eqw._reading(True, True).endswith("the shortfall is the short chain's")
    for name, value in (("stochastic_steps", -1), ("stochastic_samples", 5)):
        p = {"seed": 0, "n_samples": 10, "ddim_steps": 1, "compare_steps": 0, "stochastic_steps": 0,
             "stochastic_samples": 10, "profile": "cpu", "output_dir": "x", name: value}
        with pytest.raises(ValueError, match=name):
            eqw.check_parameters(p)
