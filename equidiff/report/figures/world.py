"""Figures of the world chapter (notebook 00_world): real digits, unoptimised prior samples, copy check."""

from __future__ import annotations

import numpy as np

from equidiff.report.figures.common import pyplot, show_image

__all__ = ["digit_rows", "prior_samples", "nearest_pairs", "nearest_histogram", "class_mix"]


def digit_rows(images, labels, per_class: int = 12, title: str = ""):
    """``per_class`` real digits of each class, one row per class (images in [-1, 1])."""
    plt = pyplot()
    fig, axes = plt.subplots(10, per_class, figsize=(0.55 * per_class, 0.6 * 10), squeeze=False)
    for c in range(10):
        idx = np.flatnonzero(np.asarray(labels) == c)[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            if j < len(idx):
                show_image(ax, images[idx[j]])
            else:
                ax.set_axis_off()
        axes[c, 0].set_ylabel(str(c), rotation=0, labelpad=8, fontsize=9, va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def prior_samples(samples, labels, confidence, threshold: float = 0.9, n: int = 80, cols: int = 16, title: str = ""):
    """The first ``n`` unoptimised samples, each titled with the judge's label and confidence; samples below
    ``threshold`` are framed in red."""
    plt = pyplot()
    n = min(n, len(samples))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(0.62 * cols, 0.78 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        show_image(ax, samples[i], f"{int(labels[i])}: {float(confidence[i]):.2f}", fontsize=6)
        if float(confidence[i]) < threshold:
            for s in ax.spines.values():
                s.set_edgecolor("red")
                s.set_linewidth(2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.08, hspace=0.45)
    return fig


def nearest_pairs(samples, nearest, distances, n: int = 12, title: str = ""):
    """Top row: samples; bottom row: each one's nearest training digit, with the pixel L2 distance."""
    plt = pyplot()
    n = min(n, len(samples))
    fig, axes = plt.subplots(2, n, figsize=(0.8 * n, 2.0), squeeze=False)
    for i in range(n):
        show_image(axes[0, i], samples[i], f"{float(distances[i]):.1f}", fontsize=7)
        show_image(axes[1, i], nearest[i])
    axes[0, 0].set_ylabel("sample", fontsize=8)
    axes[1, 0].set_ylabel("nearest\ntraining", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def nearest_histogram(nn_sample, nn_test, threshold: float, title: str = ""):
    """Distances to the nearest training digit: prior samples against real test digits, with the copy threshold."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.2), constrained_layout=True)
    a, b = np.asarray(nn_sample, dtype=float), np.asarray(nn_test, dtype=float)
    bins = np.linspace(0, max(a.max(), b.max()) * 1.02, 40)
    ax.hist(b, bins=bins, alpha=0.55, density=True, label=f"real test digits (n = {len(b)})", color="#1f77b4")
    ax.hist(a, bins=bins, alpha=0.55, density=True, label=f"prior samples (n = {len(a)})", color="#2ca02c")
    ax.axvline(threshold, color="black", ls="--", lw=1, label="copy threshold")
    ax.set_xlabel("pixel L2 distance to the nearest training digit")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def class_mix(counts: dict, reference=None, reference_label: str = "training digits", title: str = ""):
    """Share of samples per judge label (0-9), one bar per entry of ``counts`` ({label: 10 counts}),
    beside the share of each class in ``reference`` (10 counts, drawn as black ticks)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
    x = np.arange(10)
    width = 0.8 / max(len(counts), 1)
    for i, (label, c) in enumerate(counts.items()):
        c = np.asarray(c, dtype=float)
        ax.bar(x - 0.4 + width * (i + 0.5), 100 * c / c.sum(), width, label=f"{label} (n = {int(c.sum())})")
    if reference is not None:
        r = np.asarray(reference, dtype=float)
        ax.scatter(x, 100 * r / r.sum(), marker="_", s=400, color="black", zorder=3, label=reference_label)
    ax.set_xticks(x)
    ax.set_xlabel("class (the judge's label for samples, the true label for real digits)")
    ax.set_ylabel("share of images (%)")
    entries = len(counts) + (reference is not None)
    ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=2 if entries == 4 else 3)  # below: bars stay clear; four entries as a 2 x 2 block
    if title:
        ax.set_title(title, fontsize=10)
    return fig
