"""Issue 18: objectives never change or misuse the model, and every misuse of the library's
Algorithm 1 (find_invariants, iterate_invariants, find_invariants_batched) stops before the first
step with a ValueError naming the argument — never a raw torch error, never a silent run."""

import pytest
import torch
from torch import nn

from equidiff.core import objectives as O
from equidiff.core.batched import find_invariants_batched
from equidiff.core.invariants import InvariantConfig, find_invariants, iterate_invariants
from equidiff.core.priors import IdentityPrior

CFG = InvariantConfig(n_samples=2, steps=3, tau=1e-12)


def _cnn(n_out=10):
    """A grey-image classifier with BatchNorm (running statistics to protect) and adaptive pooling
    (it accepts any image size, so a wrong-sized query would run on silently)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, n_out))
    net[1].running_mean.normal_(0, 0.5)  # non-trivial statistics, so a change would show
    net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def _query(c=1, size=16, **kw):
    return (torch.rand(1, c, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(**kw)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _never_steps(objective, query, prior, **kw):
    """find_invariants' error before its first step: the generator raises on its first next()."""
    return next(iterate_invariants(objective, query, prior, CFG, **kw))


# ------------------------------------------------------------------------- train mode


@pytest.mark.parametrize("factory", [
    lambda m: O.logits(m, "digits ResNet"), lambda m: O.probabilities(m, "digits ResNet"),
    lambda m: O.class_logit(m, 3, "digits ResNet"), lambda m: O.class_probability(m, 3, "digits ResNet"),
    lambda m: O.neuron_map(m, "0", 1, name="digits ResNet"),
])
def test_objectives_refuse_a_model_in_train_mode_and_leave_it_unchanged(factory):
    net = _cnn()
    before = _state(net)
    net.train()
    with pytest.raises(ValueError, match=r"the model Sequential of objective '.*digits ResNet.*' is in training mode "
                                         r"\(8 module\(s\) in train mode: '\(the model itself\)', '0', '1' and 5 more\);"
                                         r" .*call model\.eval\(\) first"):
        factory(net)
    # built in eval mode, then switched to train mode: refused at the call, before the forward pass
    obj = factory(net.eval())
    net.train()
    with pytest.raises(ValueError, match=r"is in training mode .*call model\.eval\(\) first"):
        obj(_query())
    with pytest.raises(ValueError, match=r"is in training mode .*call model\.eval\(\) first"):
        find_invariants(obj, _query(), IdentityPrior((1, 16, 16)), CFG)
    assert _unchanged(net, before)  # BatchNorm's running statistics and its batch counter untouched
    net.eval()
    assert torch.isfinite(obj(_query())).all()  # the same objective works once the model is in eval mode


def test_one_submodule_in_train_mode_is_refused_by_name_and_combined_objectives_check_too():
    net = _cnn()
    obj = O.class_probability(net, 3, "digits ResNet")
    combined = [O.lowpassed(obj, 0.5), 2.0 * obj, obj + O.logits(net), O.concat(obj)]
    before = _state(net)
    net[1].train()  # only the BatchNorm
    for o in [obj, *combined]:
        with pytest.raises(ValueError, match=r"is in training mode \(1 module\(s\) in train mode: '1'\)"):
            o(_query())
    assert _unchanged(net, before)


def test_a_plain_module_passed_as_the_objective_is_checked_too():
    net = _cnn().train()
    before = _state(net)
    with pytest.raises(ValueError, match=r"model Sequential of objective 'Sequential' is in training mode.*model\.eval\(\)"):
        find_invariants(net, _query(), IdentityPrior((1, 16, 16)), CFG)
    assert _unchanged(net, before)


