"""Baselines of the classifier chapter: pixel-space priors (Lucent-style) and one-pass guidance."""

import pytest
import torch

from equidiff.core import baselines as B
from equidiff.core import filters
from equidiff.worlds.digits import models as zoo
from equidiff.core.priors import PixelDDIMPrior
from equidiff.core.invariants import InvariantConfig, invariant_loss
from equidiff.core.objectives import from_function


def _mean_objective():
    return from_function(lambda x: x.mean(dim=(1, 2, 3)), "mean grey level")


# --- pixel-space priors -----------------------------------------------------------------------


def test_pixel_prior_maps_into_the_image_range_reproducibly():
    p = B.PixelPrior((1, 16, 16), sd=3.0)
    z1 = p.sample_latents(5, torch.Generator().manual_seed(1))
    z2 = p.sample_latents(5, torch.Generator().manual_seed(1))
    assert z1.shape == (5, 1, 16, 16) and torch.equal(z1, z2)
    x = p(z1)
    assert x.shape == z1.shape and x.min() > -1 and x.max() < 1
    assert torch.allclose(p(torch.zeros(1, 1, 16, 16)), torch.zeros(1, 1, 16, 16))  # 2σ(0) − 1 = 0: mid-grey


def test_fourier_prior_round_trip_from_an_image():
    """u built from an image's orthonormal real FFT (divided by the 1/f scale) gives that image back."""
    torch.manual_seed(0)
    p = B.FourierPrior((1, 16, 16), decay_power=1.0)
    img = torch.randn(2, 1, 16, 16) * 0.7  # the pre-squash image
    spec = torch.fft.rfft2(img * 4.0, norm="ortho") / p.scale  # (2, 1, 16, 9)
    u = torch.view_as_real(spec)  # (2, 1, 16, 9, 2)
    assert u.shape[1:] == p.latent_shape
    assert torch.allclose(p(u), 2 * torch.sigmoid(img) - 1, atol=1e-5)


def test_fourier_scaling_favours_low_frequencies():
    """With the 1/f scaling a random spectrum gives a smoother image than without it."""
    g = torch.Generator().manual_seed(0)
    flat = B.FourierPrior((1, 16, 16), sd=0.05, decay_power=0.0)
    pink = B.FourierPrior((1, 16, 16), sd=0.05, decay_power=1.0)
    u = flat.sample_latents(64, g)
    hf_flat = filters.high_frequency_share(flat(u)).mean()
    hf_pink = filters.high_frequency_share(pink(u)).mean()
    assert hf_flat > 0.5  # white noise: most power is above half Nyquist (corners reach √2)
    assert hf_pink < 0.5 * hf_flat


def test_rfft2_frequencies_layout():
    f = B.rfft2_frequencies(16, 16)
    assert f.shape == (16, 9)
    assert f[0, 0] == 0 and torch.isclose(f[0, 8], torch.tensor(0.5)) and torch.isclose(f[8, 0], torch.tensor(0.5))


@pytest.mark.parametrize("cls", [B.PixelPrior, B.FourierPrior])
def test_priors_reject_bad_arguments(cls):
    with pytest.raises(ValueError, match=r"shape must be a tuple \(C, H, W\) of three integers ≥ 1, got \(16, 16\)"):
        cls((16, 16))
    with pytest.raises(ValueError, match=r"sd must be a finite number > 0, got 0"):
        cls((1, 16, 16), sd=0)
    with pytest.raises(ValueError, match=r"n must be an integer ≥ 1, got 0"):
        cls((1, 4, 4)).sample_latents(0)


