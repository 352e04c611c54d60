"""The book's figures, one function per figure kind. Each returns a matplotlib Figure."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["figure_3_1", "prior_figure", "convergence_figure", "save"]

# Thesis Figure 3.1 colours: outer class blue, inner class pink, invariant points orange,
# queries as black stars, the 0.5 decision boundary in black.
BLUE, PINK, ORANGE = "#1f77b4", "#e377c2", "#ff7f0e"
PRIOR_GREEN = "#2ca02c"


def _plt():
    import matplotlib.pyplot as plt  # headless machines pick the Agg backend by themselves

    return plt


def save(fig, path) -> str:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return str(path)


def _grid(model, box, res=200):
    from .toy import probability_of

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
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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


def _img(ax, x, title=None, fontsize=7):
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else (a.transpose(1, 2, 0) if a.ndim == 3 else a)
    ax.imshow((a + 1) / 2, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=fontsize, pad=2)


def sample_grid(query, result, title: str = "", cols: int = 8):
    """The query (left) beside a grid of invariant samples, each with its final loss.

    Images are in [-1, 1]. Samples that did not reach τ are framed in red.
    """
    plt = _plt()
    x = result.x
    n = len(x)
    rows = int(np.ceil(n / cols))
    fig = plt.figure(figsize=(1.25 * (cols + 2), 1.35 * max(rows, 2) + 0.5), constrained_layout=True)
    gs = fig.add_gridspec(max(rows, 2), cols + 2)
    ax = fig.add_subplot(gs[0:2, 0:2])
    _img(ax, query[0], "query $x^*$", fontsize=9)
    for i in range(n):
        ax = fig.add_subplot(gs[i // cols, 2 + i % cols])
        _img(ax, x[i], f"{float(result.loss[i]):.1e}")
        if not bool(result.converged[i]):
            for s in ax.spines.values():
                s.set_edgecolor("red")
                s.set_linewidth(2)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
