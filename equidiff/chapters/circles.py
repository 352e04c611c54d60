"""Chapter 1 (notebook 01_circles): invariant sets in two dimensions, thesis Figure 3.1.

The world (data, MLP, exact level curves, the 2D diffusion prior) is :mod:`equidiff.worlds.circles`;
this module is the chapter's one step: sample a query's invariant set and measure it against the
exact level curve; :func:`check_parameters`, the notebook's parameters checked at its entry; and
:func:`prose_values`, the run's figures the chapter's text states (glued, never typed).
"""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from equidiff._validate import bad, check_choice, check_folder, check_int, check_num
from equidiff.report.explorer import SAMPLES_FILE
from equidiff.report.glue import Text, as_is, words
from equidiff.worlds.circles import (CirclesConfig, check_point, coverage, invariants_2d, level_curves,
                                     probability_of, typical_norm)

__all__ = ["analyse_query", "check_parameters", "prose_values", "save_explorer_samples", "OPTIMIZERS", "COVERAGE_RADIUS", "MANIFOLD_RADIUS"]

OPTIMIZERS = ("adam", "newton", "sgd")  # the optimisers of the notebook (analyse_query's lr defaults cover these)
COVERAGE_RADIUS = 0.05  # a point of the exact level curve is covered if a returned point lies this close
MANIFOLD_RADIUS = 0.1  # a point is "on the moons" this close to one of the prior's training points (their noise scale)


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

    Returns ``point``, ``p``, ``n`` (points returned: converged ones), ``n_requested``, ``tau``,
    ``max_abs_error`` (max |f(x) − p|), ``coverage`` (share of the exact curve within
    ``coverage_radius`` = :data:`COVERAGE_RADIUS` of a returned point),
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
        "tau": tau,  # the tolerance on the probability (the loop's τ is its logit equivalent)
        "max_abs_error": err,
        "coverage": coverage(pts, curves, COVERAGE_RADIUS) if len(pts) else 0.0,
        "coverage_radius": COVERAGE_RADIUS,
        "seconds": seconds,
        "points": pts,
        "curves": curves,
        "result": res,
    }


def _near_share(points: np.ndarray, manifold: np.ndarray, radius: float) -> float:
    """Share of ``points`` (n, 2) within ``radius`` of a point of ``manifold`` (0 for no points)."""
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return 0.0
    d, _ = cKDTree(np.asarray(manifold, dtype=np.float64)).query(np.asarray(points, dtype=np.float64))
    return float((d <= radius).mean())


def _compare(a: float, b: float, more: str, fewer: str, same: str, tol: float = 1e-9) -> Text:
    return Text(same if abs(a - b) <= tol else (more if a > b else fewer))


def prose_values(model: nn.Module, info: dict, results: list, with_prior: list, typical: dict, manifold,
                 cfg: CirclesConfig = CirclesConfig()) -> dict:
    """What the chapter's text states about this run, for :func:`equidiff.report.glue.glue_all`.

    ``info``: the classifier's training record; ``results`` / ``with_prior``: :func:`analyse_query` of
    every query without and through the prior; ``typical``: the first query through the prior with
    ``keep_norm=True``; ``manifold``: the prior's training points (n, 2); ``cfg``: the classifier's config.
    """
    free = with_prior[0]["result"]
    kept = typical["result"]
    found = [r["max_abs_error"] for r in results if r["n"]]
    tau = results[0]["tau"]
    n_lin = sum(isinstance(m, nn.Linear) for m in model.modules())
    values = {
        # the classifier
        "n_train": cfg.n_train, "n_test": cfg.n_test, "extent": cfg.extent, "hidden": cfg.hidden,
        "n_layers": n_lin, "n_hidden_layers": n_lin - 1, "test_accuracy": info["test_accuracy"],
        # invariant sets without a prior
        "n_queries": len(results), "queries": words(f"({r['point'][0]:g}, {r['point'][1]:g})" for r in results),
        "n_requested": results[0]["n_requested"], "n_found": words(r["n"] for r in results),
        "steps": results[0]["result"].config.steps, "tau": tau,
        "max_abs_error": Text(f"{max(found):.1e}" if found else "–"),  # over every returned point
        "error_vs_tau": Text("below" if found and max(found) < tau else "not below"),
        "error_verdict": Text("all" if found and max(found) < tau else "not all"),
        "coverage_radius": COVERAGE_RADIUS, "coverage_list": words(f"{r['coverage']:.2f}" for r in results),
        # through the 2D diffusion prior
        "prior_requested": with_prior[0]["n_requested"], "prior_found": words(r["n"] for r in with_prior),
        "prior_steps": free.config.steps, "manifold_radius": MANIFOLD_RADIUS,
        "prior_near_share": _near_share(np.concatenate([r["points"] for r in with_prior]), manifold, MANIFOLD_RADIUS),
        "free_near_share": _near_share(np.concatenate([r["points"] for r in results]), manifold, MANIFOLD_RADIUS),
        # |z_T| kept typical or free
        "free_success": free.success_rate, "kept_success": kept.success_rate,
        "kept_vs_free": _compare(kept.success_rate, free.success_rate, "more", "fewer", "as many"),
        "free_z_norm": float(free.z.flatten(1).norm(dim=1).mean()),  # mean final |z_T|
        "typical_z_norm": typical_norm(free.z.shape[-1]),
    }
    return {k: as_is(v) if isinstance(v, str) else v for k, v in values.items()}


def save_explorer_samples(output_dir, with_prior: list):
    """Write ``<output_dir>/explorer_samples.json`` for the book's interactive explorer
    (:func:`equidiff.report.explorer.export_explorer`): each query, its p = f(x*), and its EquiDiff samples
    through the 2D diffusion prior (``with_prior``: :func:`analyse_query` of every query through the prior;
    the converged points, coordinates rounded to 1e-6). Reads the results only: no number of the chapter
    changes. Returns the path."""
    import json
    from pathlib import Path

    if not isinstance(with_prior, (list, tuple)) or not with_prior or \
            not all(isinstance(r, dict) and {"point", "p", "points"} <= set(r) for r in with_prior):
        raise bad("with_prior", type(with_prior).__name__, "a non-empty list of analyse_query results")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "queries": [[float(v) for v in r["point"]] for r in with_prior],
        "p": [float(r["p"]) for r in with_prior],
        "tau": float(with_prior[0]["tau"]),
        "n_requested": int(with_prior[0]["n_requested"]),
        "samples": [np.round(np.asarray(r["points"], dtype=np.float64).reshape(-1, 2), 6).tolist() for r in with_prior],
    }
    path = out / SAMPLES_FILE
    path.write_text(json.dumps(record))
    return path
