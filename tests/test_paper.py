"""The paper world's loading code (equidiff.worlds.imagenet) on tiny randomly initialised models of the same
classes (DiTTransformer2DModel, AutoencoderKL, timm resnet50 with Bottleneck blocks), saved to a
temporary folder and loaded through the same functions as the real weights."""

import json
import shutil

import numpy as np
import pytest
import timm
import torch
from diffusers import DiTTransformer2DModel
from PIL import Image

from equidiff.core.batched import find_invariants_batched
from equidiff.core.invariants import InvariantConfig, find_invariants
from equidiff.core.metrics import frechet_from_statistics, frechet_distance
from equidiff.core.objectives import neuron_map
from equidiff.testing import TINY_CLASSIFIER_KWARGS, TINY_VIT_KWARGS, write_tiny_models
from equidiff.worlds.imagenet.config import DIT_MODEL, PAPER_NEURONS, PaperConfig, VIT_MODEL
from equidiff.worlds.imagenet.fid import inception_features, inception_fid, inception_statistics, load_inception
from equidiff.worlds.imagenet.images import load_query_images, predict_classes, strongest_query
from equidiff.worlds.imagenet.loaders import (
    AutocastPrior, DIT_PARTS, ImageNetInput, ModelNotFoundError, autocast_objective, disable_inplace,
    load_classifier, load_latent_prior, load_vit, paper_neuron_layer, paper_neuron_objective, prior_image_size
)
from equidiff.worlds import load_world
from equidiff.worlds.imagenet.models import load_paper_models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_paper")
    cfg = write_tiny_models(folder, legacy_dit_config=True)  # transformer saved as the Hub's Transformer2DModel
    return folder, cfg


@pytest.fixture(scope="module")
def models(tiny):
    return load_paper_models(tiny[1])


