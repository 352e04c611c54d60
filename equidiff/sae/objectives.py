"""SAE features of a ViT as objectives (thesis Section 4.3: IS(x*) = {x : f(x) = f(x*)}).

A feature's activation on an image is, by default, its activation on the class token — the token
the ViT classifies from (``reduce="cls"``; also ``"mean"`` or ``"max"`` over the tokens, or the
whole per-token map ``"tokens"``). :func:`sae_feature` turns it into an
:class:`~equidiff.core.objectives.Objective`; :func:`sae_code` is the "full SAE code" variant (all
``d_sae`` features at once). Read on the class token, features are far more selective for the
digit classes than averaged over the tokens: on the default digits SAE, of the features active on
5–50 % of the training digits, 9 of 72 have a selectivity above 0.9 on the class token, 0 of 48
averaged.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from equidiff._validate import bad, check_images
from equidiff.core.objectives import Objective
from equidiff.core.units import is_index
from equidiff.sae.hooks import check_compatible, run_to_block
from equidiff.sae.model import SparseAutoencoder

__all__ = ["REDUCTIONS", "reduce_tokens", "check_reduce", "feature_indices", "encode_images", "sae_feature",
           "sae_code", "image_codes"]

REDUCTIONS = ("mean", "max", "cls", "tokens")  # how a feature's per-token activations become one measurement


def reduce_tokens(codes: torch.Tensor, reduce: str) -> torch.Tensor:
    """(B, T, m) per-token activations -> (B, m) ("mean", "max", "cls") or (B, T·m) ("tokens")."""
    if reduce == "mean":
        return codes.mean(1)
    if reduce == "max":
        return codes.amax(1)
    if reduce == "cls":
        return codes[:, 0]
    return codes.transpose(1, 2).flatten(1)  # "tokens": feature-major, (B, m·T)


def check_reduce(reduce, name: str = "reduce", per_image: bool = False) -> None:
    """``reduce`` must be one of :data:`REDUCTIONS` (``per_image``: one value per image and feature, so
    not ``"tokens"``); the error names ``name``."""
    if per_image and reduce not in REDUCTIONS[:3]:
        raise bad(name, reduce, "'mean', 'max' or 'cls' (one value per image and feature)")
    if reduce not in REDUCTIONS:
        raise bad(name, reduce, f"one of {REDUCTIONS}")


def feature_indices(features, d_sae: int) -> list[int]:
    """One feature index or a non-empty list of them, each in [0, d_sae), as a list of ints."""
    feats = [features] if is_index(features) and features >= 0 else features
    if not isinstance(feats, (list, tuple)) or not feats or not all(is_index(f) and 0 <= f < d_sae for f in feats):
        raise bad("features", features, f"a feature index or a non-empty list of indices in [0, {d_sae - 1}]")
    return [int(f) for f in feats]


def encode_images(vit: nn.Module, layer: int, sae: SparseAutoencoder, x: torch.Tensor,
                  surrogate_gradient: bool = False) -> torch.Tensor:
    """The SAE code of every token of images ``x``: (B, tokens, d_sae), differentiable in ``x``.

    ``surrogate_gradient=True`` keeps the values but passes the gradient straight through the
    activation function (the gradient of the pre-activation, as if the activation were the
    identity; a straight-through estimator). A feature that is inactive (ReLU / TopK output 0) on
    a sample then still tells the optimiser which way raises it; the exact gradient there is 0, so a
    sample that starts where the feature is silent would never move. Measured values, and so every
    loss and success rate, are the exact activations either way.
    """
    pre = sae.encode_pre(run_to_block(vit, layer, x))  # (B, T, d_sae)
    act = sae.activation(pre)
    if surrogate_gradient:
        return pre + (act - pre).detach()
    return act


def sae_feature(vit: nn.Module, layer: int, sae: SparseAutoencoder, features, reduce: str = "cls",
                name: Optional[str] = None, surrogate_gradient: bool = True) -> Objective:
    """SAE feature activation(s) of the ViT as an objective: (B, m).

    ``features``: one index or a list; ``reduce``: ``"cls"`` (default; the feature's activation on
    the class token, the ViT's summary of the image: one value per feature), ``"mean"`` (averaged
    over all tokens), ``"max"`` or ``"tokens"`` (the whole per-token map: tokens values per
    feature). The ViT's block output is read with a hook that exists only during each call.
    ``surrogate_gradient``: see :func:`encode_images` (values are exact either way).
    """
    check_compatible(sae, vit, layer)
    check_reduce(reduce)
    feats = feature_indices(features, sae.d_sae)
    idx = torch.as_tensor(feats)

    def fn(x: torch.Tensor) -> torch.Tensor:
        codes = encode_images(vit, layer, sae, x, surrogate_gradient)
        return reduce_tokens(codes[..., idx.to(x.device)], reduce)

    what = f"feature {feats[0]}" if len(feats) == 1 else f"features {feats}"
    # the ViT and the SAE must be in eval mode: refused here and at every call, never changed
    return Objective(fn, f"SAE {what} of {name or type(vit).__name__}.blocks.{layer} ({reduce})", vit, (sae,))


def sae_code(vit: nn.Module, layer: int, sae: SparseAutoencoder, reduce: str = "cls",
             name: Optional[str] = None, surrogate_gradient: bool = True) -> Objective:
    """The full SAE code as an objective: all ``d_sae`` feature activations, (B, d_sae) (or (B, d_sae·T)
    with ``reduce="tokens"``): the invariant set of every feature at once."""
    check_compatible(sae, vit, layer)
    check_reduce(reduce)
    return Objective(lambda x: reduce_tokens(encode_images(vit, layer, sae, x, surrogate_gradient), reduce),
                     f"full SAE code ({sae.d_sae} features) of {name or type(vit).__name__}.blocks.{layer} ({reduce})",
                     vit, (sae,))


@torch.no_grad()
def image_codes(vit: nn.Module, layer: int, sae: SparseAutoencoder, images: torch.Tensor, reduce: str = "cls",
                batch: int = 256) -> torch.Tensor:
    """Image-level SAE codes (N, d_sae) of ``images`` (exact activations, one value per image and feature),
    float32 on CPU; images go to the ViT's device ``batch`` at a time."""
    check_images(images, channels=None)
    check_reduce(reduce, per_image=True)
    check_compatible(sae, vit, layer)
    device = next(vit.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        out.append(reduce_tokens(encode_images(vit, layer, sae, images[i : i + batch].to(device)), reduce).float().cpu())
    return torch.cat(out)
