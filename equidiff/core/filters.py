"""Frequency tools of thesis Appendix .4: ideal low-pass filter, spectra, cutoff sweeps.

Frequencies are expressed as a fraction of the Nyquist frequency (0.5 cycles per pixel), so a
cutoff ``c`` in (0, 1] keeps the frequencies ``(fy, fx)`` with ``|fy| <= c/2`` and
``|fx| <= c/2`` (an ideal, separable box in the 2D Fourier plane, thesis Eq. 3). ``c = 1`` keeps
every frequency and is exactly the identity.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = [
    "check_cutoff",
    "lowpass_mask",
    "lowpass",
    "radial_frequency",
    "radial_power_spectrum",
    "high_frequency_share",
    "log_magnitude_spectrum",
    "cutoff_sweep",
    "DEFAULT_CUTOFFS",
]

DEFAULT_CUTOFFS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # Appendix .4.2 protocol


def check_cutoff(cutoff: float, name: str = "cutoff") -> float:
    try:
        c = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1] (fraction of Nyquist), got {cutoff!r}")
    if not (0.0 < c <= 1.0):
        raise ValueError(f"{name} must be in (0, 1] (fraction of Nyquist), got {cutoff!r}")
    return c


def lowpass_mask(height: int, width: int, cutoff: float, device=None) -> torch.Tensor:
    """Boolean (H, W) mask in unshifted FFT layout: True where a frequency passes."""
    c = check_cutoff(cutoff)
    fy = torch.fft.fftfreq(height, device=device).abs()  # cycles / pixel, Nyquist = 0.5
    fx = torch.fft.fftfreq(width, device=device).abs()
    tol = 1e-9
    return (fy[:, None] <= c * 0.5 + tol) & (fx[None, :] <= c * 0.5 + tol)


def lowpass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Ideal low-pass filter F_c(x) = IFFT(H_c · FFT(x)) over the last two dims (App. .4.1).

    Differentiable; works on (..., H, W) tensors; c = 1 returns ``x`` itself.
    """
    c = check_cutoff(cutoff)
    if x.dim() < 2:
        raise ValueError(f"lowpass needs an input with shape (..., H, W), got {tuple(x.shape)}")
    if c >= 1.0:
        return x
    h, w = x.shape[-2:]
    mask = lowpass_mask(h, w, c, device=x.device).to(x.dtype)
    spec = torch.fft.fft2(x)
    return torch.fft.ifft2(spec * mask).real.to(x.dtype)


def radial_frequency(height: int, width: int, device=None) -> torch.Tensor:
    """(H, W) radial frequency of each FFT bin as a fraction of Nyquist (corners reach √2)."""
    fy = torch.fft.fftfreq(height, device=device)
    fx = torch.fft.fftfreq(width, device=device)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / 0.5


def _power(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=(-2, -1), keepdim=True)  # drop DC: brightness is not "frequency content"
    p = torch.fft.fft2(x).abs() ** 2
    while p.dim() > 3:  # average channels: (B, C, H, W) -> (B, H, W)
        p = p.mean(dim=1)
    if p.dim() == 2:
        p = p[None]
    return p  # (B, H, W)


def radial_power_spectrum(x: torch.Tensor, n_bins: int | None = None):
    """Radially averaged power spectrum. Returns (freqs, power (B, n_bins)), freqs in Nyquist units."""
    h, w = x.shape[-2:]
    n_bins = n_bins or max(h, w) // 2
    p = _power(x.detach().float())
    r = radial_frequency(h, w, device=p.device).clamp(max=1.0)
    idx = torch.clamp((r * n_bins).long(), max=n_bins - 1).flatten()
    flat = p.flatten(1)
    sums = torch.zeros(flat.shape[0], n_bins, device=p.device).index_add_(1, idx, flat)
    counts = torch.bincount(idx, minlength=n_bins).clamp(min=1)
    freqs = (torch.arange(n_bins, device=p.device) + 0.5) / n_bins
    return freqs, sums / counts


def high_frequency_share(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image share of (non-DC) spectral power above ``threshold`` × Nyquist: (B,)."""
    check_cutoff(threshold, "threshold")
    h, w = x.shape[-2:]
    p = _power(x.detach().float())
    high = radial_frequency(h, w, device=p.device) > threshold
    total = p.flatten(1).sum(1).clamp(min=1e-12)
    return (p * high).flatten(1).sum(1) / total


def log_magnitude_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Centred log(1 + |FFT|) images, channel-averaged: (B, H, W), the 'spectral heatmap'."""
    mag = torch.fft.fftshift(torch.fft.fft2(x.detach().float()).abs(), dim=(-2, -1))
    while mag.dim() > 3:
        mag = mag.mean(dim=1)
    return torch.log1p(mag)


def cutoff_sweep(
    measure: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    reference: torch.Tensor,
    cutoffs: Sequence[float] = DEFAULT_CUTOFFS,
) -> torch.Tensor:
    """Appendix .4.2: deviation |measure(F_c(x)) − reference| for every cutoff c: (B, len(cutoffs)).

    ``measure`` maps (B, ...) to (B,) or (B, m) (deviations are L2 over m); ``reference`` is the
    unfiltered target, broadcastable to the measurement.
    """
    cutoffs = [check_cutoff(c, "cutoffs") for c in cutoffs]
    out = []
    with torch.no_grad():
        for c in cutoffs:
            m = measure(lowpass(x, c))
            d = m - reference
            out.append(d.reshape(d.shape[0], -1).norm(dim=1) if d.dim() > 1 else d.abs())
    return torch.stack(out, dim=1)
