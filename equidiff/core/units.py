"""Units (channels of a layer, SAE features) and their alignment with concepts (thesis Appendix .5.1).

The thesis picks neurons by their *semantic alignment* r from SemanticLens [Dreyer et al., 2025],
which embeds a neuron's top-activating ImageNet patches with CLIP. Where a world labels its images
with concepts instead (the digits world: digit classes and stroke shapes), the alignment of a unit
with a concept is the point-biserial correlation of the unit's activation with the concept's 0/1
label over those images (:func:`alignment_scores`, as in Network Dissection): a correlation over
a labelled data set, on another scale than SemanticLens' CLIP similarity.

A chapter scores every (unit, concept) pair — the neuron chapter's r of a channel, the SAE
chapter's selectivity of a feature — and picks a few units that stand for *different* concepts
(:func:`greedy_distinct_pairs`). These helpers know nothing of any world.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from equidiff._validate import bad, check_images
from equidiff.core.objectives import capture_activation, resolve_module

__all__ = ["is_index", "channel_activations", "alignment_scores", "concept_columns", "greedy_distinct_pairs"]


def is_index(v) -> bool:
    """An integer (Python or numpy) that is not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@torch.no_grad()
def channel_activations(model: nn.Module, images: torch.Tensor, layer: str, *, read: str = "input",
                        reduce: str = "mean", batch: int = 512, device=None) -> torch.Tensor:
    """Every channel of ``layer`` over ``images``, on CPU in float32: (N, C) spatial means, or (N, C, H, W) maps.

    ``read="input"`` takes the module's input — pointed at a block's final activation, the
    unbounded pre-activation values the thesis' neuron objectives use; ``"output"`` its output.
    ``batch`` images go through the model at a time, moved to ``device`` (default: the model's).
    """
    if reduce not in ("mean", "map"):
        raise bad("reduce", reduce, "'mean' or 'map'")
    if read not in ("input", "output"):
        raise bad("read", read, "'input' or 'output'")
    images = check_images(images, channels=None)
    module = resolve_module(model, layer)
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    out = []
    for i in range(0, len(images), batch):
        with capture_activation(module) as store:
            model(images[i : i + batch].to(device))
        a = store[read].float()  # (B, C, H, W)
        out.append((a.mean((2, 3)) if reduce == "mean" else a).cpu())
    return torch.cat(out)


def alignment_scores(activations, concepts) -> np.ndarray:
    """Point-biserial correlation r of every unit with every concept: (C, K), values in [-1, 1].

    ``activations`` (N, C): one scalar per image and unit; ``concepts`` (N, K) 0/1 labels.
    A concept or unit that is constant over the images has no defined correlation: r = 0.
    """
    a = np.asarray(activations, dtype=np.float64)
    c = np.asarray(concepts, dtype=np.float64)
    if a.ndim != 2 or c.ndim != 2 or len(a) != len(c):
        raise bad("activations, concepts", (a.shape, c.shape), "arrays (N, C) and (N, K) with the same N")
    a = a - a.mean(0)
    c = c - c.mean(0)
    num = a.T @ c  # (C, K)
    den = np.sqrt((a**2).sum(0))[:, None] * np.sqrt((c**2).sum(0))[None, :]
    r = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return np.clip(r, -1.0, 1.0)


def concept_columns(known, concepts, k: int, unit: str) -> tuple[list[str], list[int]]:
    """Check a selection's ``concepts`` (None: all of ``known``) and ``k``; their names and columns."""
    names = list(known) if concepts is None else list(concepts)
    for c in names:
        if c not in known:
            raise bad("concepts", c, f"names among {known}")
    if not is_index(k) or not (1 <= k <= len(names)):
        raise bad("k", k, f"an integer in [1, {len(names)}] (one {unit} per distinct concept)")
    return names, [list(known).index(c) for c in names]


def greedy_distinct_pairs(scores: np.ndarray, k: int, floor: float | None = None) -> list[tuple[int, int]]:
    """Up to ``k`` (row, column) pairs of ``scores`` (units × concepts), highest first, no row and no
    column used twice; pairs scoring below ``floor`` are never taken. Ties keep index order."""
    order = np.dstack(np.unravel_index(np.argsort(-scores, axis=None, kind="stable"), scores.shape))[0]
    chosen: list[tuple[int, int]] = []
    used_row, used_col = set(), set()
    for r, c in order:
        if floor is not None and scores[r, c] < floor:
            break
        if int(r) in used_row or int(c) in used_col:
            continue
        chosen.append((int(r), int(c)))
        used_row.add(int(r))
        used_col.add(int(c))
        if len(chosen) == k:
            break
    return chosen
