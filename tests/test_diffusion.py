"""Differentiable DDIM priors (equidiff.diffusion): parity with diffusers' pipelines, gradients,
checkpointed memory, bad inputs. Tiny randomly initialised models, CPU, seeded."""

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    UNet2DModel,
)

from equidiff.core.invariants import InvariantConfig, find_invariants
from equidiff.core.priors import IdentityPrior, LatentDiTPrior, PixelDDIMPrior, Prior

T_TRAIN = 100  # num_train_timesteps of the tiny schedulers
N_CLASSES = 10  # num_embeds_ada_norm of the tiny DiT: the null class id is 10


def _unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


def _dit(out_channels=8):
    torch.manual_seed(1)
    return DiTTransformer2DModel(
        sample_size=4,
        patch_size=2,
        in_channels=4,
        out_channels=out_channels,  # 8 = 2 × 4: learned sigma, as DiT-XL-2-256
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=8,
        num_embeds_ada_norm=N_CLASSES,
    )


def _vae():
    torch.manual_seed(2)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The models are tiny: intra-op threads only cost here, and on a busy 2-core machine OpenMP's
    # spinning workers made these tests 10-40× slower. Restored after the module.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def unet():
    return _unet()


@pytest.fixture(scope="module")
def latent_models():
    return _dit(), _vae(), DDIMScheduler(num_train_timesteps=T_TRAIN, clip_sample=False)


# ---------------------------------------------------------------- parity with diffusers pipelines


@pytest.mark.parametrize("clip_sample", [True, False])
def test_pixel_prior_equals_ddim_pipeline(unet, clip_sample):
    # A DDPM scheduler, as the embedded world trains with: both sides convert it to DDIM.
    sched = DDPMScheduler(num_train_timesteps=T_TRAIN, clip_sample=clip_sample)
    prior = PixelDDIMPrior(unet, sched, num_steps=5)
    assert prior.scheduler.config.clip_sample is clip_sample  # kept as configured
    z = prior.sample_latents(3, torch.Generator().manual_seed(7))  # (3, 1, 8, 8)

    pipe = DDIMPipeline(unet, sched)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        batch_size=3, generator=torch.Generator().manual_seed(7), num_inference_steps=5, eta=0.0, output_type="pt"
    ).images  # (3, 1, 8, 8) in [0, 1]

    with torch.no_grad():
        x = prior(z)  # (3, 1, 8, 8) in [-1, 1]
    assert x.shape == ref.shape == (3, 1, 8, 8)
    torch.testing.assert_close(x / 2 + 0.5, ref, rtol=0, atol=1e-6)  # exact in practice
    assert x.std() > 1e-3  # not a degenerate constant image
    # the caller's scheduler is untouched (the prior owns a DDIM copy)
    assert sched.num_inference_steps is None and len(sched.timesteps) == T_TRAIN