def _fake_hub_cache(cache, repo_id, files: dict):
    """A Hugging Face hub cache holding one snapshot of ``repo_id`` (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for rel, src in files.items():
        dst = snap / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


# ---------------------------------------------------------------- the latent prior end to end


def test_latent_prior_loads_and_gradients_reach_z(tiny, models):
    prior = models.prior
    # the legacy Transformer2DModel config (as facebook/DiT-XL-2-256 ships it) became a DiT
    assert isinstance(prior.transformer, DiTTransformer2DModel)
    assert prior.class_label == prior.null_class == 10  # unconditional through the null class
    assert prior.num_steps == 3 and prior.checkpointing  # gradient checkpointing on by default
    assert prior_image_size(prior) == 16
    z = prior.sample_latents(2, torch.Generator().manual_seed(0)).requires_grad_(True)  # (2, 4, 4, 4)
    x = prior(z)  # (2, 3, 16, 16)
    assert x.shape == (2, 3, 16, 16)
    objective = models.neuron_objective(3)
    m = objective(x)  # (2, 4): the 2×2 pre-ReLU map of channel 3 at 64 px
    assert m.shape == (2, 4)
    m.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # no gradients accumulate on the frozen models
    assert all(p.grad is None for p in prior.transformer.parameters())
    assert all(p.grad is None for p in models.classifier.parameters())


def test_algorithm1_moves_z_and_lowers_the_loss(models):
    prior = models.prior
    with torch.no_grad():
        query = prior(prior.sample_latents(1, torch.Generator().manual_seed(9)))  # (1, 3, 16, 16)
    objective = models.neuron_objective(3)
    res = models.find_invariants(objective, query, InvariantConfig(n_samples=3, steps=6, tau=1e-12, lr=0.2))
    assert res.x.shape == (3, 3, 16, 16) and res.measurements.shape == (3, 4)
    assert not torch.equal(res.z, res.z_init)  # the optimiser moved z_T
    assert res.history["loss_mean"][-1] < res.history["loss_mean"][0]


def test_batched_equals_one_batch(models):
    prior = models.prior
    with torch.no_grad():
        query = prior(prior.sample_latents(1, torch.Generator().manual_seed(5)))
    objective = models.neuron_objective(17)
    cfg = InvariantConfig(n_samples=5, steps=3, tau=1e-12, lr=0.1, seed=4)
    one = find_invariants(objective, query, prior, cfg)
    parts = find_invariants_batched(objective, query, prior, cfg, batch_size=2)  # batches of 2, 2, 1
    torch.testing.assert_close(parts.z_init, one.z_init, rtol=0, atol=0)  # the same draw from the seed
    torch.testing.assert_close(parts.z, one.z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts.loss, one.loss, rtol=1e-4, atol=1e-6)
    assert parts.history["n_active"] == one.history["n_active"]
    np.testing.assert_allclose(parts.history["loss_mean"], one.history["loss_mean"], rtol=1e-4)
    assert parts.config is cfg
    with pytest.raises(ValueError, match="batch_size must be None or ≥ n_samples"):
        find_invariants_batched(objective, query, prior, InvariantConfig(n_samples=4, repulsion=1.0), 2)


def test_bf16_autocast_prior_and_objective(models):
    prior = models.prior
    fast = AutocastPrior(prior)
    assert fast.num_steps == prior.num_steps  # attributes pass through
    z = prior.sample_latents(2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = prior(z)
    zg = z.clone().requires_grad_(True)
    x = fast(zg)
    assert x.dtype == torch.float32
    assert (x.detach() - ref).abs().max() < 0.25  # bf16 has ~3 significant digits
    assert (x.detach() - ref).abs().max() > 0  # and it really ran in bf16
    obj = autocast_objective(models.neuron_objective(3))
    m = obj(x)
    assert m.dtype == torch.float32 and "[bf16]" in obj.description
    m.sum().backward()
    assert torch.isfinite(zg.grad).all() and zg.grad.abs().sum() > 0


def test_prior_and_classifier_from_hf_cache(tiny, tmp_path):
    folder, cfg = tiny
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, DIT_MODEL, {p: folder / "dit" / p for p in DIT_PARTS})
    _fake_hub_cache(cache, "timm/resnet50.a1_in1k", {"model.safetensors": folder / "resnet50.safetensors"})
    prior = load_latent_prior(cache_dir=cache, num_steps=2)
    assert prior.num_steps == 2 and prior.latent_shape == (4, 4, 4)
    clf = load_classifier(cache_dir=cache, model_kwargs=TINY_CLASSIFIER_KWARGS, input_size=64)
    assert isinstance(clf, ImageNetInput) and clf.input_size == 64
    direct = load_classifier(path=folder / "resnet50.safetensors", model_kwargs=TINY_CLASSIFIER_KWARGS)
    for a, b in zip(clf.parameters(), direct.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- missing weights


def test_missing_dit_names_model_places_and_command(tmp_path):
    empty = tmp_path / "empty_cache"
    with pytest.raises(ModelNotFoundError) as err:
        load_latent_prior(cache_dir=empty)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "'facebook/DiT-XL-2-256'" in msg  # the model
    assert str(empty) in msg and "Hugging Face cache" in msg  # where it looked
    command = f"hf download facebook/DiT-XL-2-256 transformer/ vae/ scheduler/ --cache-dir {empty}"
    assert command in msg  # the command
    assert "allow_download=True" in msg
    assert err.value.command == command

    partial = tmp_path / "dit"
    (partial / "transformer").mkdir(parents=True)
    (partial / "transformer" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError) as err:
        load_latent_prior(folder=partial)
    msg = str(err.value)
    assert str(partial) in msg and "missing vae/config.json, scheduler/scheduler_config.json" in msg
    assert "transformer/config.json" not in msg.split("missing")[1]
    assert f"hf download facebook/DiT-XL-2-256 transformer/ vae/ scheduler/ --local-dir {partial}" in msg


def test_missing_classifier_names_model_places_and_command(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        load_classifier(cache_dir=tmp_path)
    msg = str(err.value)
    assert "'resnet50.a1_in1k'" in msg and str(tmp_path) in msg
    assert f"hf download timm/resnet50.a1_in1k model.safetensors --cache-dir {tmp_path}" in msg
    missing = tmp_path / "weights" / "r50.safetensors"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_classifier(path=missing)
    assert f"--local-dir {missing.parent}" in str(err.value)


def test_weights_for_another_architecture_are_refused(tiny):
    folder, _ = tiny
    with pytest.raises(ValueError, match="does not fit timm model 'resnet50.a1_in1k'"):
        load_classifier(path=folder / "resnet50.safetensors")  # tiny weights, full-size resnet50
    with pytest.raises(ValueError, match=r"model_kwargs\['num_classes'\] must be left out or 1000"):
        load_classifier(path=folder / "resnet50.safetensors", model_kwargs={"num_classes": 10})


def test_vit_loads_from_file_and_hf_cache(tiny, tmp_path):
    folder, cfg = tiny
    vit = load_vit(path=folder / "vit.safetensors", model_kwargs=TINY_VIT_KWARGS, input_size=32)
    assert isinstance(vit, ImageNetInput) and vit.input_size == 32 and len(vit.model.blocks) == 2
    assert torch.allclose(vit.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))  # CLIP's, from timm
    assert not any(p.requires_grad for p in vit.parameters())
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "timm/" + VIT_MODEL, {"model.safetensors": folder / "vit.safetensors"})
    cached = load_vit(cache_dir=cache, model_kwargs=TINY_VIT_KWARGS, input_size=32)
    for a, b in zip(vit.parameters(), cached.parameters()):
        assert torch.equal(a, b)
    x = torch.rand(2, 3, 16, 16) * 2 - 1  # the prior's [-1, 1] images, resized to 32 and CLIP-normalised
    assert torch.allclose(vit(x), vit.model(vit.preprocess(x)))
    with pytest.raises(ValueError, match="vit_model must be a timm VisionTransformer"):
        load_vit("resnet50.a1_in1k", folder / "resnet50.safetensors", model_kwargs=TINY_CLASSIFIER_KWARGS)


def test_missing_vit_names_model_places_and_command(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        load_vit(cache_dir=tmp_path)
    msg = str(err.value)
    assert "'vit_base_patch32_clip_224.datacompxl'" in msg and str(tmp_path) in msg
    assert f"hf download timm/vit_base_patch32_clip_224.datacompxl model.safetensors --cache-dir {tmp_path}" in msg


# ---------------------------------------------------------------- normalisation and neurons


class _Record(torch.nn.Module):
    pretrained_cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input_size": (3, 8, 8),
                      "interpolation": "bilinear"}

    def forward(self, x):
        self.seen = x
        return x.flatten(1)[:, :2]


def test_normalisation_between_sampler_and_classifier():
    rec = _Record()
    wrap = ImageNetInput(rec)
    mean = torch.tensor(_Record.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(_Record.pretrained_cfg["std"]).view(1, 3, 1, 1)
    # -1 (black) -> 0 and +1 (white) -> 1, then (x - mean) / std, channel by channel
    x = torch.cat([-torch.ones(1, 3, 8, 8), torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)])
    wrap(x)
    torch.testing.assert_close(rec.seen[0], (-mean / std)[0].expand(3, 8, 8))
    torch.testing.assert_close(rec.seen[1], ((1 - mean) / std)[0].expand(3, 8, 8))
    torch.testing.assert_close(rec.seen[2], ((0.5 - mean) / std)[0].expand(3, 8, 8))
    # a 16 px image is resized to the classifier's 8 px input; constants stay constant
    wrap(torch.full((1, 3, 16, 16), 0.2))
    assert rec.seen.shape == (1, 3, 8, 8)
    torch.testing.assert_close(rec.seen, ((0.6 - mean) / std).expand(1, 3, 8, 8))
    # and the resize is the differentiable antialiased interpolation, not a crop
    y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    wrap(y)
    want = torch.nn.functional.interpolate((y + 1) / 2, size=(8, 8), mode="bilinear", antialias=True)
    torch.testing.assert_close(rec.seen, (want - mean) / std)
    with pytest.raises(ValueError, match="input_size must be None or an integer ≥ 1"):
        ImageNetInput(rec, input_size=0)


def test_normalisation_on_a_timm_classifier(models):
    clf = models.classifier  # ImageNetInput over the tiny resnet50, input 64 px
    net = clf.model
    cfg = net.pretrained_cfg
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(clf(x), net(((x + 1) / 2 - mean) / std))


def test_paper_neurons_are_read_before_the_final_relu(models):
    clf = models.classifier
    assert paper_neuron_layer(clf) == ("model.layer4.0.act3", "input")
    assert paper_neuron_layer(clf.model) == ("layer4.0.act3", "input")
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        pre = torch.stack([paper_neuron_objective(clf, c)(x) for c in range(32)], 1)  # (4, 32, 4)
        feats = clf.model.forward_features(clf.preprocess(x))  # (4, 32, 2, 2) the stage's output
    assert (pre < 0).any(), "pre-ReLU values must include negatives"
    # ReLU of the pre-activation maps is exactly the stage's output, channel by channel
    torch.testing.assert_close(torch.relu(pre), feats.flatten(2))
    c = int((pre < 0).flatten(1, 2).any(0).nonzero()[0])  # a channel with negative values
    # why load_classifier turns in-place activations off: timm's in-place ReLU overwrites its input,
    # so a hook reading its input would see post-ReLU values; neuron_map refuses such a layer
    stock = timm.create_model("resnet50", pretrained=False, **TINY_CLASSIFIER_KWARGS).eval()
    stock.load_state_dict(clf.model.state_dict())
    assert stock.layer4[0].act3.inplace
    with pytest.raises(ValueError, match=r"'layer4.0.act3' is an in-place ReLU \(inplace=True\)"):
        neuron_map(stock, "layer4.0.act3", c, read="input")
    assert (neuron_map(stock, "layer4.0.act3", c, read="output")(clf.preprocess(x)) >= 0).all()
    obj = paper_neuron_objective(stock, c)  # the objective factory switches it off
    assert not stock.layer4[0].act3.inplace
    torch.testing.assert_close(obj(clf.preprocess(x)), pre[:, c])
    with pytest.raises(ValueError, match=r"channel must be an integer in \[0, 31\]"):
        paper_neuron_objective(clf, 1656)  # the tiny stage has 32 channels


def test_paper_neurons_on_full_size_resnet50():
    net = timm.create_model("resnet50", pretrained=False).eval()  # random weights: shapes only
    assert paper_neuron_layer(net) == ("layer4.2.act3", "input")
    wrap = ImageNetInput(disable_inplace(net))  # input 224 from the pretrained config
    assert wrap.input_size == 224
    for channel in PAPER_NEURONS:  # 1656, 1052, 421
        obj = paper_neuron_objective(wrap, channel)
        assert f"neuron {channel}" in obj.description and "pre-activation" in obj.description
    with torch.no_grad():
        m = paper_neuron_objective(wrap, 1656)(torch.zeros(1, 3, 256, 256))
    assert m.shape == (1, 49)  # Figure 4.1: "49 logits in target neuron" (7×7 at 224 px)


# ---------------------------------------------------------------- query images


def test_query_images_resized_cropped_in_range(tmp_path):
    img = np.zeros((20, 40, 3), dtype=np.uint8)  # H 20, W 40: left half red, right half blue
    img[:, :20, 0] = 255
    img[:, 20:, 2] = 255
    Image.fromarray(img).save(tmp_path / "b_wide.png")
    Image.fromarray(np.full((30, 30, 3), 128, dtype=np.uint8)).save(tmp_path / "a_grey.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    x, files = load_query_images(tmp_path, size=16)
    assert [f.name for f in files] == ["a_grey.jpg", "b_wide.png"]  # sorted, .txt ignored
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert abs(float(x[0].mean()) - (128 / 255 * 2 - 1)) < 0.02  # grey stays mid-grey
    wide = x[1]  # shorter side 20 -> 16, width 40 -> 32, centre crop 16 of 32: 8 red | 8 blue columns
    assert (wide[0, :, :7] > 0.9).all() and (wide[2, :, :7] < -0.9).all()
    assert (wide[2, :, 9:] > 0.9).all() and (wide[0, :, 9:] < -0.9).all()
    one, _ = load_query_images([tmp_path / "b_wide.png"], size=16)
    torch.testing.assert_close(one[0], wide)
    # crop_pct < 1: resized to 16 / 0.5 = 32 first, then the centre 16×16 (all red/blue halves of the middle)
    zoom, _ = load_query_images([tmp_path / "b_wide.png"], size=16, crop_pct=0.5)
    assert zoom.shape == (1, 3, 16, 16)


def test_query_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images in folder"):
        load_query_images(tmp_path)
    missing = tmp_path / "zebra.jpg"
    with pytest.raises(FileNotFoundError, match=f"not found: {missing}"):
        load_query_images([missing])
    bad = tmp_path / "broken.png"
    bad.write_text("this is not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_query_images([bad])
    with pytest.raises(ValueError, match="size must be an integer ≥ 8"):
        load_query_images([bad], size=4)
    with pytest.raises(ValueError, match=r"crop_pct must be a number in \(0, 1\]"):
        load_query_images([bad], crop_pct=1.5)
    with pytest.raises(ValueError, match="non-empty list"):
        load_query_images([])


def test_strongest_query_picks_the_top_image(models):
    obj = models.neuron_objective(3)
    imgs = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    idx, means = strongest_query(obj, imgs, batch_size=2)
    assert means.shape == (5,) and idx == int(obj(imgs).mean(1).argmax())


# ---------------------------------------------------------------- FID


def test_fid_without_inception_weights_says_why(tmp_path):
    x = torch.zeros(3, 3, 16, 16)
    res = inception_fid(x, x, "Table 4.1 FID, neuron #1656", cache_dir=tmp_path)
    assert res.value is None and not res.computed
    assert "inception_v3.tv_in1k" in res.reason and "hf download timm/inception_v3.tv_in1k" in res.reason
    assert str(res).startswith("Table 4.1 FID, neuron #1656: not computed")
    assert res.summary()["value"] is None


def test_fid_code_path_with_a_stand_in_feature_model(tiny, tmp_path):
    folder, _ = tiny
    kw = dict(model="resnet50.a1_in1k", path=folder / "resnet50.safetensors",
              model_kwargs=TINY_CLASSIFIER_KWARGS)  # the same loader as for Inception
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    b = (torch.rand(6, 3, 16, 16, generator=g) * 2 - 1) * 0.3 + 0.5
    same = inception_fid(a, a, "self", **kw)
    diff = inception_fid(a, b, "other", **kw)
    assert same.computed and abs(same.value) < 1e-6
    assert "singular" in same.note  # 6 samples, 128 features: said, not hidden
    assert diff.value > 1e-3 and diff.n_samples == 6 and diff.n_reference == 6
    inc = load_inception(**kw)
    mu, sigma = inception_statistics(inc, b)
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma, n=6)
    from_file = inception_fid(a, tmp_path / "ref.npz", "npz", inception=inc)
    assert from_file.value == pytest.approx(diff.value, rel=1e-6) and from_file.n_reference == 6
    assert not inception_fid(a[:1], b, "one", inception=inc).computed


def test_inception_fid_is_the_one_frechet_distance_with_the_eigh_root(tiny):
    """inception_fid computes core.metrics' Fréchet distance (its eigh trace root, real-valued on the
    singular covariances of few samples), which equals frechet_distance on well-conditioned features."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 10)), rng.normal(size=(300, 10)) * 1.3 + 0.2
    stats = lambda f: (f.mean(0), np.cov(f, rowvar=False))  # noqa: E731
    eigh = frechet_from_statistics(*stats(a), *stats(b), trace_root="eigh")
    assert eigh == pytest.approx(frechet_distance(a, b), rel=1e-9)
    few = rng.normal(size=(5, 50)) * 100  # 5 samples, 50 features: singular covariance
    mu, sigma = stats(few)
    assert abs(frechet_from_statistics(mu, sigma, mu, sigma, trace_root="eigh")) < 1e-6 * np.trace(sigma)
    # the FID of the stand-in feature model is that distance of the features' statistics
    folder, _ = tiny
    inc = load_inception("resnet50.a1_in1k", folder / "resnet50.safetensors", model_kwargs=TINY_CLASSIFIER_KWARGS)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, torch.rand(5, 3, 16, 16, generator=g) * 2 - 1
    want = frechet_from_statistics(*inception_statistics(inc, x), *inception_statistics(inc, y), trace_root="eigh")
    assert inception_fid(x, y, "fid", inception=inc).value == want