def test_sae_objectives_refuse_a_vit_or_an_sae_in_train_mode():
    timm = pytest.importorskip("timm")
    from equidiff.sae import SparseAutoencoder, sae_code, sae_feature

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, in_chans=1,
                            embed_dim=16, depth=2, num_heads=2, num_classes=10)
    sae = SparseAutoencoder(16, 32)
    before_vit, before_sae = _state(vit), _state(sae)
    for make in (lambda: sae_feature(vit, 1, sae, 3, name="digits ViT"), lambda: sae_code(vit, 1, sae, name="digits ViT")):
        vit.train(), sae.eval()
        with pytest.raises(ValueError, match=r"the model VisionTransformer of objective '(full )?SAE .*digits ViT.*' is in "
                                             r"training mode .*model\.eval\(\)"):
            make()
        vit.eval(), sae.train()
        with pytest.raises(ValueError, match=r"the network SparseAutoencoder of objective '(full )?SAE .*' is in training mode"):
            make()
        sae.eval()
        obj = make()
        assert obj.model is vit and obj(_query()).shape[0] == 1
        vit.train()
        with pytest.raises(ValueError, match="is in training mode"):
            obj(_query())
    assert _unchanged(vit, before_vit) and _unchanged(sae, before_sae)


# ------------------------------------------------------------------------- output index


@pytest.mark.parametrize("n_out,index,message", [
    (1, 5, r"index must be 0 for a single-output model \(its one output\), got 5"),
    (10, 12, r"index must be in \[0, 9\] \(this model has 10 outputs\), got 12"),
    (10, 10, r"index must be in \[0, 9\] \(this model has 10 outputs\), got 10"),
])
def test_an_index_past_the_model_outputs_stops_at_the_target(n_out, index, message):
    """The bug: class_logit(model, 5) on a 1-output model measured (1, 0) and reported success 1.0."""
    net = _cnn(n_out)
    steps = []
    for factory in (O.class_logit, O.class_probability):
        with pytest.raises(ValueError, match=message):
            find_invariants(factory(net, index), _query(), IdentityPrior((1, 16, 16)), CFG, on_step=steps.append)
    assert steps == []  # stopped at the target y* = L(x*), before any step
    assert O.class_logit(net, n_out - 1)(_query()).shape == (1, 1)  # the last valid index works


# ------------------------------------------------------------------------- the query


@pytest.mark.parametrize("kw,message", [
    (dict(dtype=torch.float64), r"query must have the dtype of the objective's model \(torch\.float32\), got torch\.float64"),
    (dict(dtype=torch.int64), r"query must be a floating-point tensor .*got dtype torch\.int64"),
    (dict(dtype=torch.uint8), r"query must be a floating-point tensor .*got dtype torch\.uint8"),
    (dict(device="meta"), r"query must be on the device of the objective's model \(cpu\), got a query on meta"),
])
def test_a_query_of_the_wrong_dtype_or_device_is_named(kw, message):
    obj = O.logits(_cnn(), "digits ResNet")
    q = _query(**kw)
    for run in (lambda: find_invariants(obj, q, IdentityPrior((1, 16, 16)), CFG),
                lambda: find_invariants_batched(obj, q, IdentityPrior((1, 16, 16)), CFG, batch_size=1)):
        with pytest.raises(ValueError, match=message):
            run()


def test_a_query_of_the_wrong_dtype_for_the_prior_is_named_without_a_model():
    """An objective without a model accepts float64, but the prior's samples are float32: refused on
    the first samples, before any step, naming query and the prior."""
    obj = O.from_function(lambda x: x.mean(dim=(1, 2, 3))[:, None], "mean grey level")
    with pytest.raises(ValueError, match=r"query must have the dtype of the prior's samples \(torch\.float32\), got "
                                         r"torch\.float64 \(prior IdentityPrior\)"):
        _never_steps(obj, _query(dtype=torch.float64), IdentityPrior((1, 16, 16)))


class _Prior:
    """A prior without image_shape (so only its first samples tell): x = f(z)."""

    def __init__(self, shape, f=lambda z: z):
        self.shape, self.f = shape, f

    def sample_latents(self, n, generator, device=None):
        return torch.randn((n, *self.shape), generator=generator)

    def __call__(self, z):
        return self.f(z)