def test_pixel_checkpointing_changes_nothing(unet):
    sched = DDPMScheduler(num_train_timesteps=T_TRAIN)
    outs, grads = [], []
    for ck in (True, False):
        prior = PixelDDIMPrior(unet, sched, num_steps=4, checkpointing=ck, clamp=False)
        z = prior.sample_latents(2, torch.Generator().manual_seed(0)).requires_grad_(True)
        x = prior(z)
        (x**2).sum().backward()
        outs.append(x.detach())
        grads.append(z.grad)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])  # recomputation is exact: identical gradients
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("out_channels, class_label", [(8, None), (4, 3)])
def test_latent_prior_equals_dit_pipeline(tmp_path, out_channels, class_label):
    # Round trip through save_pretrained / from_pretrained, as the paper world loads DiT-XL-2-256.
    _dit(out_channels).save_pretrained(tmp_path / "transformer")
    _vae().save_pretrained(tmp_path / "vae")
    DDIMScheduler(num_train_timesteps=T_TRAIN, clip_sample=False).save_pretrained(tmp_path / "scheduler")
    transformer = DiTTransformer2DModel.from_pretrained(tmp_path / "transformer", low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae", low_cpu_mem_usage=False)
    sched = DDIMScheduler.from_pretrained(tmp_path / "scheduler")

    prior = LatentDiTPrior(transformer, vae, sched, num_steps=4, class_label=class_label)
    label = N_CLASSES if class_label is None else class_label
    assert prior.class_label == label and prior.null_class == N_CLASSES
    z = prior.sample_latents(2, torch.Generator().manual_seed(3))  # (2, 4, 4, 4)
    with torch.no_grad():
        x = prior(z)  # (2, 3, 8, 8) in [-1, 1]

    # guidance_scale=1: DiTPipeline feeds class_labels straight to the transformer (its hard-coded
    # null id 1000 is only used on the CFG branch), so the null id 10 is passed as the label.
    pipe = DiTPipeline(transformer, vae, sched)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        class_labels=[label] * 2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=4,
        output_type="pt",
    ).images  # (2, 3, 8, 8) in [0, 1]
    assert x.shape == ref.shape == (2, 3, 8, 8)
    torch.testing.assert_close(x / 2 + 0.5, ref, rtol=0, atol=1e-6)
    assert x.std() > 1e-3


def test_latent_checkpointing_changes_nothing(latent_models):
    transformer, vae, sched = latent_models
    outs, grads = [], []
    for ck in (True, False):
        prior = LatentDiTPrior(transformer, vae, sched, num_steps=3, checkpointing=ck, clamp=False)
        z = prior.sample_latents(2, torch.Generator().manual_seed(0)).requires_grad_(True)
        x = prior(z)
        (x**2).sum().backward()
        outs.append(x.detach())
        grads.append(z.grad)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])  # recomputation is exact: identical gradients


# ---------------------------------------------------------------- gradients and memory


