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


# --------------------------------------------------------------------------------------------
# Chapter 4.2: neurons (thesis Figures 4.1 and 4.2)
# --------------------------------------------------------------------------------------------


def neuron_top_images(rows: Sequence[dict], cols: int = 8):
    """Each neuron's top-activating dataset images: one row per neuron.

    ``rows``: dicts with ``channel``, ``concept``, ``alignment`` (r), ``images`` (n, 1, H, W) in
    [-1, 1] and ``values`` (n,) channel-mean pre-activations (and optionally ``labels``).
    """
    plt = _plt()
    n = len(rows)
    fig, axes = plt.subplots(n, cols, figsize=(1.15 * cols, 1.45 * n + 0.2), constrained_layout=True,
                             squeeze=False)
    for i, row in enumerate(rows):
        labels = row.get("labels")
        for j in range(cols):
            ax = axes[i, j]
            if j >= len(row["images"]):
                ax.axis("off")
                continue
            t = f"{float(row['values'][j]):.2f}"
            if labels is not None:
                t = f"'{int(labels[j])}'  {t}"
            _img(ax, row["images"][j], t)
        axes[i, 0].set_ylabel(f"#{row['channel']}\n{row['concept']}\nr = {row['alignment']:.2f}", fontsize=8)
    return fig


def neuron_activation_figure(runs: Sequence):
    """Figure 4.1 analogue. Per neuron (one row): the query x*, its 4×4 pre-activation map (the
    target; the top activation boxed), and every generated sample's 16 values against the
    query's (identity line: perfect invariance).

    ``runs``: :class:`equidiff.neurons.NeuronRun` objects.
    """
    plt = _plt()
    n = len(runs)
    fig, axes = plt.subplots(n, 3, figsize=(9.6, 3.0 * n), constrained_layout=True, squeeze=False,
                             gridspec_kw={"width_ratios": [0.8, 1.1, 1.3]})
    for i, run in enumerate(runs):
        res = run.result
        tgt = res.target.reshape(-1).cpu().numpy()  # (16,)
        m = res.measurements.cpu().numpy()  # (N, 16)
        _img(axes[i, 0], run.query[0], f"query x* (digit '{run.query_label}')", fontsize=9)
        axes[i, 0].set_ylabel(f"#{run.channel}\n{run.concept}, r = {run.alignment:.2f}", fontsize=9)

        ax = axes[i, 1]
        qm = run.query_map.cpu().numpy()
        lim = float(np.abs(qm).max())
        im = ax.imshow(qm, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for (r_, c_), v in np.ndenumerate(qm):
            ax.text(c_, r_, f"{v:.1f}", ha="center", va="center", fontsize=7)
        r0, c0 = np.unravel_index(int(np.argmax(qm)), qm.shape)
        ax.add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), 1, 1, fill=False, ec="k", lw=2))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"query's {qm.shape[0]}×{qm.shape[1]} map; top activation {qm.max():.2f}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="pre-activation")

        ax = axes[i, 2]
        ax.scatter(np.tile(tgt, len(m)), m.ravel(), s=6, alpha=0.35, c=ORANGE,
                   label=f"{len(m)} samples × {len(tgt)} values")
        top = int(np.argmax(tgt))
        ax.scatter(np.full(len(m), tgt[top]), m[:, top], s=14, marker="s", facecolors="none",
                   edgecolors="k", lw=0.8, label="top activation")
        lo, hi = min(tgt.min(), m.min()), max(tgt.max(), m.max())
        pad = 0.05 * (hi - lo + 1e-9)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="identity")
        ax.set_xlabel("query's value  $n(x^*)$")
        ax.set_ylabel("generated value  $n(x)$")
        ok = int(res.converged.sum())
        ax.set_title(f"{ok}/{len(m)} samples reached τ = {res.config.tau:g}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.set_aspect("equal")
    return fig


def neuron_sample_grids(runs: Sequence, cols: int = 8):
    """Figure 4.2 analogue: per neuron, the source image (A) beside its invariant samples (B),
    each with its measured loss L2 = Σ(n(x) − n(x*))² and the classifier's class for it.
    Samples that did not reach τ are framed in red."""
    plt = _plt()
    blocks = [int(np.ceil(len(r.result.x) / cols)) for r in runs]
    heights = [max(b, 2) for b in blocks]
    fig = plt.figure(figsize=(1.2 * (cols + 2), 1.4 * sum(heights) + 0.5 * len(runs)), constrained_layout=True)
    sub = fig.subfigures(len(runs), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sf, run, h in zip(sub, runs, heights):
        res = run.result
        gs = sf.add_gridspec(h, cols + 2)
        ax = sf.add_subplot(gs[0:2, 0:2])
        _img(ax, run.query[0], f"A: source x* ('{run.query_label}')", fontsize=9)
        for i in range(len(res.x)):
            ax = sf.add_subplot(gs[i // cols, 2 + i % cols])
            _img(ax, res.x[i], f"{float(res.loss[i]):.1e} '{int(run.predicted[i])}'", fontsize=6.5)
            if not bool(res.converged[i]):
                for s in ax.spines.values():
                    s.set_edgecolor("red")
                    s.set_linewidth(2)
        ok = int(res.converged.sum())
        sf.suptitle(f"B: neuron #{run.channel} ({run.concept}, r = {run.alignment:.2f}): "
                    f"{ok}/{len(res.x)} samples below τ = {res.config.tau:g}", fontsize=10)
    return fig