@pytest.mark.parametrize("prior", [IdentityPrior((1, 16, 16)), _Prior((1, 16, 16))], ids=["image_shape", "first samples"])
@pytest.mark.parametrize("query,message", [
    (_query(size=8), r"query must have the shape of the prior's samples, \(1, 1, 16, 16\), got \(1, 1, 8, 8\) "
                     r"\(prior \w+ returns samples of shape \(B, 1, 16, 16\); the objective's model takes \(B, 1, H, W\)\)"),
    # a prior that declares no image_shape: the model's own first layer refuses 3 channels at the target
    (_query(c=3), r"query (must have the shape of the prior's samples, \(1, 1, 16, 16\), got|of shape) \(1, 3, 16, 16\)"),
])
def test_a_query_of_another_shape_than_the_prior_is_named(prior, query, message):
    """An 8×8 query through an adaptive-pool classifier ran on silently with success 1.0."""
    obj = O.logits(_cnn(), "digits ResNet")
    with pytest.raises(ValueError, match=message) as e:
        _never_steps(obj, query, prior)
    if prior.__class__ is IdentityPrior:  # declares image_shape: refused before anything runs, by shape
        assert str(e.value).startswith("query must have the shape of the prior's samples, (1, 1, 16, 16)")
        with pytest.raises(ValueError, match=message):
            find_invariants_batched(obj, query, prior, CFG, batch_size=1)


def test_a_prior_of_another_kind_than_the_query_is_named():
    obj = O.logits(_cnn(), "digits ResNet")
    with pytest.raises(ValueError, match=r"query must have the shape of the prior's samples, \(1, 3, 16, 16\), got "
                                         r"\(1, 1, 16, 16\) .*the objective's model takes \(B, 1, H, W\)"):
        find_invariants(obj, _query(), IdentityPrior((3, 16, 16)), CFG)
    with pytest.raises(ValueError, match=r"query must have the dtype of the prior's samples \(torch\.float64\), got torch\.float32"):
        _never_steps(obj, _query(), _Prior((1, 16, 16), lambda z: z.double()))
    with pytest.raises(ValueError, match=r"query must be on the device of the prior's samples \(meta\), got a query on cpu"):
        _never_steps(obj, _query(), _Prior((1, 16, 16), lambda z: z.to("meta")))
    with pytest.raises(ValueError, match=r"prior must return a tensor of samples, got tuple"):
        _never_steps(obj, _query(), _Prior((1, 16, 16), lambda z: (z,)))


@pytest.mark.parametrize("prior", ["ddim", nn.Identity(), 3])
def test_something_that_is_not_a_prior_is_named(prior):
    with pytest.raises(ValueError, match=r"prior must be None or a prior z_T -> x with sample_latents\(n, generator\).*got "
                                         + type(prior).__name__):
        find_invariants(O.logits(_cnn()), _query(), prior, CFG)


def test_prior_none_with_an_image_model_is_refused_but_stays_the_no_prior_case_elsewhere():
    obj = O.logits(_cnn(), "digits ResNet")
    message = (r"prior must be a prior z_T -> x .* for an image query of shape \(1, 1, 16, 16\) and the model objective "
               r"'logits of digits ResNet', got None: .*IdentityPrior\(query\.shape\[1:\]\)")
    with pytest.raises(ValueError, match=message):
        find_invariants(obj, _query(), None, CFG)
    with pytest.raises(ValueError, match=message):
        find_invariants_batched(obj, _query(), None, CFG, batch_size=1)
    # on purpose: an explicit IdentityPrior; a function of the pixels; a 2D model (the circles world)
    assert find_invariants(obj, _query(), IdentityPrior((1, 16, 16)), CFG).x.shape == (2, 1, 16, 16)
    mean = O.from_function(lambda x: x.mean(dim=(1, 2, 3))[:, None], "mean grey level")
    assert find_invariants(mean, _query(), None, CFG).x.shape == (2, 1, 16, 16)
    mlp = O.logits(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).eval())
    one = find_invariants(mlp, torch.zeros(1, 2), None, CFG)
    batched = find_invariants_batched(mlp, torch.zeros(1, 2), None, CFG, batch_size=1)  # used to fail on None.sample_latents
    assert torch.equal(one.z_init, batched.z_init) and torch.allclose(one.x, batched.x)