def test_gradients_reach_z_and_not_the_models(unet, latent_models):
    transformer, vae, sched = latent_models
    priors = [
        PixelDDIMPrior(unet, DDPMScheduler(num_train_timesteps=T_TRAIN), num_steps=3),
        LatentDiTPrior(transformer, vae, sched, num_steps=3),
    ]
    for prior in priors:
        assert isinstance(prior, Prior)
        z = prior.sample_latents(2, torch.Generator().manual_seed(0)).requires_grad_(True)
        prior(z).mean().backward()
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # the prior is a fixed map: no parameter gradients are computed on the networks
    for model in (unet, transformer, vae):
        assert not model.training
        assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def _saved_bytes(prior, z):
    """Bytes the autograd graph saves for backward while running prior(z)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        prior(z).sum().backward()
    return total


def test_checkpointing_keeps_memory_flat_in_T(unet):
    sched = DDPMScheduler(num_train_timesteps=T_TRAIN)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    latent_bytes = z.numel() * z.element_size()  # one x_t

    def growth_per_step(ck):
        b2 = _saved_bytes(PixelDDIMPrior(unet, sched, num_steps=2, checkpointing=ck), z)
        b8 = _saved_bytes(PixelDDIMPrior(unet, sched, num_steps=8, checkpointing=ck), z)
        return (b8 - b2) / 6

    # checkpointed: each extra step keeps only its input x_t (and the scalar t) for recomputation
    assert growth_per_step(True) <= latent_bytes + 64
    # not checkpointed: each extra step keeps the network's activations, far more
    assert growth_per_step(False) > 50 * latent_bytes


# ---------------------------------------------------------------- latents and the optimisation loop


def test_sample_latents_are_seeded_and_shaped(unet, latent_models):
    transformer, vae, sched = latent_models
    pix = PixelDDIMPrior(unet, DDPMScheduler(num_train_timesteps=T_TRAIN))
    lat = LatentDiTPrior(transformer, vae, sched)
    assert pix.latent_shape == (1, 8, 8) and lat.latent_shape == (4, 4, 4)
    for prior in (pix, lat):
        a = prior.sample_latents(3, torch.Generator().manual_seed(5))
        b = prior.sample_latents(3, torch.Generator().manual_seed(5))
        c = prior.sample_latents(3, torch.Generator().manual_seed(6))
        assert a.shape == (3, *prior.latent_shape) and a.dtype == torch.float32 and a.device.type == "cpu"
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_find_invariants_runs_through_the_pixel_prior(unet):
    prior = PixelDDIMPrior(unet, DDPMScheduler(num_train_timesteps=T_TRAIN), num_steps=3, clamp=False)

    def brightness(x):  # (B, 1, 8, 8) -> (B, 1)
        return x.mean(dim=(1, 2, 3)).unsqueeze(1)

    query = torch.full((1, 1, 8, 8), 0.5)
    cfg = InvariantConfig(n_samples=2, steps=8, tau=1e-12, lr=0.05)
    res = find_invariants(brightness, query, prior, cfg)
    assert res.x.shape == (2, 1, 8, 8) and res.z.shape == (2, 1, 8, 8)
    assert not torch.equal(res.z, res.z_init)  # gradients moved z_T
    assert res.history["loss_mean"][-1] < res.history["loss_mean"][0]  # the loss goes down
    assert isinstance(IdentityPrior((2,)), Prior)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("bad", [0, T_TRAIN + 1, 2.5, True, "10"])
def test_bad_num_steps(unet, latent_models, bad):
    transformer, vae, sched = latent_models
    match = rf"num_steps must be an integer in \[1, {T_TRAIN}\].*got {bad!r}"
    with pytest.raises(ValueError, match=match):
        PixelDDIMPrior(unet, DDPMScheduler(num_train_timesteps=T_TRAIN), num_steps=bad)
    with pytest.raises(ValueError, match=match):
        LatentDiTPrior(transformer, vae, sched, num_steps=bad)


def test_bad_latents(unet, latent_models):
    pix = PixelDDIMPrior(unet, DDPMScheduler(num_train_timesteps=T_TRAIN), num_steps=2)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 1, 8, 8\) with B ≥ 1, got \(2, 3, 8, 8\)"):
        pix(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 1, 8, 8\) with B ≥ 1, got \(1, 8, 8\)"):
        pix(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match=r"z must be a torch.Tensor .* got list"):
        pix([[0.0]])
    with pytest.raises(ValueError, match=r"z must be a floating-point tensor, got dtype torch.int64"):
        pix(torch.zeros(1, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"n must be an integer ≥ 1, got 0"):
        pix.sample_latents(0, torch.Generator())
    transformer, vae, sched = latent_models
    lat = LatentDiTPrior(transformer, vae, sched, num_steps=2)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 4, 4, 4\) with B ≥ 1, got \(2, 4, 8, 8\)"):
        lat(torch.zeros(2, 4, 8, 8))


def test_bad_constructor_arguments(unet, latent_models):
    transformer, vae, sched = latent_models
    msg = rf"class_label must be None \(the null class {N_CLASSES}\) or an integer in \[0, {N_CLASSES}\], got 11"
    with pytest.raises(ValueError, match=msg):
        LatentDiTPrior(transformer, vae, sched, class_label=N_CLASSES + 1)
    with pytest.raises(ValueError, match=r"class_label .* got -1"):
        LatentDiTPrior(transformer, vae, sched, class_label=-1)
    with pytest.raises(ValueError, match=r"scheduler must be a diffusers scheduler .* got str"):
        PixelDDIMPrior(unet, "ddim")
    with pytest.raises(ValueError, match=r"checkpointing must be True or False, got 1"):
        PixelDDIMPrior(unet, sched, checkpointing=1)
    wide = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4,
    )
    with pytest.raises(ValueError, match=r"unet.config.out_channels must equal in_channels \(1\).*got 2"):
        PixelDDIMPrior(wide, sched)