def test_fourier_prior_rejects_bad_decay_and_latents():
    with pytest.raises(ValueError, match=r"decay_power must be a finite number ≥ 0, got -1"):
        B.FourierPrior((1, 8, 8), decay_power=-1)
    with pytest.raises(ValueError, match=r"u must be a tensor of shape \(B, 1, 8, 5, 2\), got \(2, 1, 8, 8\)"):
        B.FourierPrior((1, 8, 8))(torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize("par", ["pixel", "fourier"])
def test_pixel_invariants_reach_tau_through_the_same_loop(par):
    obj = _mean_objective()
    query = torch.full((1, 1, 8, 8), 0.3)
    cfg = InvariantConfig(n_samples=4, steps=200, tau=1e-5, lr=0.1, lowpass_cutoff=0.5, seed=0)
    res = B.pixel_invariants(obj, query, cfg, parameterization=par)
    assert res.success_rate == 1.0
    assert res.x.shape == (4, 1, 8, 8) and res.x.abs().max() < 1
    # the returned images really meet the dual loss of Algorithm 1
    loss = invariant_loss(obj, res.x, obj(query), lowpass_cutoff=0.5)
    assert torch.all(loss < cfg.tau)
    assert torch.equal(loss, res.loss)  # the one loss: the loop reports exactly what invariant_loss computes


def test_pixel_invariants_rejects_bad_input():
    obj = _mean_objective()
    with pytest.raises(ValueError, match=r"parameterization must be one of \('pixel', 'fourier'\), got 'fft'"):
        B.pixel_invariants(obj, torch.zeros(1, 1, 8, 8), parameterization="fft")
    with pytest.raises(ValueError, match=r"query must be one image with a batch dimension, shape \(1, C, H, W\), got \(1, 8, 8\)"):
        B.pixel_invariants(obj, torch.zeros(1, 8, 8))


# --- guidance ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    ddpm = zoo.get_model("digits-ddpm-tiny", cache_dir=tmp_path_factory.mktemp("zoo"), progress=False)
    return PixelDDIMPrior(ddpm.model, ddpm.scheduler, num_steps=4, checkpointing=False, clamp=True)


def test_guidance_with_zero_scale_is_the_plain_ddim_chain(tiny_prior):
    obj = _mean_objective()
    query = torch.zeros(1, 1, 16, 16)
    res = B.guided_sampling(obj, query, tiny_prior, B.GuidanceConfig(n_samples=3, scale=0.0, seed=2))
    z = tiny_prior.sample_latents(3, torch.Generator().manual_seed(2))
    assert torch.equal(res.z_init, z)
    with torch.no_grad():
        assert torch.allclose(res.x, tiny_prior(z), atol=1e-5)
    assert len(res.history["loss_mean"]) == 4  # one entry per DDIM step
    assert res.config.steps == 0  # nothing was optimised


def test_guidance_reports_the_invariant_loss_of_its_final_images(tiny_prior):
    obj = _mean_objective()
    query = torch.full((1, 1, 16, 16), 0.4)
    cfg = B.GuidanceConfig(n_samples=3, scale=1.0, lowpass_cutoff=0.5, seed=1)
    res = B.guided_sampling(obj, query, tiny_prior, cfg)
    with torch.no_grad():
        assert torch.equal(res.loss, invariant_loss(obj, res.x, obj(query), 0.5))
    assert torch.equal(res.x, tiny_prior.finish(res.x))  # finished as the prior finishes its chain: clamped


# step sizes per rule: for the mean grey level ∇ℓ is spread over 256 pixels, so the unnormalised rules need a larger ζ
@pytest.mark.parametrize("rule,scale", [("gradient", 2.0), ("loss", 20.0), ("none", 40.0)])
def test_guidance_moves_samples_towards_the_target(tiny_prior, rule, scale):
    obj = _mean_objective()
    query = torch.full((1, 1, 16, 16), 0.6)  # target mean grey level 0.6
    free = B.guided_sampling(obj, query, tiny_prior, B.GuidanceConfig(n_samples=6, scale=0.0))
    guided = B.guided_sampling(obj, query, tiny_prior, B.GuidanceConfig(n_samples=6, scale=scale, normalize=rule))
    assert guided.loss.mean() < 0.5 * free.loss.mean()
    assert torch.equal(guided.converged, guided.loss < 0.01)
    assert torch.all(guided.steps_to_converge[~guided.converged] == -1)
    assert guided.x.abs().max() <= 1


def test_guidance_rejects_bad_input(tiny_prior):
    with pytest.raises(ValueError, match=r"scale must be a finite number ≥ 0 \(0 = unguided sampling\), got -1"):
        B.GuidanceConfig(scale=-1)
    with pytest.raises(ValueError, match=r"normalize must be one of \('gradient', 'loss', 'none'\), got True"):
        B.GuidanceConfig(normalize=True)
    with pytest.raises(ValueError, match=r"lowpass_cutoff must be None or a number in \(0, 1\]"):
        B.GuidanceConfig(lowpass_cutoff=2.0)
    with pytest.raises(ValueError, match=r"prior must be a PixelDDIMPrior"):
        B.guided_sampling(_mean_objective(), torch.zeros(1, 1, 16, 16), B.PixelPrior((1, 16, 16)))
    with pytest.raises(ValueError, match=r"z_init must be 2 latents \(config.n_samples\), got \(3, 1, 16, 16\)"):
        B.guided_sampling(_mean_objective(), torch.zeros(1, 1, 16, 16), tiny_prior, B.GuidanceConfig(n_samples=2),
                          z_init=torch.zeros(3, 1, 16, 16))
