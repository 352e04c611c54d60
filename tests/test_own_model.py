"""Your own classifier: equidiff.core.wrap (wrap_model, layer_channel) and the ccexam chapter's library.

The wrapped ccexam model must give ccexam's own logits on inputs converted by hand, keep its accuracy on
the digits world's test split, and refuse every wrong convention with a ValueError naming the parameter
before Algorithm 1 takes a step. A tiny random MNISTNet-like model with in-place ReLUs checks that a
channel is read before its activation and that no hook or flag is left behind.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from equidiff import InvariantConfig, class_probability, find_invariants, layer_channel, logits, wrap_model
from equidiff.chapters import own_model as om
from equidiff.core.filters import DEFAULT_CUTOFFS, lowpass
from equidiff.core.objectives import neuron_map, probabilities
from equidiff.core.priors import IdentityPrior
from equidiff.core.wrap import RANGE_SHARE, inplace_off
from equidiff.worlds.digits.data import load_digits16

MEAN, STD = 0.1307, 0.3081


@pytest.fixture(scope="module")
def ccexam():
    net, info = om.load_ccexam()
    return net, info


@pytest.fixture(scope="module")
def test_split():
    return load_digits16("test")


class TinyNet(nn.Module):
    """MNISTNet's layout (two conv + ReLU + pool blocks, a two-layer head), random, with in-place ReLUs and a BatchNorm."""

    def __init__(self, size: int = 28, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(6 * (size // 4) ** 2, 8), nn.ReLU(inplace=True), nn.Linear(8, 10))
        self.size = size

    def forward(self, x):
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"Input size mismatch. Expected ({self.size}, {self.size}), got {tuple(x.shape[-2:])}")
        return self.classifier(self.features(x).flatten(1))


def _wrap(net, **kw):
    args = dict(input_size=28, value_range=(0, 1), mean=MEAN, std=STD, source_size=16, resize="pad", pad=2,
                interpolation="bicubic", name="net")
    return wrap_model(net, **{**args, **kw})


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --------------------------------------------------------------------------------------------
# The real model: ccexam's MNISTNet
# --------------------------------------------------------------------------------------------


def test_ccexam_loads_on_the_cpu_in_eval_mode_with_its_record(ccexam):
    net, info = ccexam
    assert not net.training and all(p.device.type == "cpu" and not p.requires_grad for p in net.parameters())
    assert info["class"] == "ccexam.models.MNISTNet" and info["version"] == "1.0.0" and len(info["sha256"]) == 64
    assert om.ccexam_layers() == {"features.0": 32, "features.3": 64}


def test_the_wrapper_gives_ccexam_its_own_logits_on_inputs_converted_by_hand(ccexam, test_split):
    net, _ = ccexam
    x = test_split[0][:64]  # (64, 1, 16, 16) in [-1, 1]
    for fit, interp in (("pad", "bicubic"), ("pad", "bilinear"), ("stretch", "bilinear")):
        w = om.wrap_ccexam(net, fit, interp, (16, 16))
        u = (x + 1) / 2  # [0, 1]
        if fit == "pad":
            u = F.pad(F.interpolate(u, size=(24, 24), mode=interp, align_corners=False), (2, 2, 2, 2), value=0.0)
        else:
            u = F.interpolate(u, size=(28, 28), mode=interp, align_corners=False)
        with torch.no_grad():
            want = net((u - MEAN) / STD)
            got = w(x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert not torch.equal(want, net((F.interpolate((x + 1) / 2, size=(28, 28)) - MEAN) / STD))  # the fit matters


def test_ccexam_keeps_its_accuracy_on_the_converted_test_split(ccexam, test_split):
    # measured here (1,000 test digits): pad 0.978 bilinear / 0.984 bicubic, stretch 0.958 / 0.965
    acc = om.conversion_accuracy(ccexam[0], *test_split)
    assert acc["pad"]["bicubic"] >= 0.97 and acc["pad"]["bilinear"] >= 0.96, acc
    assert acc["stretch"]["bicubic"] >= 0.95 and acc["stretch"]["bilinear"] >= 0.94, acc
    assert acc["pad"]["bicubic"] > acc["stretch"]["bicubic"], acc  # why the chapter pads by default


def test_the_range_check_lets_the_low_pass_term_through(ccexam, test_split):
    # Algorithm 1's filtered term measures the ideal low-pass of in-range images, which rings past [-1, 1]
    w = om.wrap_ccexam(ccexam[0], "pad", "bicubic", (16, 16))
    with torch.no_grad():
        for c in DEFAULT_CUTOFFS:
            w(lowpass(test_split[0], c))


# --------------------------------------------------------------------------------------------
# Wrong conventions: a ValueError naming the parameter, before any optimisation
# --------------------------------------------------------------------------------------------


class CountingPrior(IdentityPrior):
    """IdentityPrior that counts its calls: a refused run never decodes a latent."""

    calls = 0

    def __call__(self, z):
        CountingPrior.calls += 1
        return super().__call__(z)


def _refused_before_any_step(objective, query, match):
    CountingPrior.calls = 0
    steps = []
    with pytest.raises(ValueError, match=match):
        find_invariants(objective, query, CountingPrior(tuple(query.shape[1:])),
                        InvariantConfig(n_samples=2, steps=3), on_step=steps.append)
    assert CountingPrior.calls == 0 and not steps


@pytest.mark.parametrize("kw, match", [
    (dict(input_size=24), r"^input_size \(24, 24\) and channels 1 must give inputs the model net takes: it rejects a "
                          r"dummy batch of shape \(2, 1, 24, 24\) .*Input size mismatch"),
    (dict(channels=3), r"^input_size \(28, 28\) and channels 3 must give .*shape \(2, 3, 28, 28\).*RuntimeError"),
    (dict(resize="crop"), r"^resize must be one of \('stretch', 'pad', 'none'\), got 'crop'$"),
    (dict(resize="stretch"), r"^pad must be None unless resize='pad'"),
    (dict(pad=14), r"^pad must be an integer ≥ 1 below 14"),
    (dict(resize="none"), r"^pad must be None unless"),
    (dict(resize="none", pad=None), r"^resize must be 'stretch' or 'pad' when source_size \(16, 16\) differs"),
    (dict(std=0), r"^std must be a finite number > 0, or a list of 1 of them"),
    (dict(mean=[0.1, 0.2]), r"^mean must be a finite number, or a list of 1 of them"),
    (dict(value_range=(1, 0)), r"^value_range must be a pair \(lo, hi\) of finite numbers with lo < hi, got \(1, 0\)$"),
    (dict(source_range=(-1, float("nan"))), r"^source_range must be a pair"),
    (dict(source_channels=2), r"^source_channels must be None, 1 \(repeated to the model's 1\) or 1"),
    (dict(interpolation="area"), r"^interpolation must be one of \('bilinear', 'bicubic', 'nearest'\)"),
    (dict(input_size=0), r"^input_size must be an integer ≥ 1"),
    (dict(name=""), r"^name must be None or a non-empty string"),
])
def test_a_bad_convention_is_refused_when_wrapping(ccexam, kw, match):
    with pytest.raises(ValueError, match=match):
        _wrap(ccexam[0], **kw)


def test_a_module_in_training_mode_is_refused_before_it_runs():
    net = TinyNet().train()
    stats = net.features[4].running_mean.clone()
    with pytest.raises(ValueError, match=r"^module net given to wrap_model is in training mode .*call model\.eval\(\)"):
        _wrap(net)
    assert torch.equal(net.features[4].running_mean, stats) and net.training  # nothing ran, nothing changed
    w = _wrap(net.eval())
    net.train()  # switched back after wrapping: the objectives refuse it, as they refuse any model in train mode
    with pytest.raises(ValueError, match="is in training mode"):
        class_probability(w, 0)


def test_not_a_module_or_a_model_that_returns_no_tensor():
    with pytest.raises(ValueError, match=r"^module must be a torch.nn.Module"):
        wrap_model(lambda x: x)

    class Pair(TinyNet):
        def forward(self, x):
            return super().forward(x), x

    with pytest.raises(ValueError, match=r"^module must be a model that returns a tensor .*it returned tuple"):
        _wrap(Pair().eval())


def test_images_in_another_range_are_refused_at_the_query(ccexam, test_split):
    w = _wrap(ccexam[0], source_range=(0, 1))  # the digits are in [-1, 1]
    q = test_split[0][:1]
    pct = r"\d+%"
    _refused_before_any_step(class_probability(w, 0), q,
                             rf"^source_range must be the range of the images given: {pct} of the values of image 0 lie "
                             r"outside \[-0\.25, 1\.25\] .*got \(0\.0, 1\.0\)$")
    _refused_before_any_step(class_probability(_wrap(ccexam[0]), 0), q * 255, r"^source_range must be the range")
    assert RANGE_SHARE < 0.5


def test_images_of_another_size_or_channels_are_refused_at_the_query(ccexam, test_split):
    w = _wrap(ccexam[0])
    q = test_split[0][:1]
    _refused_before_any_step(class_probability(w, 0), F.interpolate(q, size=(20, 20)),
                             r"^source_size must be the size of the images given, \(20, 20\)")
    _refused_before_any_step(class_probability(w, 0), q.expand(1, 3, 16, 16).contiguous(),
                             r"^source_channels must be the channels of the images given \(3")
    # without source_size any size is resampled; three channels to a grey model stay refused
    with torch.no_grad():
        assert _wrap(ccexam[0], source_size=None)(F.interpolate(q, size=(20, 20))).shape == (1, 10)


def test_an_unknown_layer_or_a_channel_past_the_layer_is_refused_before_any_step(ccexam, test_split):
    w = _wrap(ccexam[0])
    with pytest.raises(ValueError, match=r"^layer must be one of the layers of net: 'features', 'features\.0', "
                                         r".*'classifier\.2', got 'conv1'$"):
        layer_channel(w, "conv1", 0)
    with pytest.raises(ValueError, match=re.escape("channel must be an integer in [0, 63] (the output of layer "
                                                   "'features.3' of net has 64 channels, shape (64, 14, 14)), got 64")):
        layer_channel(w, "features.3", 64)
    with pytest.raises(ValueError, match=r"^channel must be an integer in \[0, 31\].*got -1$"):
        layer_channel(w, "features.0", -1)
    with pytest.raises(ValueError, match=r"^reduce must be 'mean'"):
        layer_channel(w, "features.0", 0, reduce="max")
    with pytest.raises(ValueError, match=r"^wrapped must be a WrappedModel"):
        layer_channel(ccexam[0], "features.0", 0)
    assert _hooks(ccexam[0]) == 0


# --------------------------------------------------------------------------------------------
# A tiny random model: objectives, pre-activation reads, hooks and flags
# --------------------------------------------------------------------------------------------


def test_a_tiny_model_works_with_every_objective_factory(test_split):
    net = TinyNet().eval()
    w = _wrap(net)
    x = test_split[0][:5]
    for obj, m in ((logits(w), 10), (probabilities(w), 10), (class_probability(w, 3), 1),
                   (layer_channel(w, "features.3", 2), 1), (layer_channel(w, "features.0", 1, reduce="map"), 28 * 28),
                   (layer_channel(w, "features.1", 1, read="input"), 1)):
        out = obj(x)
        assert out.shape == (5, m) and torch.isfinite(out).all(), obj.description
    assert "channel 2 of net.features.3 (mean)" == layer_channel(w, "features.3", 2).description


def test_a_channel_is_read_before_the_in_place_relu_that_follows_it(test_split):
    net = TinyNet().eval()
    w = _wrap(net)
    x = test_split[0][:4]
    with torch.no_grad():
        conv = net.features[0](w.convert(x))[:, 1]  # (4, 28, 28): the conv's output, computed on its own
        got = layer_channel(w, "features.0", 1, reduce="map")(x)
        before_relu = layer_channel(w, "features.1", 1, reduce="map", read="input")(x)
        raw = neuron_map(net, "features.0", 1)(w.convert(x))  # the same hook on the bare model
    assert (conv < 0).any()  # a test that can fail: the channel has negative pre-activations
    torch.testing.assert_close(got, conv.flatten(1))
    torch.testing.assert_close(before_relu, conv.flatten(1))
    assert (raw >= 0).all()  # unwrapped, the in-place ReLU overwrote what the hook captured
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))  # flags restored


def test_flags_are_restored_after_an_error_and_inplace_off_reports_them():
    net = TinyNet().eval()
    with pytest.raises(RuntimeError):
        with inplace_off(net) as names:
            assert names == ["features.1", "features.5", "classifier.1"]
            assert not any(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
            raise RuntimeError("boom")
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))


