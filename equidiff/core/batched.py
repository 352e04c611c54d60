"""Algorithm 1 in batches: many samples of one query, optimised ``batch_size`` at a time.

Samples are independent in Algorithm 1 (per-sample loss, element-wise optimiser, per-sample
stop), so ``n_samples`` samples can be optimised in disjoint batches and concatenated into one
:class:`~equidiff.core.invariants.InvariantResult`: the batch size changes memory and speed
(the paper world's GPU knob), not the samples.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from equidiff._validate import bad as _bad, is_int as _is_int
from equidiff.core.checks import check_query
from equidiff.core.invariants import InvariantConfig, InvariantResult, find_invariants
from equidiff.core.priors import IdentityPrior

__all__ = ["find_invariants_batched", "concat_results"]


def concat_results(results: Sequence[InvariantResult], config=None) -> InvariantResult:
    """Concatenate :class:`~equidiff.core.invariants.InvariantResult` of disjoint sample batches.

    Samples are independent in Algorithm 1 (per-sample loss, element-wise optimiser, per-sample
    stop), so the pieces form one result. The per-step history is combined exactly: a batch that
    finished early keeps its final values (frozen samples keep their loss; its ``n_active`` is
    the number still above τ when it stopped).
    """
    if not results:
        raise ValueError("results must hold at least one InvariantResult")
    if len(results) == 1 and config is None:
        return results[0]
    n = [r.converged.numel() for r in results]
    length = max(len(r.history["loss_mean"]) for r in results)

    def padded(r, key):
        h = r.history[key]
        return h + [h[-1]] * (length - len(h)) if h else [0.0] * length

    hist = {"loss_mean": [], "loss_max": [], "n_active": [], "z_norm_mean": []}
    cols = {k: [padded(r, k) for r in results] for k in hist}
    for i in range(length):
        hist["loss_mean"].append(float(sum(c[i] * k for c, k in zip(cols["loss_mean"], n)) / sum(n)))
        hist["loss_max"].append(float(max(c[i] for c in cols["loss_max"])))
        hist["n_active"].append(int(sum(c[i] for c in cols["n_active"])))
        hist["z_norm_mean"].append(float(sum(c[i] * k for c, k in zip(cols["z_norm_mean"], n)) / sum(n)))
    cat = lambda name: torch.cat([getattr(r, name) for r in results])  # noqa: E731
    return InvariantResult(
        x=cat("x"), z=cat("z"), z_init=cat("z_init"), measurements=cat("measurements"),
        target=results[0].target, loss=cat("loss"), converged=cat("converged"),
        steps_to_converge=cat("steps_to_converge"), history=hist,
        config=config if config is not None else results[0].config,
        description=results[0].description, seconds=float(sum(r.seconds for r in results)),
        restarts=cat("restarts") if all(r.restarts is not None for r in results) else None,
    )


def find_invariants_batched(objective, query, prior, config, batch_size: Optional[int] = None,
                            **kwargs) -> InvariantResult:
    """:func:`~equidiff.core.invariants.find_invariants` in batches of at most ``batch_size`` samples.

    All ``config.n_samples`` starting latents are drawn first from ``config.seed`` (the same
    draw as one unbatched call), then optimised ``batch_size`` at a time and concatenated
    (:func:`concat_results`). Each batch passes its first sample's global index as
    ``sample_offset``, so a restart (``restart_after``) of sample i draws the noise an unbatched
    run draws for it: the batch size changes memory and speed, not the samples. ``repulsion``
    couples samples, so it needs one batch. A ``checkpoint_path`` gets a ``.part<i>`` suffix per
    batch. ``prior=None`` is the no-prior case of :func:`find_invariants`, in batches as well.
    """
    config = config or InvariantConfig()
    if not isinstance(config, InvariantConfig):
        raise TypeError(f"config must be an InvariantConfig, got {type(config).__name__}")
    check_query(objective, query, prior)  # before the latents are drawn (core/checks.py)
    if prior is None:
        prior = IdentityPrior(query.shape[1:])  # what find_invariants does with None: the same draws
    n = config.n_samples
    if batch_size is None or (_is_int(batch_size) and batch_size >= n):
        return find_invariants(objective, query, prior, config, **kwargs)
    if not _is_int(batch_size) or batch_size < 1:
        raise _bad("batch_size", batch_size, "None or an integer ≥ 1")
    if config.repulsion > 0:
        raise _bad("batch_size", batch_size, f"None or ≥ n_samples ({n}) when repulsion > 0 (it couples samples)")
    if "sample_offset" in kwargs:
        raise TypeError("find_invariants_batched sets sample_offset itself (one per batch)")
    z_init = kwargs.pop("z_init", None)
    if z_init is None:
        z_init = prior.sample_latents(n, torch.Generator().manual_seed(config.seed))  # Algorithm 1, line 1
    parts = []
    for i, start in enumerate(range(0, n, batch_size)):
        chunk = z_init[start: start + batch_size]
        cfg = dataclasses.replace(
            config, n_samples=len(chunk),
            checkpoint_path=f"{config.checkpoint_path}.part{i}" if config.checkpoint_path else None,
        )
        parts.append(find_invariants(objective, query, prior, cfg, z_init=chunk, sample_offset=start, **kwargs))
    return concat_results(parts, config=config)