@pytest.mark.slow
def test_fid_with_inception_v3_architecture(tmp_path):
    from safetensors.torch import save_file

    net = timm.create_model("inception_v3.tv_in1k", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "model.safetensors"))
    inc = load_inception(path=tmp_path)
    assert inc.input_size == 299
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert inception_features(inc, x).shape == (3, 2048)
    _, sigma = inception_statistics(inc, x)
    assert abs(inception_fid(x, x, "self", inception=inc).value) < 1e-4 * np.trace(sigma)  # random weights: huge features


# ---------------------------------------------------------------- config


def test_paper_config_validation():
    cfg = PaperConfig()
    assert cfg.neurons == (1656, 1052, 421) and cfg.checkpointing and not cfg.allow_download and not cfg.bf16
    assert PaperConfig.from_dict(cfg.to_dict()) == cfg
    for field, value, msg in [
        ("batch_size", 0, "batch_size must be an integer ≥ 1"),
        ("bf16", "yes", "bf16 must be True or False"),
        ("checkpointing", 1, "checkpointing must be True or False"),
        ("allow_download", None, "allow_download must be True or False"),
        ("ddim_steps", 0, "ddim_steps must be an integer ≥ 1"),
        ("neurons", (), "neurons must be a non-empty tuple"),
        ("neurons", (1656, -1), "neurons must be a non-empty tuple"),
        ("device", "gpu0", "device must be 'auto', 'cpu'"),
        ("classifier_input_size", 3, "classifier_input_size must be None or an integer ≥ 8"),
        ("dit_model", "", "dit_model must be a non-empty model name"),
        ("vit_model", " ", "vit_model must be a non-empty model name"),
        ("vit_input_size", 4, "vit_input_size must be None or an integer ≥ 8"),
        ("vit_kwargs", None, "vit_kwargs must be a dict of timm.create_model arguments"),
        ("sae_layer", -1, "sae_layer must be None .* or an integer ≥ 0"),
        ("sae_features", (3, -1), "sae_features must be a tuple of SAE feature indices ≥ 0"),
        ("vit_path", 3, "vit_path must be None or a path"),
    ]:
        with pytest.raises(ValueError, match=msg):
            PaperConfig(**{field: value})
    with pytest.raises(ValueError, match=r"unknown PaperConfig field\(s\) \['batchsize'\]"):
        PaperConfig.from_dict({"batchsize": 4})
    assert cfg.vit_model == VIT_MODEL and cfg.sae_features == () and cfg.sae_layer is None
    assert PaperConfig.from_dict({"sae_features": [6547]}).sae_features == (6547,)  # JSON lists -> tuples