def test_sampling_a_channel_of_a_tiny_model_lowers_the_loss_and_leaves_no_hook(test_split):
    net = TinyNet().eval()
    w = _wrap(net)
    q = test_split[0][:1]
    obj = layer_channel(w, "features.3", 2)
    cfg = InvariantConfig(n_samples=4, steps=25, tau=1e-6, lr=0.05, lowpass_cutoff=0.5, seed=0)
    states = []
    res = find_invariants(obj, q, IdentityPrior((1, 16, 16), init="uniform"), cfg, on_step=states.append)
    assert states[-1].loss.mean() < states[0].loss.mean()
    assert res.x.shape == (4, 1, 16, 16) and _hooks(net) == 0 and _hooks(w) == 0
    with pytest.raises(ValueError):  # an error inside the objective's forward: the hook is still removed
        obj(q * 255)
    assert _hooks(net) == 0


# --------------------------------------------------------------------------------------------
# The chapter's library
# --------------------------------------------------------------------------------------------


def test_check_parameters_knows_the_layers_and_their_channels():
    from equidiff.report.record import notebook_defaults

    p = notebook_defaults(om.NOTEBOOK)
    om.check_parameters(p)
    om.check_parameters({**p, "layer": "features.0", "channel": 31})
    with pytest.raises(ValueError, match=r"^channel must be None or an integer in \[0, 31\]"):
        om.check_parameters({**p, "layer": "features.0", "channel": 32})
    with pytest.raises(ValueError, match=r"^layer must be one of \('features\.0', 'features\.3'\)"):
        om.check_parameters({**p, "layer": "features.1"})


