"""Figures of the 2D chapter (thesis Figure 3.1) and the circles selection demo."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from equidiff.report.figures.common import BLUE, PINK, ORANGE, PRIOR_GREEN, pyplot

__all__ = ['figure_3_1', 'prior_figure', 'convergence_figure', 'circles_selection_figure']


def _grid(model, box, res=200):
    from equidiff.worlds.circles import probability_of

    g = np.linspace(-box, box, res, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    f = probability_of(model, np.stack([gx.ravel(), gy.ravel()], 1)).reshape(gx.shape)
    return gx, gy, f


def _frame(ax, box, title):
    ax.set_xlim(-box, box)
    ax.set_ylim(-box, box)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(title, fontsize=10)


def figure_3_1(model, data_x, data_y, accuracy: float, queries: Sequence[dict], box: float = 2.5):
    """Thesis Figure 3.1 (a)–(e).

    ``queries``: dicts with ``point`` [x, y], ``p`` and ``points`` (n, 2) invariant points, and
    optionally ``curves`` (the exact level set, drawn thin so the reader can check the points).
    """
    plt = pyplot()
    n = 2 + len(queries)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.6), constrained_layout=True)
    theta = np.linspace(0, 2 * np.pi, 400)
    x, y = np.asarray(data_x), np.asarray(data_y)

    ax = axes[0]
    ax.scatter(*x[y == 0].T, s=5, c=BLUE, label="outer class")
    ax.scatter(*x[y == 1].T, s=5, c=PINK, label="inner class")
    ax.plot(np.cos(theta), np.sin(theta), "k--", lw=1, label="unit circle")
    ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
    _frame(ax, box, f"(a) training data ({len(x):,} points)")

    gx, gy, f = _grid(model, box)
    ax = axes[1]
    im = ax.contourf(gx, gy, f, levels=np.linspace(0, 1, 21), cmap="RdBu_r", vmin=0, vmax=1)
    ax.contour(gx, gy, f, levels=[0.5], colors="k", linewidths=1.5)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="p(inner)")
    _frame(ax, box, f"(b) MLP prediction (test acc. {accuracy:.3f})")

    for i, (ax, q) in enumerate(zip(axes[2:], queries)):
        ax.contourf(gx, gy, f, levels=np.linspace(0, 1, 21), cmap="RdBu_r", alpha=0.35)
        for j, c in enumerate(q.get("curves", [])):
            ax.plot(*np.asarray(c).T, color="k", lw=0.6, label="exact level set" if j == 0 else None)
        pts = np.asarray(q["points"])
        ax.scatter(*pts.T, s=4, c=ORANGE, label=f"invariant points (n={len(pts)})", zorder=3)
        ax.scatter(*q["point"], marker="*", s=220, c="k", edgecolors="w", zorder=4, label="query")
        ax.legend(loc="upper right", fontsize=6.5, framealpha=0.9)
        _frame(ax, box, f"({chr(ord('c') + i)}) invariant set, p = {q['p']:.3f}")
    return fig


def prior_figure(model, manifold, queries: Sequence[dict], box: float = 2.5):
    """IS(x*) without a prior (orange) beside what the 2D diffusion prior makes of it (green).

    ``queries``: dicts with ``point``, ``p``, ``points`` (no prior), ``prior_points`` (through
    the DDIM prior) and ``curves`` (exact level set).
    """
    plt = pyplot()
    n = len(queries)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.8), constrained_layout=True)
    axes = np.atleast_1d(axes)
    m = np.asarray(manifold)
    for i, (ax, q) in enumerate(zip(axes, queries)):
        ax.scatter(*m.T, s=2, c="0.75", alpha=0.4, label="prior's training data", rasterized=True)
        for j, c in enumerate(q.get("curves", [])):
            ax.plot(*np.asarray(c).T, color="k", lw=0.6, label="exact level set" if j == 0 else None)
        pts = np.asarray(q["points"])
        ax.scatter(*pts.T, s=3, c=ORANGE, alpha=0.5, label=f"no prior (n={len(pts)})")
        pp = np.asarray(q["prior_points"])
        ax.scatter(*pp.T, s=9, c=PRIOR_GREEN, label=f"with diffusion prior (n={len(pp)})", zorder=3)
        ax.scatter(*q["point"], marker="*", s=220, c="k", edgecolors="w", zorder=4, label="query")
        ax.legend(loc="lower left", fontsize=6.5, framealpha=0.9)
        _frame(ax, box, f"query {i + 1}: p = {q['p']:.3f}")
    return fig


def convergence_figure(histories: dict, typical_norm: float | None = None):
    """Loss and |z_T| over optimisation steps for several runs (``{label: history}``)."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    for label, h in histories.items():
        a.semilogy(h["loss_max"], label=label)
        b.plot(h["z_norm_mean"], label=label)
    a.set_xlabel("optimisation step")
    a.set_ylabel("largest loss among samples")
    a.set_title("convergence", fontsize=10)
    b.set_xlabel("optimisation step")
    b.set_ylabel("mean $|z_T|$")
    b.set_title("size of the starting noise", fontsize=10)
    if typical_norm is not None:
        b.axhline(typical_norm, color="k", ls=":", lw=1, label="typical $|z_T|$ of N(0, I)")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    return fig


def circles_selection_figure(model, points, picked: Sequence[int], train_points, query, box: float = 2.5):
    """Circles world: an invariant set (orange), the k selected members (black rings, numbered in pick
    order), the training data (grey) and the query (star)."""
    plt = pyplot()
    pts = np.asarray(points)
    fig, ax = plt.subplots(figsize=(4.2, 4.2), constrained_layout=True)
    tr = np.asarray(train_points)
    ax.scatter(tr[:, 0], tr[:, 1], s=3, c="0.8", label="training data")
    ax.scatter(pts[:, 0], pts[:, 1], s=6, c=ORANGE, label="invariant set")
    sel = pts[list(picked)]
    ax.scatter(sel[:, 0], sel[:, 1], s=70, facecolors="none", edgecolors="black", linewidths=1.5,
               label="selected")
    for n, (px, py) in enumerate(sel):
        ax.annotate(str(n + 1), (px, py), xytext=(4, 4), textcoords="offset points", fontsize=8)
    q = np.asarray(query).reshape(-1)
    ax.scatter([q[0]], [q[1]], marker="*", s=150, c="black", label="query")
    _frame(ax, box, "choosing k members of an invariant set")
    ax.legend(fontsize=7, loc="lower right")
    return fig
