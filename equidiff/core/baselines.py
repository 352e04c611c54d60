"""Baselines the thesis argues against but does not measure (Sections 3.2 and 3.3).

EquiDiff (thesis Algorithm 1) searches the invariant set IS(x*) = {x : L(x) = L(x*)} (Eq. 3.1)
*through* a diffusion prior: it optimises the starting noise z_T of a deterministic sampler, so
every candidate is an image the prior can produce. Two families of alternatives are compared
with it in the classifier chapter (Section 4.4), on the same objective, query, τ and budget:

* **Pixel-space optimisation** (activation-maximisation style, Section 3.3: "optimization-based
  adversarial methods that may introduce imperceptible high-frequency artifacts"). The image
  itself is the variable. Two parameterisations, as in Lucent's ``optvis.param`` (re-implemented
  here, not imported):

  - :class:`PixelPrior`: one free value per pixel, squashed into the image range,
    ``x = 2·sigmoid(u) − 1``, ``u ~ N(0, sd²)`` (Lucent's ``pixel_image`` + ``to_valid_rgb``);
  - :class:`FourierPrior`: the image's real 2D spectrum is the variable, each frequency
    scaled by ``1 / max(|f|, 1/size)^decay_power`` (a 1/f prior, so low frequencies move
    first), inverse FFT (orthonormal), divided by 4, then squashed the same way
    (Lucent's ``fft_image``).

  Both are "priors" in the sense of :func:`equidiff.core.invariants.find_invariants` (``z -> x``
  plus ``sample_latents``), so they run through *exactly* the loop EquiDiff runs — same loss
  (including the low-pass term), optimiser, τ, budget and early stop. Only the map z -> x
  differs: that isolates what the diffusion prior contributes.

* **Guidance during sampling** (Section 3.2.1: classifier guidance and its "approximate
  reconstructions x̂_0(t)"). :func:`guided_sampling` runs the deterministic DDIM chain once
  and, at every step, moves x_t down the gradient of the invariant-set loss measured on the
  predicted clean image x̂_0(x_t) — DPS-style (Chung et al., 2023, "Diffusion Posterior
  Sampling", Algorithm 1 with their normalised step ζ_t = ζ / ‖y − A(x̂_0)‖):

      x_{t−1} = DDIM(x_t, ε_θ(x_t, t)) − ζ · ∇_{x_t} ℓ(x̂_0) / sqrt(ℓ(x̂_0)),

  where ℓ is the same per-sample loss EquiDiff minimises. Where the classifier's softmax is
  saturated that gradient all but vanishes, so by default the step is instead taken along the
  gradient's direction with length ζ·sqrt(ℓ) (:class:`GuidanceConfig` ``normalize``) — the
  analogue of Adam's scale-free step in EquiDiff, and the more favourable rule for this baseline. It costs one chain with gradients
  and cannot iterate: whatever loss is left at t = 0 stays (the thesis' reason for its
  "infinite optimisation" instead, Section 3.2.2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from equidiff._validate import bad as _bad, is_int as _is_int, is_num as _is_num
from equidiff.core.invariants import InvariantConfig, InvariantResult, find_invariants, invariant_loss
from equidiff.core.objectives import Objective

__all__ = [
    "PixelPrior",
    "FourierPrior",
    "rfft2_frequencies",
    "PARAMETERIZATIONS",
    "pixel_invariants",
    "GuidanceConfig",
    "guided_sampling",
]


def _check_shape(shape) -> tuple:
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) != 3
        or not all(_is_int(s) and s >= 1 for s in shape)
    ):
        raise _bad("shape", shape, "a tuple (C, H, W) of three integers ≥ 1")
    return tuple(int(s) for s in shape)


def _to_image_range(u: torch.Tensor) -> torch.Tensor:
    # Lucent's to_valid_rgb maps to [0, 1] with a sigmoid; the [-1, 1] form of that is 2σ(u) − 1.
    return 2.0 * torch.sigmoid(u) - 1.0


class PixelPrior:
    """Pixel-space "prior": x = 2·sigmoid(u) − 1 with one free value u per pixel (Lucent's pixel_image).

    Parameters
    ----------
    shape: ``(C, H, W)`` of one image.
    sd: standard deviation of the starting values u ~ N(0, sd²) (Lucent: 0.01, a near-grey start).
    """

    def __init__(self, shape, sd: float = 0.01):
        self.shape = _check_shape(shape)
        if not _is_num(sd) or sd <= 0:
            raise _bad("sd", sd, "a finite number > 0")
        self.sd = float(sd)

    @property
    def latent_shape(self) -> tuple:
        return self.shape

    def sample_latents(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        if not _is_int(n) or n < 1:
            raise _bad("n", n, "an integer ≥ 1")
        u = torch.randn((n, *self.shape), generator=generator) * self.sd  # (n, C, H, W)
        return u.to(device) if device is not None else u

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return _to_image_range(u)  # (B, C, H, W) in (-1, 1)

    def __repr__(self):
        return f"PixelPrior(shape={self.shape}, sd={self.sd:g})"


def rfft2_frequencies(height: int, width: int) -> torch.Tensor:
    """|f| of every bin of a real 2D FFT (``torch.fft.rfft2`` layout), cycles per pixel: (H, W//2+1)."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    return torch.sqrt(fx**2 + fy**2)


class FourierPrior:
    """Fourier-parameterised image (Lucent's fft_image, re-implemented): the spectrum is the variable.

    ``u`` (B, C, H, W//2+1, 2) holds the real and imaginary parts of the image's real FFT; each
    frequency is scaled by ``1 / max(|f|, 1/max(H, W))^decay_power``, the image is the
    orthonormal inverse FFT divided by 4 (Lucent's "magic" constant), squashed to (-1, 1)
    by ``2·sigmoid(·) − 1``. With the 1/f scaling a gradient step changes low frequencies more
    than high ones: the parameterisation Lucent uses to avoid high-frequency patterns.

    Parameters
    ----------
    shape: ``(C, H, W)`` of one image.
    sd: standard deviation of the starting spectrum values (Lucent: 0.01).
    decay_power: exponent of the 1/f scaling (Lucent: 1; 0 = no scaling, a plain orthonormal basis).
    """

    def __init__(self, shape, sd: float = 0.01, decay_power: float = 1.0):
        self.shape = _check_shape(shape)
        if not _is_num(sd) or sd <= 0:
            raise _bad("sd", sd, "a finite number > 0")
        if not _is_num(decay_power) or decay_power < 0:
            raise _bad("decay_power", decay_power, "a finite number ≥ 0")
        self.sd, self.decay_power = float(sd), float(decay_power)
        _, h, w = self.shape
        freqs = rfft2_frequencies(h, w)  # (H, W//2+1)
        self.scale = 1.0 / freqs.clamp(min=1.0 / max(h, w)) ** self.decay_power  # (H, W//2+1)

    @property
    def latent_shape(self) -> tuple:
        c, h, w = self.shape
        return (c, h, w // 2 + 1, 2)

    def sample_latents(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        if not _is_int(n) or n < 1:
            raise _bad("n", n, "an integer ≥ 1")
        u = torch.randn((n, *self.latent_shape), generator=generator) * self.sd  # (n, C, H, W//2+1, 2)
        return u.to(device) if device is not None else u

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 5 or tuple(u.shape[1:]) != self.latent_shape:
            raise _bad("u", tuple(u.shape), f"a tensor of shape (B, {', '.join(map(str, self.latent_shape))})")
        _, h, w = self.shape
        scale = self.scale.to(u.device, u.dtype)[None, None, :, :, None]  # (1, 1, H, W//2+1, 1)
        spec = torch.view_as_complex((u * scale).contiguous())  # (B, C, H, W//2+1)
        img = torch.fft.irfft2(spec, s=(h, w), norm="ortho") / 4.0  # (B, C, H, W)
        return _to_image_range(img)

    def __repr__(self):
        return f"FourierPrior(shape={self.shape}, sd={self.sd:g}, decay_power={self.decay_power:g})"


PARAMETERIZATIONS = ("pixel", "fourier")


def pixel_invariants(
    objective: Objective | Callable[[torch.Tensor], torch.Tensor],
    query: torch.Tensor,
    config: InvariantConfig | None = None,
    *,
    parameterization: str = "pixel",
    sd: float = 0.01,
    decay_power: float = 1.0,
    target: torch.Tensor | None = None,
) -> InvariantResult:
    """Pixel-space optimisation of x itself with Algorithm 1's loop (no diffusion prior).

    ``parameterization``: ``"pixel"`` (:class:`PixelPrior`) or ``"fourier"``
    (:class:`FourierPrior`). Everything else — loss with its optional low-pass term, optimiser,
    τ, budget, early stop, seed — comes from ``config`` exactly as for EquiDiff.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise _bad("parameterization", parameterization, f"one of {PARAMETERIZATIONS}")
    if not isinstance(query, torch.Tensor) or query.dim() != 4 or query.shape[0] != 1:
        shape = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__
        raise _bad("query", shape, "one image with a batch dimension, shape (1, C, H, W)")
    shape = tuple(query.shape[1:])
    prior = PixelPrior(shape, sd) if parameterization == "pixel" else FourierPrior(shape, sd, decay_power)
    return find_invariants(objective, query, prior, config, target=target)


# --------------------------------------------------------------------------------------------
# Guidance during sampling (DPS-style), one pass
# --------------------------------------------------------------------------------------------


_NORMALIZE = ("gradient", "loss", "none")


@dataclass
class GuidanceConfig:
    """Settings of :func:`guided_sampling`. Every field is validated; a bad value raises ``ValueError``."""

    n_samples: int = 32  # number of samples (independent starting noises z_T)
    scale: float = 1.0  # ζ: step size of the guidance term (DPS' normalised step)
    tau: float = 0.01  # loss threshold τ used to report success (guidance cannot stop early)
    lowpass_cutoff: Optional[float] = None  # cutoff of the low-pass term in the guidance loss; None: none
    reduction: str = "sum"  # "sum" or "mean" over the m measured values, as in InvariantConfig
    # step rule: "loss": ζ ∇ℓ / sqrt(ℓ) (DPS: ζ_t = ζ / ||y − A(x̂_0)||); "gradient": ζ sqrt(ℓ) ∇ℓ / ||∇ℓ||
    # (a step of length ζ·sqrt(ℓ) along the gradient, whatever its size: immune to a saturated softmax,
    # whose gradient vanishes); "none": ζ ∇ℓ
    normalize: str = "gradient"
    seed: int = 0  # seed of the torch.Generator that draws z_T (the same draw as InvariantConfig's)

    def __post_init__(self):
        if not _is_int(self.n_samples) or self.n_samples < 1:
            raise _bad("n_samples", self.n_samples, "an integer ≥ 1")
        if not _is_num(self.scale) or self.scale < 0:
            raise _bad("scale", self.scale, "a finite number ≥ 0 (0 = unguided sampling)")
        if not _is_num(self.tau) or self.tau <= 0:
            raise _bad("tau", self.tau, "a finite number > 0")
        if self.lowpass_cutoff is not None and (
            not _is_num(self.lowpass_cutoff) or not (0 < self.lowpass_cutoff <= 1)
        ):
            raise _bad("lowpass_cutoff", self.lowpass_cutoff, "None or a number in (0, 1] (fraction of Nyquist)")
        if self.reduction not in ("sum", "mean"):
            raise _bad("reduction", self.reduction, "one of ('sum', 'mean')")
        if self.normalize not in _NORMALIZE:
            raise _bad("normalize", self.normalize, f"one of {_NORMALIZE}")
        if not _is_int(self.seed) or self.seed < 0:
            raise _bad("seed", self.seed, "an integer ≥ 0")


def guided_sampling(
    objective: Objective | Callable[[torch.Tensor], torch.Tensor],
    query: torch.Tensor,
    prior,
    config: GuidanceConfig | None = None,
    *,
    z_init: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
) -> InvariantResult:
    """One guided pass of the deterministic DDIM chain of ``prior`` (a :class:`~equidiff.core.priors.PixelDDIMPrior`).

    At every DDIM step t (the visible diffusers loop): ε = ε_θ(x_t, t); the scheduler's step gives
    x'_{t−1} and the predicted clean image x̂_0 (clipped as the scheduler is configured); the
    per-sample invariant-set loss ℓ of x̂_0 (:func:`~equidiff.core.invariants.invariant_loss`, the
    same loss as Algorithm 1)
    is differentiated with respect to x_t, through ε_θ; then x_{t−1} = x'_{t−1} − ζ · step, with
    step = sqrt(ℓ) ∇ℓ / ||∇ℓ|| (``normalize="gradient"``, the default), ∇ℓ / sqrt(ℓ) (``"loss"``, DPS)
    or ∇ℓ (``"none"``). The returned :class:`InvariantResult` holds the final images
    (clamped to [-1, 1] if the prior clamps), their loss and ``converged = loss < τ``;
    ``history["loss_mean"]`` / ``["loss_max"]`` track ℓ(x̂_0) over the DDIM steps; ``z`` and
    ``z_init`` are the starting noises (nothing is optimised); ``steps_to_converge`` is 0 where
    converged, else -1.
    """
    cfg = config or GuidanceConfig()
    if not isinstance(cfg, GuidanceConfig):
        raise TypeError(f"config must be a GuidanceConfig, got {type(cfg).__name__}")
    for attr in ("unet", "scheduler", "num_steps", "sample_latents", "finish"):
        if not hasattr(prior, attr):
            raise _bad("prior", type(prior).__name__, "a PixelDDIMPrior (a DDIM chain over a pixel-space UNet)")
    if not isinstance(query, torch.Tensor) or query.dim() < 2 or query.shape[0] != 1:
        shape = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__
        raise _bad("query", shape, "one input with a batch dimension, shape (1, ...)")
    with torch.no_grad():
        tgt = (objective(query) if target is None else target).detach().reshape(1, -1)  # (1, m)
    gen = torch.Generator().manual_seed(cfg.seed)
    if z_init is None:
        z_init = prior.sample_latents(cfg.n_samples, gen)  # same draw as find_invariants with this seed
    if z_init.shape[0] != cfg.n_samples:
        raise _bad("z_init", tuple(z_init.shape), f"{cfg.n_samples} latents (config.n_samples)")

    t0 = time.perf_counter()
    sched = prior.scheduler
    sched.set_timesteps(prior.num_steps)
    x = z_init.detach().clone()  # (N, C, H, W) x_T
    history = {"loss_mean": [], "loss_max": [], "n_active": [], "z_norm_mean": []}
    for t in sched.timesteps:
        x = x.detach().requires_grad_(True)
        eps = prior.unet(x, t).sample  # (N, C, H, W) ε_θ(x_t, t)
        out = sched.step(eps, t, x, eta=0.0)
        x0 = out.pred_original_sample.clamp(-1, 1)  # (N, C, H, W) x̂_0(x_t)
        loss = invariant_loss(objective, x0, tgt, cfg.lowpass_cutoff, cfg.reduction)  # (N,)
        (grad,) = torch.autograd.grad(loss.sum(), x)  # (N, C, H, W) ∇_{x_t} ℓ(x̂_0)
        with torch.no_grad():
            shape = (-1, *([1] * (grad.dim() - 1)))
            root = loss.detach().clamp(min=1e-12).sqrt().view(shape)  # (N, 1, 1, 1) sqrt(ℓ)
            if cfg.normalize == "loss":
                grad = grad / root
            elif cfg.normalize == "gradient":
                grad = root * grad / grad.flatten(1).norm(dim=1).clamp(min=1e-30).view(shape)
            x = out.prev_sample.detach() - cfg.scale * grad  # x_{t−1}
        history["loss_mean"].append(float(loss.detach().mean()))
        history["loss_max"].append(float(loss.detach().max()))
        history["n_active"].append(cfg.n_samples)
        history["z_norm_mean"].append(float(x.flatten(1).norm(dim=1).mean()))
    x = prior.finish(x.detach())  # clamp as the prior does
    with torch.no_grad():
        meas = objective(x)
        loss = invariant_loss(objective, x, tgt, cfg.lowpass_cutoff, cfg.reduction)
    converged = (loss < cfg.tau).cpu()
    steps = torch.where(converged, 0, -1).long()
    icfg = InvariantConfig(n_samples=cfg.n_samples, steps=0, tau=cfg.tau, lowpass_cutoff=cfg.lowpass_cutoff,
                           reduction=cfg.reduction, seed=cfg.seed)
    return InvariantResult(
        x=x, z=z_init, z_init=z_init, measurements=meas, target=tgt, loss=loss.cpu(), converged=converged,
        steps_to_converge=steps, history=history, config=icfg,
        description=getattr(objective, "description", "objective"), seconds=time.perf_counter() - t0,
    )
