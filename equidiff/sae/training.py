"""Training and evaluating an SAE on a ViT's residual-stream tokens (deterministic, from a seed).

:func:`train_sae` trains on the tokens it is given (which images, which augmentations: the world's
recipe, e.g. :mod:`equidiff.worlds.digits.sae`); :func:`evaluate_sae` and :func:`quality_report`
give the three numbers that describe an SAE — variance explained, mean L0, dead-feature fraction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from equidiff._validate import bad, is_int, is_num
from equidiff.sae.hooks import check_compatible, collect_activations
from equidiff.sae.model import SAE_KINDS, SparseAutoencoder
from equidiff.training import Batches, deterministic, lr_lambda, progress_bar

__all__ = ["SAETrainConfig", "train_sae", "evaluate_sae", "quality_report"]


@dataclass
class SAETrainConfig:
    """An SAE on a ViT of this project. Every field is validated; a bad value raises ``ValueError``.
    (The fields are hashed into the SAE's cache folder name: renaming one retrains every SAE.)"""

    vit: str = "digits-vit"  # preset of the ViT whose activations are encoded (a zoo preset of the digits world)
    layer: int = 2  # the SAE reads the residual stream after vit.blocks[layer] (hook_resid_post)
    kind: str = "relu"  # "relu" (ReLU + L1 penalty) or "topk" (TopK, no penalty)
    expansion: int = 4  # d_sae = expansion × d_in (SAELens / Prisma's expansion factor)
    l1_coefficient: float = 0.3  # ReLU only: weight of the L1 penalty (in units of the activations' scale)
    k: int = 8  # TopK only: active features per token
    train_steps: int = 3000  # optimiser steps
    batch_size: int = 512  # tokens per step
    lr: float = 2e-3  # Adam learning rate (linear warm-up, cosine decay)
    warmup_steps: int = 100  # linear warm-up steps
    views: int = 4  # copies of each training image (the first unshifted, the others shifted) to collect tokens from
    max_shift: int = 1  # shift of those copies, pixels in each direction (0: all copies identical)
    seed: int = 0  # seeds the init, the batches and the shifts

    def __post_init__(self):
        if not isinstance(self.vit, str) or not self.vit:
            raise bad("vit", self.vit, "the name of a ViT preset of equidiff.zoo (e.g. 'digits-vit')")
        if not is_int(self.layer) or self.layer < 0:
            raise bad("layer", self.layer, "an integer ≥ 0 (a block of the ViT)")
        if self.kind not in SAE_KINDS:
            raise bad("kind", self.kind, f"one of {SAE_KINDS}")
        if not is_int(self.expansion) or self.expansion < 1:
            raise bad("expansion", self.expansion, "an integer ≥ 1")
        if not is_num(self.l1_coefficient) or self.l1_coefficient < 0:
            raise bad("l1_coefficient", self.l1_coefficient, "a finite number ≥ 0")
        if not is_int(self.k) or self.k < 1:
            raise bad("k", self.k, "an integer ≥ 1")
        for name in ("train_steps", "batch_size", "views"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, getattr(self, name), "an integer ≥ 1")
        if not is_num(self.lr) or self.lr <= 0:
            raise bad("lr", self.lr, "a finite number > 0")
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise bad("warmup_steps", self.warmup_steps, "an integer ≥ 0")
        if not is_int(self.max_shift) or not (0 <= self.max_shift <= 4):
            raise bad("max_shift", self.max_shift, "an integer in [0, 4] (pixels)")
        if not is_int(self.seed) or self.seed < 0:
            raise bad("seed", self.seed, "an integer ≥ 0")


def train_sae(tokens: torch.Tensor, cfg: SAETrainConfig, *, progress: bool = False,
              vit_name: Optional[str] = None):
    """Train an SAE on ``tokens`` (M, d_in), a ViT's activations after block ``cfg.layer``; returns
    ``(sae, info)``.

    Adam on the normalised reconstruction error ``||x − x̂||² / v`` (v: the tokens' mean squared
    distance from their mean, so 1 − loss is the variance explained) plus, for a ReLU SAE,
    ``l1_coefficient · Σ_i f_i / √v`` (the code's L1 norm in units of the activations' scale; the
    decoder rows have unit norm, so ``f_i`` is the length of feature i's contribution). Init as
    SAELens / Prisma: ``W_enc = W_dec^T`` with unit-norm random rows, ``b_dec`` = the mean token,
    ``b_enc = 0``. After every step the decoder rows are renormalised (their gradient's radial part
    removed first). All randomness from ``cfg.seed``.
    """
    if not isinstance(cfg, SAETrainConfig):
        raise TypeError(f"cfg must be an SAETrainConfig, got {type(cfg).__name__}")
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise bad("tokens", shape, "a tensor (M, d_in) of activations")
    t0 = time.perf_counter()
    d_in = tokens.shape[1]
    mean = tokens.mean(0)
    v = float(((tokens - mean) ** 2).sum(1).mean())  # mean squared distance from the mean token
    gen = torch.Generator().manual_seed(cfg.seed)
    with deterministic(cfg.seed):
        sae = SparseAutoencoder(d_in, cfg.expansion * d_in, cfg.kind, cfg.k if cfg.kind == "topk" else None,
                                hook_name=f"blocks.{cfg.layer}.hook_resid_post", layer=cfg.layer,
                                model_name=vit_name)
        with torch.no_grad():
            w = torch.randn(sae.d_sae, d_in, generator=gen)
            sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.t())
            sae.b_dec.copy_(mean)
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.train_steps))
        batches = Batches(len(tokens), cfg.batch_size, gen)
        bar = progress_bar(cfg.train_steps, f"training {cfg.kind} SAE on {vit_name or 'ViT'} block {cfg.layer}",
                           progress)
        history = []
        for step in range(cfg.train_steps):
            x = tokens[batches.next()]  # (B, d_in)
            f = sae.encode(x)  # (B, d_sae)
            mse = ((sae.decode(f) - x) ** 2).sum(1).mean() / v  # normalised reconstruction error
            loss = mse
            if cfg.kind == "relu":
                loss = loss + cfg.l1_coefficient * f.sum(1).mean() / v**0.5
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            sched.step()
            sae.set_decoder_norm_to_unit_norm()
            history.append(float(mse.detach()))
            bar.update(1)
            if step % 100 == 0 or step == cfg.train_steps - 1:
                bar.set_postfix(mse=f"{np.mean(history[-100:]):.3f}")
        bar.close()
    sae.eval().requires_grad_(False)
    info = {"train_seconds": time.perf_counter() - t0, "n_tokens": int(len(tokens)),
            "final_normalised_mse": float(np.mean(history[-100:]))}
    return sae, info


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, tokens: torch.Tensor, batch: int = 4096) -> dict:
    """Variance explained, mean L0 and dead-feature fraction of ``sae`` on ``tokens`` (M, d_in), on the SAE's device.

    * ``variance_explained`` = 1 − Σ||x − x̂||² / Σ||x − mean(x)||² over the tokens;
    * ``l0``: mean number of active features (activation > 0) per token;
    * ``dead_fraction``: share of the ``d_sae`` features never active on any of the tokens.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] != sae.d_in:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise bad("tokens", shape, f"a tensor (M, {sae.d_in}) of activations")
    tokens = tokens.to(sae.W_enc.device)
    err = tot = l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    mean = tokens.mean(0)
    for i in range(0, len(tokens), batch):
        x = tokens[i : i + batch]
        f = sae.encode(x)
        err += float(((sae.decode(f) - x) ** 2).sum())
        tot += float(((x - mean) ** 2).sum())
        active = f > 0
        l0 += float(active.sum())
        fired |= active.any(0).cpu()
    return {"variance_explained": 1.0 - err / tot, "l0": l0 / len(tokens),
            "dead_fraction": float((~fired).float().mean()), "n_tokens": int(len(tokens)),
            "d_in": sae.d_in, "d_sae": sae.d_sae, "kind": sae.kind, "k": sae.k}


@torch.no_grad()
def quality_report(vit: nn.Module, layer: int, sae: SparseAutoencoder, images: torch.Tensor,
                   dead_images: Optional[torch.Tensor] = None, batch: int = 256) -> dict:
    """The SAE's quality: variance explained and mean L0 on every token of ``images`` (the digits world:
    its 1,000 held-out test digits), dead-feature fraction over every token of ``dead_images`` (the digits
    world: its 4,000 training digits; default or the same tensor: ``images``' tokens)."""
    check_compatible(sae, vit, layer)
    t = collect_activations(vit, images, layer, batch)  # (N, T, d_in)
    q = evaluate_sae(sae, t.reshape(-1, t.shape[-1]))
    dead = q["dead_fraction"]
    if dead_images is not None and dead_images is not images:
        d = collect_activations(vit, dead_images, layer, batch)
        dead = evaluate_sae(sae, d.reshape(-1, d.shape[-1]))["dead_fraction"]
    return {"variance_explained": q["variance_explained"], "l0": q["l0"], "dead_fraction": dead,
            "tokens_per_image": int(t.shape[1]), "n_test_tokens": q["n_tokens"], "d_in": sae.d_in,
            "d_sae": sae.d_sae, "kind": sae.kind, "k": sae.k, "layer": layer}
