"""Figures of the applications chapter: the planted-shortcut world, detection, member selection."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from equidiff.report.figures.common import pyplot, show_image, red_frame

__all__ = ['shortcut_world_figure', 'reliance_figure', 'detection_grid', 'share_figure', 'selection_figure']


def shortcut_world_figure(images, labels, marked, shortcut_class: int, per_class: int = 3):
    """Training images of the planted-shortcut world: for each class, ``per_class`` images, marked
    ones first; the title says the class and its share of marked training images."""
    plt = pyplot()
    labels, marked = np.asarray(labels), np.asarray(marked, dtype=bool)
    fig, axes = plt.subplots(per_class, 10, figsize=(10 * 0.95, per_class * 1.05 + 0.5),
                             constrained_layout=True, squeeze=False)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        order = np.concatenate([idx[marked[idx]], idx[~marked[idx]]])[:per_class]
        for r in range(per_class):
            ax = axes[r, c]
            show_image(ax, images[order[r]])
            if r == 0:
                share = marked[idx].mean()
                ax.set_title(f"'{c}': {share:.0%}", fontsize=9, color="red" if c == shortcut_class else "black")
    fig.suptitle("training images per class (top: marked ones first); title: share of that class carrying "
                 "the marker", fontsize=9)
    return fig


def reliance_figure(rows: dict, n_test: Optional[int] = None):
    """Grouped bars: per classifier (``rows`` name -> reliance dict), accuracy on clean, in-distribution
    and marker-swapped test images, and the share of marked other-class images called the shortcut class.
    ``n_test``: how many test images, for the title."""
    plt = pyplot()
    keys = [("clean", "clean"), ("in_distribution", "as in training"), ("swapped", "marker swapped"),
            ("marked_to_shortcut", "other class + marker\n→ shortcut class")]
    fig, ax = plt.subplots(figsize=(9.0, 3.2), constrained_layout=True)
    w = 0.8 / max(len(rows), 1)
    colors = ["#d62728", "#1f77b4", "#7f7f7f"]
    for i, (name, r) in enumerate(rows.items()):
        vals = [r[k] for k, _ in keys]
        pos = np.arange(len(keys)) + (i - (len(rows) - 1) / 2) * w
        bars = ax.bar(pos, vals, w, label=name, color=colors[i % len(colors)])
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(np.arange(len(keys)), [lbl for _, lbl in keys], fontsize=8)
    ax.set_ylabel("share of test images")
    ax.set_ylim(0, 1.08)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="classifier", title_fontsize=8)
    size = "" if n_test is None else f", {n_test} images"
    ax.set_title(f"Does the classifier read the digit or the marker? (digits test split{size})", fontsize=9)
    return fig


def detection_grid(detection, cols: int = 16, max_n: int = 64):
    """Invariant samples of one classifier's shortcut-class probability. Under each image: the judge's
    class for the marker-blanked image. Red frame: a planted-shortcut hit (member, marker, not the
    class); grey background title: not a member (loss ≥ τ)."""
    plt = pyplot()
    n = min(len(detection.x), max_n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.62, rows * 0.78 + 0.45), constrained_layout=True,
                             squeeze=False)
    hits = detection.hits.numpy()
    for i in range(rows * cols):
        ax = axes[i // cols, i % cols]
        if i >= n:
            ax.axis("off")
            continue
        member = bool(detection.converged[i])
        show_image(ax, detection.x[i], f"'{int(detection.judged[i])}'" + ("" if member else " ✗"), fontsize=6.5)
        if hits[i]:
            red_frame(ax)
    s = detection.summary()
    fig.suptitle(f"{detection.name} classifier: {s['n_members']}/{s['n_samples']} members; red = marker and "
                 f"not a '{detection.shortcut_class}' ({s['share']:.0%} of members); label = judge's class "
                 f"of the image with the corner blanked; ✗ = not a member", fontsize=8.5)
    return fig


def share_figure(summaries: dict, shortcut_class: int):
    """Share of invariant-set members that carry the marker without depicting the shortcut class,
    per classifier, with the bootstrap interval as an error bar."""
    plt = pyplot()
    names = list(summaries)
    vals = np.array([summaries[n]["share"] for n in names])
    lo = np.array([summaries[n]["interval"][0] for n in names])
    hi = np.array([summaries[n]["interval"][1] for n in names])
    fig, ax = plt.subplots(figsize=(4.2, 3.0), constrained_layout=True)
    ax.bar(names, vals, color=["#d62728", "#1f77b4"][: len(names)], yerr=[vals - lo, hi - vals], capsize=6)
    for i, n in enumerate(names):
        ax.text(i, hi[i] + 0.02, f"{vals[i]:.2f}\n[{lo[i]:.2f}, {hi[i]:.2f}]", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"share of members: marker, not a '{shortcut_class}'")
    ax.set_ylim(0, min(1.25, max(0.3, float(hi.max()) + 0.3)))
    ax.set_title("invariant sets of p(shortcut class)\n(95 % bootstrap intervals)", fontsize=9)
    return fig


def selection_figure(x, picked: Sequence[int], other: Sequence[int], relevant=None, judged=None,
                     title_picked: str = "selected", title_other: str = "random"):
    """Two rows of images from one pool: the selected members and another choice (random, or the
    members not selected). ``relevant`` (N,) bool, if given: red frame and the share per row.
    ``judged``: a class shown above each image."""
    plt = pyplot()
    rel = None if relevant is None else np.asarray(relevant, dtype=bool)
    k = max(len(picked), len(other))
    fig, axes = plt.subplots(2, k, figsize=(k * 0.85 + 0.6, 2.3), constrained_layout=True, squeeze=False)
    for r, (idx, name) in enumerate([(list(picked), title_picked), (list(other), title_other)]):
        for j in range(k):
            ax = axes[r, j]
            if j >= len(idx):
                ax.axis("off")
                continue
            i = idx[j]
            show_image(ax, x[i], None if judged is None else f"'{int(judged[i])}'", fontsize=7)
            if rel is not None and rel[i]:
                red_frame(ax)
        share = "" if rel is None or not idx else f"\n{rel[idx].mean():.0%} red"
        axes[r, 0].set_ylabel(f"{name}{share}", fontsize=8)
    return fig
