"""Choosing the most informative members of an invariant set (the thesis' Section 4.5.2 limitation).

An invariant set sampled by EquiDiff has many members; a reader can look at a handful. The
thesis names the "lack of an algorithm to pick the most interesting members" as a limitation.
:func:`select_members` picks ``k`` members that are

(a) **diverse** — greedy farthest-point sampling in a feature space (each new pick is far from
    the ones already picked), and
(b) **far from the training data** — the distance of a member to its nearest training example
    (what the model has not seen is where a surprise hides).

The score of a candidate is ``spread^(1 - w) · novelty^w``, each term divided by its median over
the pool: a product, so that a near-duplicate of an earlier pick (spread ≈ 0) scores ≈ 0 however
novel it is. The first pick is the most novel member.
:func:`precision_at_k` and :func:`random_precision` measure how often a choice hits the members
that matter (known in a controlled setting, e.g. the planted shortcut of :mod:`equidiff.worlds.digits.shortcut`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from equidiff._validate import bad as _bad, is_int as _is_int, is_num as _is_num
from equidiff.core.metrics import classifier_features

__all__ = ["nearest_distance", "Selection", "select_members", "precision_at_k", "random_precision", "features",
           "evaluate_selection", "member_pool"]


def _as_2d(name: str, a) -> torch.Tensor:
    t = torch.as_tensor(a, dtype=torch.float32)
    if t.dim() < 2 or t.shape[0] < 1:
        raise _bad(name, tuple(t.shape), "an array of shape (N, ...) with N ≥ 1")
    return t.reshape(t.shape[0], -1)


def nearest_distance(points, reference, batch: int = 1024) -> np.ndarray:
    """(N,) Euclidean distance from each row of ``points`` to its nearest row of ``reference``."""
    p, r = _as_2d("points", points), _as_2d("reference", reference)
    if p.shape[1] != r.shape[1]:
        raise _bad("reference", tuple(r.shape), f"rows of the same size as points ({p.shape[1]})")
    return torch.cat([torch.cdist(p[i : i + batch], r).min(1).values for i in range(0, len(p), batch)]).numpy()


def features(x: torch.Tensor, space: str = "pixels", model=None) -> torch.Tensor:
    """(N, d) features of images or points ``x`` in ``space``: ``"pixels"`` (the values themselves) or
    ``"classifier"`` (the penultimate features of ``model``, see :func:`equidiff.core.metrics.classifier_features`)."""
    if space == "pixels":
        return _as_2d("x", x)
    if space == "classifier":
        if model is None:
            raise _bad("model", None, "a classifier when space='classifier'")
        return classifier_features(getattr(model, "model", model), x)
    raise _bad("space", space, "'pixels' or 'classifier'")


@dataclass
class Selection:
    """The chosen members, in the order picked."""

    indices: list  # positions in the pool
    novelty: np.ndarray  # (N,) distance of every pool member to its nearest training example
    spread: list  # distance of each pick to the closest earlier pick (inf for the first)
    novelty_weight: float


def select_members(pool, train, k: int, novelty_weight: float = 0.5) -> Selection:
    """Pick ``k`` members of ``pool`` (N, d) that are diverse and far from ``train`` (M, d).

    ``novelty_weight`` w in [0, 1]: 0 is plain farthest-point sampling (started from the most
    novel member), 1 ranks by distance to the training data alone.
    """
    p = _as_2d("pool", pool)
    if not _is_int(k) or not (1 <= k <= len(p)):
        raise _bad("k", k, f"an integer in [1, {len(p)}] (the pool has {len(p)} members)")
    if not _is_num(novelty_weight) or not (0 <= novelty_weight <= 1):
        raise _bad("novelty_weight", novelty_weight, "a number in [0, 1]")
    novelty = nearest_distance(p, train)
    pair = torch.cdist(p, p).numpy()  # (N, N)
    off = pair[~np.eye(len(p), dtype=bool)]
    s_pair = float(np.median(off)) if off.size and np.median(off) > 0 else 1.0
    s_nov = float(np.median(novelty)) if np.median(novelty) > 0 else 1.0
    chosen = [int(np.argmax(novelty))]
    spread = [float("inf")]
    closest = pair[chosen[0]].copy()  # (N,) distance to the nearest pick so far
    while len(chosen) < k:
        score = (closest / s_pair) ** (1 - novelty_weight) * (novelty / s_nov) ** novelty_weight
        score[chosen] = -np.inf
        i = int(np.argmax(score))
        spread.append(float(closest[i]))
        chosen.append(i)
        closest = np.minimum(closest, pair[i])
    return Selection(chosen, novelty, spread, float(novelty_weight))


def precision_at_k(indices, relevant) -> float:
    """Share of the picked ``indices`` that are ``relevant`` (a bool array over the pool)."""
    rel = np.asarray(relevant, dtype=bool)
    idx = np.asarray(indices, dtype=int)
    if idx.size == 0:
        raise _bad("indices", list(idx), "at least one index")
    return float(rel[idx].mean())


def random_precision(relevant, k: int, n_draws: int = 2000, seed: int = 0) -> dict:
    """Precision at ``k`` of ``n_draws`` uniformly random choices of k members (without replacement):
    ``mean`` and the central 95 % range (``low``, ``high``) of a single random choice."""
    rel = np.asarray(relevant, dtype=bool)
    if not _is_int(k) or not (1 <= k <= rel.size):
        raise _bad("k", k, f"an integer in [1, {rel.size}]")
    rng = np.random.default_rng(seed)
    draws = np.array([rel[rng.choice(rel.size, size=k, replace=False)].mean() for _ in range(n_draws)])
    return {"mean": float(draws.mean()), "low": float(np.quantile(draws, 0.025)),
            "high": float(np.quantile(draws, 0.975))}


def evaluate_selection(pool_x, relevant, train_x, k: int, *, novelty_weight: float = 0.5, space: str = "pixels",
                       model=None, n_draws: int = 2000, seed: int = 0) -> dict:
    """Select ``k`` members of ``pool_x`` against ``train_x`` and compare with random choices.

    ``relevant`` (N,) bool marks the members that matter (e.g. planted-shortcut hits). Returns
    ``indices`` (the picks), ``random_indices`` (one random choice, for a figure), ``precision_at_k_selected``
    and ``precision_at_k_random`` (mean over ``n_draws`` random choices) with its 95 % range
    ``random_range``, and ``base_rate`` (share of relevant members in the pool).
    """
    rel = np.asarray(relevant, dtype=bool)
    if rel.shape != (len(pool_x),):
        raise _bad("relevant", rel.shape, f"a bool array of shape ({len(pool_x)},), one entry per pool member")
    f_pool, f_train = features(pool_x, space, model), features(train_x, space, model)
    sel = select_members(f_pool, f_train, k, novelty_weight)
    rnd = random_precision(rel, k, n_draws, seed)
    example = np.random.default_rng(seed).choice(len(rel), size=k, replace=False)
    return {
        "indices": sel.indices,
        "random_indices": [int(i) for i in example],
        "precision_at_k_selected": precision_at_k(sel.indices, rel),
        "precision_at_k_random": rnd["mean"],
        "random_range": [rnd["low"], rnd["high"]],
        "base_rate": float(rel.mean()),
        "k": int(k),
        "space": space,
        "novelty_weight": float(novelty_weight),
    }


def member_pool(converged, k: int) -> tuple[np.ndarray, str]:
    """Which samples to choose from: the members of the invariant set (``converged``, (N,) bool) when
    there are at least ``k`` of them, else all samples — with a note saying so (short smoke runs)."""
    conv = np.asarray(converged, dtype=bool)
    if conv.sum() >= k:
        return np.flatnonzero(conv), f"choosing among the {int(conv.sum())} members"
    return np.arange(conv.size), (f"only {int(conv.sum())} members (< k = {k}): choosing among all "
                                  f"{conv.size} samples, members or not")
