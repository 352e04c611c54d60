"""Chapter 1 (notebook 01_circles): invariant sets in two dimensions, thesis Figure 3.1.

The world (data, MLP, exact level curves, the 2D diffusion prior) is :mod:`equidiff.worlds.circles`;
this module is the chapter's one step: sample a query's invariant set and measure it against the
exact level curve, and :func:`check_parameters`, the notebook's parameters checked at its entry.
"""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from equidiff._validate import bad, check_choice, check_folder, check_int, check_num
from equidiff.worlds.circles import check_point, coverage, invariants_2d, level_curves, probability_of

__all__ = ["analyse_query", "check_parameters", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "newton", "sgd")  # the optimisers of the notebook (analyse_query's lr defaults cover these)


def check_parameters(p: dict) -> None:
    """The notebook's parameters (``notebooks/01_circles.ipynb``), each checked by its own name before any
    model is loaded: ``ValueError("n_invariant must be an integer ≥ 1, got -5")``."""
    check_int("seed", p["seed"], 0)
    q = p["query_points"]
    if isinstance(q, (str, bytes)) or not isinstance(q, (list, tuple)) or not q:
        raise bad("query_points", q, "a non-empty list of points [x, y]")
    for i, point in enumerate(q):
        check_point(f"query_points[{i}]", point)
    check_int("n_invariant", p["n_invariant"], 1, why="invariant points per query")
    check_num("tau", p["tau"], 0, 1, lo_open=True, hi_open=True, why="a tolerance on the probability")
    check_choice("optimizer", p["optimizer"], OPTIMIZERS)
    check_int("steps", p["steps"], 0, why="the step budget B")
    check_int("prior_points", p["prior_points"], 1, why="invariant points per query through the prior")
    check_int("prior_steps", p["prior_steps"], 0, why="the step budget B through the prior")
    check_int("ddim_steps", p["ddim_steps"], 1, why="DDIM steps of the 2D prior")
    check_folder("output_dir", p["output_dir"])


def analyse_query(model: nn.Module, query, n: int = 512, tau: float = 0.005, seed: int = 0,
                  optimizer: str = "adam", steps: int = 200, prior=None, keep_norm: bool = False,
                  lr: float | None = None, repulsion: float = 0.0) -> dict:
    """Invariant points of one query and how well they match the exact level set.

    Returns ``point``, ``p``, ``n`` (points returned: converged ones), ``n_requested``,
    ``max_abs_error`` (max |f(x) − p|), ``coverage`` (of the exact curve within 0.05),
    ``seconds`` (of the invariant-set search alone), ``points`` (n, 2), ``curves`` and the raw
    ``result``.
    """
    q = check_point("query", query)
    p = float(probability_of(model, [q])[0])
    if lr is None:
        lr = 1.0 if optimizer == "newton" else (0.05 if prior is not None else 0.1)
    t0 = time.perf_counter()
    res = invariants_2d(model, q, n=n, tau=tau, steps=steps, lr=lr, seed=seed, prior=prior,
                        keep_norm=keep_norm, optimizer=optimizer, repulsion=repulsion)
    seconds = time.perf_counter() - t0
    pts = res.x[res.converged].numpy()
    curves = level_curves(model, p)
    err = float(np.abs(probability_of(model, pts) - p).max()) if len(pts) else float("nan")
    return {
        "point": q,
        "p": p,
        "n": int(len(pts)),
        "n_requested": n,
        "max_abs_error": err,
        "coverage": coverage(pts, curves) if len(pts) else 0.0,
        "seconds": seconds,
        "points": pts,
        "curves": curves,
        "result": res,
    }
