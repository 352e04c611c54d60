"""Differentiable deterministic diffusion samplers ``z_T -> x`` over diffusers models.

A *prior* is the map from a starting noise ``z_T`` to an image ``x`` that thesis Algorithm 1
optimises through (lines 9-14: reset to ``z_T``, run the checkpointed denoising loop, decode).
Any object with the two methods of :class:`Prior` works with
:func:`equidiff.core.invariants.find_invariants`:

* ``sample_latents(n, generator, device=None)`` draws ``n`` starting latents ``z_T ~ N(0, I)``;
* ``prior(z)`` maps them to images, differentiably in ``z``.

:class:`IdentityPrior` is the "no prior" case (x = z). Two diffusion backbones are provided,
both deterministic DDIM (η = 0, :class:`DDIMChain`) on diffusers' own
:class:`~diffusers.DDIMScheduler` (built from the given scheduler's config, as
``DDIMPipeline`` does), so with no optimisation each equals the matching diffusers pipeline:

* :class:`PixelDDIMPrior` — a pixel-space ``UNet2DModel`` (the embedded CPU world);
  ``prior(z)`` equals ``DDIMPipeline(unet, scheduler)(eta=0.0)`` for the same noise.
* :class:`LatentDiTPrior` — a latent ``DiTTransformer2DModel`` + ``AutoencoderKL`` (the paper
  world, e.g. ``facebook/DiT-XL-2-256``), unconditional through the null class;
  ``prior(z)`` equals ``DiTPipeline(transformer, vae, ddim)(class_labels=[null]*B,
  guidance_scale=1)`` for the same noise.

Both return images in [-1, 1] (``x.clamp(-1, 1)``, the [-1, 1] form of the pipelines'
``(x / 2 + 0.5).clamp(0, 1)``), shape ``(B, C, H, W)``.

Memory: with ``checkpointing=True`` every denoising step (network + scheduler update) runs under
``torch.utils.checkpoint`` (non-reentrant), so the autograd graph keeps only each step's input
``x_t`` (one latent per step) instead of every activation of the network; the backward pass
recomputes one step at a time. The thesis uses this to backpropagate through the whole chain
(Algorithm 1, line 11: ``with gradient_checkpointing()``).

The prior is a *fixed* map whose only input is ``z_T``: the constructor puts the networks in
eval mode and turns off their parameters' ``requires_grad``, so a backward pass computes
``dL/dz_T`` only (no parameter gradients are computed or accumulated on the model).
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch
from torch.utils.checkpoint import checkpoint

from equidiff._validate import bad as _bad, is_int as _is_int

__all__ = ["Prior", "IdentityPrior", "DDIMChain", "PixelDDIMPrior", "LatentDiTPrior"]


@runtime_checkable
class Prior(Protocol):
    """What :func:`~equidiff.core.invariants.find_invariants` needs from a prior ``z_T -> x``."""

    def sample_latents(
        self, n: int, generator: torch.Generator, device: Optional[torch.device] = None
    ) -> torch.Tensor:
        """Draw ``n`` starting latents ``z_T`` (n, ...) from ``generator``."""
        ...

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents (B, ...) to samples (B, ...), differentiably in ``z``."""
        ...


class IdentityPrior:
    """The "no prior" case: x = z. Starting points are drawn inside a box or from N(0, scale²)."""

    def __init__(self, shape, init: str = "normal", scale: float = 1.0, low=-1.0, high=1.0):
        if init not in ("normal", "uniform"):
            raise _bad("init", init, "'normal' or 'uniform'")
        self.shape = tuple(int(s) for s in shape)
        self.init, self.scale, self.low, self.high = init, float(scale), low, high

    def sample_latents(self, n: int, generator: torch.Generator, device=None) -> torch.Tensor:
        z = torch.rand if self.init == "uniform" else torch.randn
        out = z((n, *self.shape), generator=generator)
        if self.init == "uniform":
            low = torch.as_tensor(self.low, dtype=out.dtype)
            high = torch.as_tensor(self.high, dtype=out.dtype)
            out = low + (high - low) * out
        else:
            out = out * self.scale
        return out.to(device) if device is not None else out

    @property
    def image_shape(self) -> tuple:
        """Shape of one sample x (= z): the query's shape without its batch dimension."""
        return self.shape

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def __repr__(self):
        return f"IdentityPrior(shape={self.shape}, init={self.init!r})"


