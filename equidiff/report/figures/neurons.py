"""Figures of the neuron chapter (thesis Section 4.2, Figures 4.1-4.2)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from equidiff.report.figures.common import ORANGE, pyplot, red_frame, show_image

__all__ = ['neuron_top_images', 'neuron_activation_figure', 'neuron_sample_grids']


def neuron_top_images(rows: Sequence[dict], cols: int = 8):
    """Each neuron's top-activating dataset images: one row per neuron.

    ``rows``: dicts with ``channel``, ``concept``, ``alignment`` (r), ``images`` (n, 1, H, W) in
    [-1, 1] and ``values`` (n,) channel-mean pre-activations (and optionally ``labels``).
    """
    plt = pyplot()
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
            show_image(ax, row["images"][j], t)
        axes[i, 0].set_ylabel(f"#{row['channel']}\n{row['concept']}\nr = {row['alignment']:.2f}", fontsize=8)
    return fig


def neuron_activation_figure(runs: Sequence):
    """Figure 4.1 analogue. Per neuron (one row): the query x*, its pre-activation map (the
    target, digits 4×4; the top activation boxed), and every generated sample's map values against
    the query's (identity line: perfect invariance).

    ``runs``: :class:`equidiff.chapters.neurons.NeuronRun` objects (any world).
    """
    plt = pyplot()
    n = len(runs)
    fig, axes = plt.subplots(n, 3, figsize=(9.6, 3.0 * n), constrained_layout=True, squeeze=False,
                             gridspec_kw={"width_ratios": [0.8, 1.1, 1.3]})
    for i, run in enumerate(runs):
        res = run.result
        tgt = res.target.reshape(-1).float().cpu().numpy()  # (m,) the map's values (digits: 16)
        m = res.measurements.float().cpu().numpy()  # (N, m)
        show_image(axes[i, 0], run.query[0], f"query x* (class '{run.query_label}')", fontsize=9)
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
    plt = pyplot()
    blocks = [int(np.ceil(len(r.result.x) / cols)) for r in runs]
    heights = [max(b, 2) for b in blocks]
    fig = plt.figure(figsize=(1.2 * (cols + 2), 1.4 * sum(heights) + 0.5 * len(runs)), constrained_layout=True)
    sub = fig.subfigures(len(runs), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sf, run, h in zip(sub, runs, heights):
        res = run.result
        gs = sf.add_gridspec(h, cols + 2)
        ax = sf.add_subplot(gs[0:2, 0:2])
        show_image(ax, run.query[0], f"A: source x* ('{run.query_label}')", fontsize=9)
        for i in range(len(res.x)):
            ax = sf.add_subplot(gs[i // cols, 2 + i % cols])
            show_image(ax, res.x[i], f"{float(res.loss[i]):.1e} '{int(run.predicted[i])}'", fontsize=6.5)
            if not bool(res.converged[i]):
                red_frame(ax)
        ok = int(res.converged.sum())
        sf.suptitle(f"B: neuron #{run.channel} ({run.concept}, r = {run.alignment:.2f}): "
                    f"{ok}/{len(res.x)} samples below τ = {res.config.tau:g}", fontsize=10)
    return fig