# ------------------------------------------------------------------------- the objective


@pytest.mark.parametrize("fn,message", [
    (lambda x: x.flatten(1).sum(1), r"objective must return a tensor of shape \(B, m\): m ≥ 1 measured values for each "
                                    r"of the B inputs, got shape \(1,\) for the query of shape \(1, 1, 16, 16\) \(return "
                                    r"x\.reshape\(len\(x\), -1\)"),
    (lambda x: x, r"objective must return a tensor of shape \(B, m\).*got shape \(1, 1, 16, 16\)"),
    (lambda x: x.flatten(1)[:, :0], r"objective must return .*got shape \(1, 0\) .*it measures nothing, m = 0"),
    (lambda x: float(x.sum()), r"objective must return a tensor of shape \(B, m\).*got float"),
])
def test_an_objective_that_does_not_return_b_by_m_is_named(fn, message):
    """The bug: an objective returning (B,) ended in IndexError: tuple index out of range."""
    with pytest.raises(ValueError, match=message):
        _never_steps(fn, _query(), IdentityPrior((1, 16, 16)))


def test_an_objective_that_measures_the_samples_differently_or_a_foreign_target_is_named():
    def fn(x):  # 2 values for one input, 3 for a batch
        return x.flatten(1)[:, : 2 if len(x) == 1 else 3]

    with pytest.raises(ValueError, match=r"objective must measure as many values on the prior's samples as on the query "
                                         r"\(m = 2\), got shape \(2, 3\)"):
        _never_steps(fn, _query(), IdentityPrior((1, 16, 16)))
    obj = O.logits(_cnn())
    with pytest.raises(ValueError, match=r"target must hold the m = 10 values the objective measures, got 3 values"):
        _never_steps(obj, _query(), IdentityPrior((1, 16, 16)), target=torch.zeros(1, 3))
    for target, got in ((torch.zeros(1, 10, dtype=torch.long), "dtype torch.int64"), ([0.0] * 10, "list"),
                        (torch.zeros(0), r"dtype torch\.float32, shape \(0,\)")):
        with pytest.raises(ValueError, match=r"target must be None or a floating-point tensor .*got " + got):
            _never_steps(obj, _query(), IdentityPrior((1, 16, 16)), target=target)
    with pytest.raises(ValueError, match=r"objective must be a callable .*got str"):
        _never_steps("logits", _query(), IdentityPrior((1, 16, 16)))


# ------------------------------------------------------------------------- priors declare their image shape


def test_diffusion_priors_declare_the_shape_of_their_samples():
    """check_query compares the query with ``image_shape`` before anything runs: it must be the
    shape the chain really returns (a wrong one would refuse valid queries)."""
    diffusers = pytest.importorskip("diffusers")
    from equidiff.core.priors import LatentDiTPrior, PixelDDIMPrior

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    sched = diffusers.DDIMScheduler(num_train_timesteps=100)
    dit = diffusers.DiTTransformer2DModel(sample_size=4, patch_size=2, in_channels=4, out_channels=8, num_layers=1,
                                          num_attention_heads=2, attention_head_dim=8, num_embeds_ada_norm=10)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8),
                                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                                  layers_per_block=1, norm_num_groups=4, sample_size=16)
    for prior, shape in ((PixelDDIMPrior(unet, sched, num_steps=2), (1, 8, 8)),
                         (LatentDiTPrior(dit, vae, sched, num_steps=2), (3, 16, 16))):
        with torch.no_grad():
            x = prior(prior.sample_latents(1, torch.Generator().manual_seed(0)))
        assert prior.image_shape == tuple(x.shape[1:]) == shape
        with pytest.raises(ValueError, match=r"query must have the shape of the prior's samples, \(1, "
                                             + ", ".join(map(str, shape)) + r"\), got \(1, 1, 4, 4\)"):
            find_invariants(O.from_function(lambda v: v.flatten(1), "pixels"), _query(size=4), prior, CFG)