def _ddim_from(scheduler):
    """A private DDIMScheduler built from ``scheduler``'s config (clip_sample etc. kept as configured).

    The caller's scheduler is never touched: ``set_timesteps`` mutates a scheduler, and the
    checkpointed steps re-read the scheduler's state during backward, so each prior owns its copy.
    """
    from diffusers import DDIMScheduler

    config = getattr(scheduler, "config", None)
    if config is None or "num_train_timesteps" not in config:
        raise ValueError(
            f"scheduler must be a diffusers scheduler (with a config holding num_train_timesteps), "
            f"got {type(scheduler).__name__}"
        )
    return DDIMScheduler.from_config(config)


def _check_num_steps(num_steps, num_train_timesteps: int) -> int:
    if not _is_int(num_steps) or not (1 <= num_steps <= num_train_timesteps):
        raise ValueError(
            f"num_steps must be an integer in [1, {num_train_timesteps}] (1 to the scheduler's "
            f"num_train_timesteps), got {num_steps!r}"
        )
    return num_steps


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    # A fixed map z_T -> x: deterministic (eval: no dropout / label dropout) and no parameter grads.
    return module.eval().requires_grad_(False)


class DDIMChain:
    """A deterministic DDIM chain ``z_T -> x``: the machinery every DDIM prior shares.

    Latent checks, seeded latents, the (optionally checkpointed) step runner and :meth:`finish`.
    A subclass sets ``latent_shape``, ``_device``, ``_dtype``, calls ``_setup`` in its constructor
    and runs the visible diffusers loop in ``__call__`` (:class:`PixelDDIMPrior`,
    :class:`LatentDiTPrior`, the 2D prior of :mod:`equidiff.worlds.circles`).
    """

    num_steps: int
    checkpointing: bool
    clamp: bool

    def _setup(self, scheduler, num_steps, checkpointing, clamp):
        self.scheduler = _ddim_from(scheduler)  # private DDIMScheduler, η = 0 always
        self.num_steps = _check_num_steps(num_steps, self.scheduler.config.num_train_timesteps)
        if not isinstance(checkpointing, bool):
            raise ValueError(f"checkpointing must be True or False, got {checkpointing!r}")
        if not isinstance(clamp, bool):
            raise ValueError(f"clamp must be True or False, got {clamp!r}")
        self.checkpointing = checkpointing
        self.clamp = clamp

    # subclasses define: latent_shape, _device, _dtype
    @property
    def latent_shape(self) -> tuple:
        raise NotImplementedError

    def sample_latents(
        self, n: int, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None
    ) -> torch.Tensor:
        """Draw ``n`` starting latents ``z_T ~ N(0, I)``, shape ``(n, *latent_shape)``.

        Drawn on the generator's device (CPU for a CPU generator) in the model's dtype, then moved
        to ``device`` (default: the model's device) — the same draw as diffusers' ``randn_tensor``,
        so a pipeline given an equally seeded generator starts from the same noise.
        """
        if not _is_int(n) or n < 1:
            raise ValueError(f"n must be an integer ≥ 1, got {n!r}")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn((n, *self.latent_shape), generator=generator, device=gen_device, dtype=self._dtype)
        return z.to(self._device if device is None else device)  # (n, C, H, W)

    def _check_latents(self, z) -> torch.Tensor:
        shape = self.latent_shape
        dims = ", ".join(map(str, shape))  # e.g. "4, 32, 32"
        if not isinstance(z, torch.Tensor):
            raise ValueError(f"z must be a torch.Tensor of shape (B, {dims}), got {type(z).__name__}")
        if z.dim() != 1 + len(shape) or tuple(z.shape[1:]) != shape or z.shape[0] < 1:
            raise ValueError(f"z must have shape (B, {dims}) with B ≥ 1, got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")
        return z.to(device=self._device, dtype=self._dtype)  # differentiable cast

    def _run(self, fn, *args) -> torch.Tensor:
        """``fn(*args)``, under per-call gradient checkpointing when enabled and grad is on."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The chain's output as an image: clamped to [-1, 1] when the prior clamps (``clamp=True``)."""
        # The pipelines return (x / 2 + 0.5).clamp(0, 1); its [-1, 1] form is x.clamp(-1, 1).
        return x.clamp(-1.0, 1.0) if self.clamp else x