# ---------------------------------------------------------------- the paper World


def _query_folder(root, n=2):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 18 + 4 * i, 3), dtype=np.uint8)).save(root / f"q{i}.png")
    return root


def test_paper_world_loads_each_model_on_first_use(tiny, tmp_path):
    folder, cfg = tiny
    queries = _query_folder(tmp_path / "query")
    fields = {**cfg.to_dict(), "cache_dir": str(tmp_path / "empty_hub")}
    gone = tmp_path / "gone"
    # ResNet-50 and the DiT are missing: loading the world reads neither, the ViT still loads (the SAE chapter)
    w = load_world("paper", paper_config={**fields, "classifier_path": str(gone / "r50.safetensors"),
                                          "dit_path": str(gone / "dit")}, query_images=str(queries))
    assert w.images.shape == (2, 3, 16, 16) and not w.has("labels") and w.labels is None
    assert [f.name for f in w.image_files] == ["q0.png", "q1.png"] and w.record["query_images"][1].endswith("q1.png")
    assert w.record["paper_config"]["sae_path"] == cfg.sae_path and w.batch_size == cfg.batch_size
    assert w.objective_wrapper is None  # float32: objectives as built
    assert isinstance(w.part("vit"), ImageNetInput)
    vs = w.part("sae")  # the SAE of sae_path on the ViT's block 1 (its cfg.json), the ViT loaded once
    assert vs.vit is w.part("vit") and vs.layer == 1 and vs.sae.d_sae == 64 and vs.record["classifier"] is None
    with pytest.raises(ValueError, match="layer is a parameter of the digits worlds"):
        w.part("sae", layer=2)
    assert not w.has("vit_classes") and not w.has("judge")
    assert "World('paper'" in repr(w)  # the repr reads no model
    with pytest.raises(ModelNotFoundError) as err:
        w.classifier  # noqa: B018: the first read loads it, and says what is missing
    assert "'resnet50.a1_in1k'" in str(err.value) and f"{gone / 'r50.safetensors'} (the path given" in str(err.value)
    assert f"--local-dir {gone}" in err.value.command
    with pytest.raises(ModelNotFoundError, match="'facebook/DiT-XL-2-256' was not found"):
        w.make_prior(cfg.ddim_steps)
    with pytest.raises(ModelNotFoundError):
        w.neuron_layer  # noqa: B018: read from the classifier
    # every model present: each is loaded once and kept
    w = load_world("paper", paper_config=fields, query_images=str(queries))
    assert w.classifier is w.classifier and w.neuron_layer == "model.layer4.0.act3" and w.neuron_read == "input"
    prior = w.make_prior(cfg.ddim_steps)
    assert prior is w.make_prior() and prior.num_steps == cfg.ddim_steps
    # another T: the same transformer and VAE in a chain of 2 steps, as if loaded with num_steps=2
    two = w.make_prior(2, checkpointing=False, clamp=True)  # checkpointing and clamp stay the config's
    assert two is w.make_prior(2) and two.num_steps == 2 and two.transformer is prior.transformer
    assert two.checkpointing and not two.clamp
    z = prior.sample_latents(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(two(z), load_latent_prior(folder=folder / "dit", num_steps=2)(z), rtol=0, atol=0)
    with pytest.raises(ValueError, match="ddim_steps must be an integer ≥ 1"):
        w.make_prior(0)
    fast = load_world("paper", paper_config=fields, query_images=str(queries), bf16=True)
    assert isinstance(fast.make_prior(2), AutocastPrior) and fast.make_prior(2).num_steps == 2
    assert "[bf16]" in fast.wrap_objective(paper_neuron_objective(fast.classifier, 3)).description
    predicted = predict_classes(w.classifier, w.images, cfg.batch_size)  # (N,) the class standing in for labels
    assert predicted.shape == (2,) and int(predicted.max()) < 1000
    res = w.fid(w.images, w.images, "Table 4.1 FID")  # no Inception weights in the empty hub: None, and why
    assert res.value is None and "hf download timm/inception_v3.tv_in1k" in res.reason
    assert w.known_units[3] == ("channel 3", None) and sorted(w.known_units) == [3, 17, 30]
    with pytest.raises(ValueError, match="query_images must be a folder of images"):
        load_world("paper", paper_config=fields)
    with pytest.raises(ValueError, match="cache_dir is not a parameter of the 'paper' world"):
        load_world("paper", paper_config=fields, query_images=str(queries), cache_dir="data/cache")
    with pytest.raises(ValueError, match="sae_path: PaperConfig.sae_path must name a folder"):
        load_world("paper", paper_config={**fields, "sae_path": None}, query_images=str(queries)).part("sae")


def test_load_paper_models_takes_another_backbone(tiny):
    _, cfg = tiny
    from equidiff.core.priors import IdentityPrior

    other = IdentityPrior((3, 16, 16))  # any object with the Prior protocol (e.g. a LightningDiT wrapper)
    m = load_paper_models(cfg, prior=other)
    assert m.prior is other and m.sae is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_world_on_gpu_in_bf16(tiny):
    _, cfg = tiny
    c = PaperConfig.from_dict({**cfg.to_dict(), "device": "cuda", "bf16": True})
    m = load_paper_models(c)
    assert m.device.type == "cuda"
    with torch.no_grad():
        q = m.prior(m.prior.sample_latents(1, torch.Generator().manual_seed(0)))
    res = m.find_invariants(m.neuron_objective(3), q, InvariantConfig(n_samples=4, steps=3, tau=1e-12))
    assert res.x.is_cuda and torch.isfinite(res.loss).all()


# ---------------------------------------------------------------- the GPU benchmark script


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_gpu_tiny_code_path(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = _bench().main(["--tiny", "--ddim-steps-list", "2", "3", "--opt-steps", "2", "--batch-size", "2",
                        "--converge-budget", "2", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "s/step" in printed and "peak MiB" in printed and "s/converged sample" in printed
    res = json.loads(out.read_text())
    assert [r["T"] for r in res["rows"]] == [2, 3]
    assert all(r["seconds_per_step"] > 0 for r in res["rows"])
    assert all(r["convergence"]["budget"] == 2 and r["convergence"]["n"] == 2 for r in res["rows"])
    assert res["info"]["checkpointing"] is True and res["info"]["weights"] == "tiny random"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_bench_gpu_without_gpu_says_so_and_exits_0(capsys):
    assert _bench().main([]) == 0
    assert "No CUDA GPU is available here: nothing was measured" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_gpu_tiny_on_gpu_reports_memory(tmp_path):
    out = tmp_path / "bench.json"
    assert _bench().main(["--tiny", "--bf16", "--ddim-steps-list", "2", "--opt-steps", "2", "--batch-size", "2",
                          "--converge-budget", "2", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["peak_gpu_mib"] is not None and row["peak_gpu_mib"] > 0
