import math

import pytest
import torch

from equidiff.core import filters as F


def _wave(h, w, ky, kx):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cos(2 * math.pi * (ky * yy / h + kx * xx / w)).float()


def test_cutoff_one_is_exact_identity():
    x = torch.randn(3, 2, 16, 16)
    assert torch.equal(F.lowpass(x, 1.0), x)


@pytest.mark.parametrize("cutoff", [0.1, 0.3, 0.5, 0.9])
def test_frequencies_below_pass_and_above_are_removed(cutoff):
    n = 16
    for k in range(0, n // 2 + 1):
        wave = _wave(n, n, 0, k)[None, None]
        out = F.lowpass(wave, cutoff)
        freq = k / n  # cycles per pixel; Nyquist = 0.5
        if freq <= cutoff * 0.5:
            assert torch.allclose(out, wave, atol=1e-5), (k, cutoff)
        else:
            assert out.abs().max() < 1e-5, (k, cutoff)


def test_lowpass_is_differentiable_and_real():
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    y = F.lowpass(x, 0.5)
    assert y.dtype == x.dtype
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_high_frequency_share_separates_smooth_from_checkerboard():
    smooth = _wave(16, 16, 1, 1)[None, None]
    checker = _wave(16, 16, 8, 8)[None, None]
    assert F.high_frequency_share(smooth).item() < 1e-6
    assert F.high_frequency_share(checker).item() > 0.999


def test_radial_spectrum_and_sweep_shapes():
    x = torch.randn(4, 1, 16, 16)
    freqs, p = F.radial_power_spectrum(x)
    assert p.shape == (4, 8) and freqs.shape == (8,)
    assert F.log_magnitude_spectrum(x).shape == (4, 16, 16)
    dev = F.cutoff_sweep(lambda im: im.mean(dim=(1, 2, 3)), x, x.mean(dim=(1, 2, 3)))
    assert dev.shape == (4, len(F.DEFAULT_CUTOFFS))
    assert torch.allclose(dev, torch.zeros_like(dev), atol=1e-5)  # the mean (DC) survives every cutoff


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, "a", None])
def test_bad_cutoff_names_parameter_and_range(bad):
    with pytest.raises(ValueError, match=r"cutoff must be .*\(0, 1\]"):
        F.lowpass(torch.zeros(1, 1, 4, 4), bad)