def test_the_class_log_probability_has_the_level_sets_of_the_probability(ccexam, test_split):
    w = om.wrap_ccexam(ccexam[0], "pad", "bicubic", (16, 16))
    x = test_split[0][:50]
    with torch.no_grad():
        lp = om.class_objective(w, 7, "log")(x)[:, 0]
        p = om.class_objective(w, 7, "probability")(x)[:, 0]
    torch.testing.assert_close(lp.exp(), p, rtol=1e-4, atol=1e-6)
    order = torch.argsort(p)
    assert (lp[order].diff() >= -1e-6).all()  # monotone: the same ordering, the same level sets


def test_the_chapter_runs_judges_and_records_on_the_smoke_world(ccexam):
    import json

    from equidiff.chapters.own_model_prose import prose_values
    from equidiff.report.glue import Text
    from equidiff.report.record import to_jsonable
    from equidiff.worlds import load_world

    world = load_world("smoke")
    net = ccexam[0]
    wrapped = om.wrap_ccexam(net, "pad", "bicubic", world.test_images.shape[-2:])
    query = om.load_query(world, wrapped, 3)
    with pytest.raises(ValueError, match=r"^query_index must be an integer in \[0, 999\]"):
        om.load_query(world, wrapped, 1000)
    settings = om.Settings(n_samples=3, steps=2, ddim_steps=2)
    choice = om.pick_channel(world, wrapped, "features.0", query)
    assert choice.picked and 0 <= choice.channel < 32 and choice.spread > 0
    objectives = {"class": om.class_objective(wrapped, query.label, "log"), "channel": om.channel_objective(wrapped, choice)}
    rows = {}
    for k, obj in objectives.items():
        res, start = om.run_members(world, obj, query, settings)
        rows[k] = om.judge_members(world, wrapped, obj, query, res, start)
        r = rows[k]
        assert r["n"] == 3 and sum(r["judge_label_counts"]) == r["n_members"] == int(res.converged.sum())
        assert r["judge_other_unsure_counts"] <= r["judge_other_counts"] <= r["n_members"]
        assert len(r["samples"]["judge_labels"]) == 3 and start.shape == res.x.shape
    acc = om.conversion_accuracy(net, world.test_images[:100], world.test_labels[:100])
    m = om.chapter_metrics(query, choice, rows, acc, settings, fit="pad", interpolation="bicubic", measure="log",
                           reduce="mean", model_info=ccexam[1], n_heldout=len(world.test_images))
    assert set(m["success_rate"]) == set(m["l2"]) == set(m["judge_agreement"]) == {"class", "channel"}
    assert all("samples" not in r for r in m["runs"].values())  # per-sample lists go to members.json
    json.dumps(to_jsonable(m))
    v = prose_values(world, query, choice, rows, acc, settings, fit="pad", interpolation="bicubic", measure="log",
                     conversion=wrapped.convention.describe(), model_name=wrapped.name)
    assert all(isinstance(x, (int, float, Text)) for x in v.values()), {k: type(x) for k, x in v.items()}
    assert v["image_size"] == "16×16" and v["ch_layer"] == "features.0"