class PixelDDIMPrior(DDIMChain):
    """Deterministic DDIM (η = 0) over a pixel-space ``UNet2DModel``: ``z_T -> x``, differentiable.

    Parameters
    ----------
    unet: the noise-prediction network (``UNet2DModel``); its device and dtype are used.
    scheduler: any diffusers scheduler (DDPM, DDIM, ...); a private ``DDIMScheduler`` is built
        from its config (``clip_sample`` and the other settings kept as configured).
    num_steps: number of DDIM steps T, an integer in [1, num_train_timesteps].
    checkpointing: checkpoint every denoising step so memory does not grow with T (off: keep all
        activations, faster backward, memory ∝ T).
    clamp: return ``x.clamp(-1, 1)`` as ``DDIMPipeline`` does (True) or the raw chain output,
        whose gradient does not vanish at saturated pixels (False).

    ``prior(z)`` equals ``DDIMPipeline(unet, scheduler)(num_inference_steps=num_steps, eta=0.0,
    output_type="pt").images * 2 - 1`` when the pipeline starts from the same noise ``z``.
    """

    def __init__(self, unet, scheduler, num_steps: int = 10, checkpointing: bool = True, clamp: bool = True):
        cfg = unet.config
        if cfg.out_channels != cfg.in_channels:
            raise ValueError(
                f"unet.config.out_channels must equal in_channels ({cfg.in_channels}) for an ε-prediction "
                f"DDIM chain, got {cfg.out_channels}"
            )
        self.unet = _freeze(unet)
        self._setup(scheduler, num_steps, checkpointing, clamp)

    @property
    def latent_shape(self) -> tuple:
        """``(C, H, W)`` of ``z_T`` (and of the output image)."""
        cfg = self.unet.config
        size = cfg.sample_size
        hw = (size, size) if _is_int(size) else tuple(size)
        return (cfg.in_channels, *hw)

    @property
    def image_shape(self) -> tuple:
        """``(C, H, W)`` of one sample x (pixel space: the shape of ``z_T``); a query must have it."""
        return self.latent_shape

    @property
    def _device(self) -> torch.device:
        return self.unet.device

    @property
    def _dtype(self) -> torch.dtype:
        return self.unet.dtype

    def _step(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One DDIM step x_t -> x_{t-1}; pure (reads only the frozen unet and the fixed scheduler)."""
        eps = self.unet(x, t).sample  # (B, C, H, W) predicted noise ε_θ(x_t, t)
        return self.scheduler.step(eps, t, x, eta=0.0).prev_sample  # (B, C, H, W)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Map starting noise ``z`` (B, C, H, W) to images (B, C, H, W) in [-1, 1]."""
        # Algorithm 1, lines 9-14: reset to z_T, checkpointed denoising loop (pixel space: no decode).
        x = self._check_latents(z)  # (B, C, H, W) line 9: x_T = z_T
        self.scheduler.set_timesteps(self.num_steps)
        for t in self.scheduler.timesteps:  # lines 10-13, t = T, ..., 1
            x = self._run(self._step, x, t)  # (B, C, H, W) x_{t-1}, checkpointed (line 11)
        return self.finish(x)

    def __repr__(self):
        return (
            f"PixelDDIMPrior(latent_shape={self.latent_shape}, num_steps={self.num_steps}, "
            f"checkpointing={self.checkpointing}, clamp={self.clamp})"
        )


class LatentDiTPrior(DDIMChain):
    """Deterministic DDIM (η = 0) over a latent ``DiTTransformer2DModel`` and ``AutoencoderKL``.

    Parameters
    ----------
    transformer: the DiT (``DiTTransformer2DModel``); its device and dtype set those of ``z_T``.
    vae: the ``AutoencoderKL`` that decodes latents to images.
    scheduler: any diffusers scheduler; a private ``DDIMScheduler`` is built from its config.
    num_steps: number of DDIM steps T, an integer in [1, num_train_timesteps].
    checkpointing: checkpoint every denoising step and the decode.
    class_label: ``None`` (default) for unconditional sampling through the null class, id
        ``transformer.config.num_embeds_ada_norm`` (1000 for DiT-XL-2-256: the class-dropout row
        of the label table, the thesis' C_t = ∅); or a class id in [0, num_embeds_ada_norm].
    clamp: return ``x.clamp(-1, 1)`` as ``DiTPipeline`` does (True) or the raw decode (False).

    The step replicates ``DiTPipeline.__call__`` with ``guidance_scale=1`` (no batch duplication,
    no classifier-free guidance): timesteps as a tensor expanded to the batch, learned-sigma
    channels dropped, latents scaled by ``1 / vae.config.scaling_factor`` before decoding. So
    ``prior(z)`` equals ``DiTPipeline(transformer, vae, DDIMScheduler)(class_labels=[null]*B,
    guidance_scale=1, output_type="pt").images * 2 - 1`` for the same starting noise. (DiTPipeline
    uses whatever scheduler it is given; parity holds when that is the DDIM scheduler.)
    """

    def __init__(
        self,
        transformer,
        vae,
        scheduler,
        num_steps: int = 10,
        checkpointing: bool = True,
        class_label: Optional[int] = None,
        clamp: bool = True,
    ):
        n_classes = transformer.config.num_embeds_ada_norm
        if not _is_int(n_classes):
            raise ValueError(
                f"transformer.config.num_embeds_ada_norm must be the number of classes (an integer), got {n_classes!r}"
            )
        if class_label is None:
            class_label = n_classes  # the null class (label-dropout row): unconditional
        if not _is_int(class_label) or not (0 <= class_label <= n_classes):
            raise ValueError(
                f"class_label must be None (the null class {n_classes}) or an integer in [0, {n_classes}], "
                f"got {class_label!r}"
            )
        if vae.config.latent_channels != transformer.config.in_channels:
            raise ValueError(
                f"vae.config.latent_channels must equal transformer.config.in_channels "
                f"({transformer.config.in_channels}), got {vae.config.latent_channels}"
            )
        self.transformer = _freeze(transformer)
        self.vae = _freeze(vae)
        self.class_label = class_label
        self._setup(scheduler, num_steps, checkpointing, clamp)

    @property
    def null_class(self) -> int:
        """The class id that means "no class" (``num_embeds_ada_norm``; 1000 for DiT-XL-2-256)."""
        return self.transformer.config.num_embeds_ada_norm

    @property
    def latent_shape(self) -> tuple:
        """``(C, h, w)`` of ``z_T`` in the VAE's latent space (e.g. (4, 32, 32) for DiT-XL-2-256)."""
        cfg = self.transformer.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    @property
    def image_shape(self) -> tuple:
        """``(C, H, W)`` of one decoded sample x: the VAE upsamples the latent by 2 per block after its first
        (diffusers' ``vae_scale_factor``; (3, 256, 256) for DiT-XL-2-256); a query must have it."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = self.transformer.config.sample_size * factor
        return (self.vae.config.out_channels, size, size)

    @property
    def _device(self) -> torch.device:
        return self.transformer.device

    @property
    def _dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def _step(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One DDIM step on the latents, as in DiTPipeline with guidance_scale = 1; pure."""
        b, c = latents.shape[:2]
        latents = self.scheduler.scale_model_input(latents, t)  # identity for DDIM, kept as the pipeline has it
        timesteps = t.reshape(1).to(latents.device).expand(b)  # (B,) t broadcast to the batch
        # (B,) class ids; the null class by default: Algorithm 1, line 4, C_t = ∅
        labels = torch.full((b,), self.class_label, dtype=torch.long, device=latents.device)
        noise_pred = self.transformer(latents, timestep=timesteps, class_labels=labels).sample
        # learned sigma: (B, 2C, h, w) -> ε is the first C channels
        if self.transformer.config.out_channels // 2 == c:
            eps, _ = torch.split(noise_pred, c, dim=1)  # (B, C, h, w)
        else:
            eps = noise_pred  # (B, C, h, w)
        return self.scheduler.step(eps, t, latents, eta=0.0).prev_sample  # (B, C, h, w)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = 1 / self.vae.config.scaling_factor * latents  # undo the latent scaling (÷ 0.18215)
        return self.vae.decode(latents.to(self.vae.dtype)).sample  # (B, 3, H, W)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Map starting latents ``z`` (B, C, h, w) to images (B, 3, H, W) in [-1, 1]."""
        # Algorithm 1, lines 9-14: reset to z_T, checkpointed denoising loop, decode.
        latents = self._check_latents(z)  # (B, C, h, w) line 9: z = z_T
        self.scheduler.set_timesteps(self.num_steps)
        for t in self.scheduler.timesteps:  # lines 10-13, t = T, ..., 1
            latents = self._run(self._step, latents, t)  # (B, C, h, w), checkpointed (line 11)
        x = self._run(self._decode, latents)  # (B, 3, H, W) line 14: x = D(z)
        return self.finish(x)

    def __repr__(self):
        return (
            f"LatentDiTPrior(latent_shape={self.latent_shape}, num_steps={self.num_steps}, "
            f"class_label={self.class_label}, checkpointing={self.checkpointing}, clamp={self.clamp})"
        )
