"""Figures of the SAE chapter (thesis Section 4.3, Figure 4.3)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from equidiff.report.figures.common import BLUE, ORANGE, pyplot, show_image, red_frame

__all__ = ['sae_top_images', 'sae_feature_figure', 'sae_label_histograms']


def sae_top_images(rows: Sequence[dict], cols: int = 8):
    """Each chosen SAE feature's top-activating images: one row per feature.

    ``rows``: dicts with ``feature``, ``firing_rate``, ``images`` (n, 1, H, W) in [-1, 1] and
    ``values`` (n,) the feature's activations; in the digits world also ``concept``,
    ``selectivity`` and ``labels`` (n,) digit classes, at paper scale (no labels) ``indices``
    (n,) the images' numbers among the query images.
    """
    plt = pyplot()
    n = len(rows)
    fig, axes = plt.subplots(n, cols, figsize=(1.15 * cols, 1.5 * n + 0.2), constrained_layout=True,
                             squeeze=False)
    labelled = all("labels" in row for row in rows)
    for i, row in enumerate(rows):
        for j in range(cols):
            ax = axes[i, j]
            if j >= len(row["images"]):
                ax.axis("off")
                continue
            name = f"'{int(row['labels'][j])}'" if labelled else f"#{int(row['indices'][j])}"
            show_image(ax, row["images"][j], f"{name}  {float(row['values'][j]):.2f}")
        if labelled:
            axes[i, 0].set_ylabel(f"#{row['feature']}\n{row['concept']}\nsel. {row['selectivity']:.2f}, "
                                  f"rate {row['firing_rate']:.2f}", fontsize=7.5)
        else:
            axes[i, 0].set_ylabel(f"feature #{row['feature']}\nrate {row['firing_rate']:.2f}", fontsize=7.5)
    if not labelled:
        fig.suptitle("top-activating query images (title: image number, activation)", fontsize=9)
    return fig


def sae_feature_figure(runs: Sequence, noun: str = "images", n_real: int = 16, cols: int = 8):
    """Figure 4.3 (analogue): per SAE feature (one block each), left the ``n_real`` top-activating real
    images with the feature's activation, right the invariant samples, each with its measured loss
    L2 = Σ(L(x) − L(x*))². Red frames: samples still above τ when the budget ran out. In a world with a
    judge classifier (the digits world) every image also carries the judge's label ("?": confidence
    below the threshold, not clearly a digit); without one (paper scale) there are no labels.

    ``runs``: :class:`equidiff.chapters.sae.FeatureRun` objects; ``noun``: what the real images are
    (the world's ``image_noun``, e.g. "digits").
    """
    plt = pyplot()
    real_cols = 4
    heights = []
    for r in runs:
        heights.append(max(int(np.ceil(len(r.result.x) / cols)),
                           int(np.ceil(min(n_real, len(r.top_images)) / real_cols))))
    fig = plt.figure(figsize=(1.05 * (cols + real_cols) + 0.6, 1.3 * sum(heights) + 0.75 * len(runs)),
                     constrained_layout=True)
    sub = fig.subfigures(len(runs), 1, height_ratios=[h + 0.6 for h in heights], squeeze=False)[:, 0]
    for sf, run, h in zip(sub, runs, heights):
        left, right = sf.subfigures(1, 2, width_ratios=[real_cols, cols + 0.6])
        res = run.result
        judged = run.top_predicted is not None
        k = min(n_real, len(run.top_images))
        gl = left.add_gridspec(h, real_cols)
        for i in range(k):
            ax = left.add_subplot(gl[i // real_cols, i % real_cols])
            label = f"'{int(run.top_predicted[i])}' " if judged else ""
            show_image(ax, run.top_images[i], f"{label}{float(run.top_values[i]):.2f}", fontsize=6.5)
        left.suptitle(f"real: top {k} {noun}", fontsize=9)
        gr = right.add_gridspec(h, cols)
        for i in range(len(res.x)):
            ax = right.add_subplot(gr[i // cols, i % cols])
            label = ""
            if judged:
                unsure = "?" if float(run.confidence[i]) < run.metrics["confidence_threshold"] else ""
                label = f" '{int(run.predicted[i])}'{unsure}"
            # the loss was measured on the unclamped sample in the loop
            show_image(ax, res.x[i].clamp(-1, 1), f"{float(res.loss[i]):.0e}{label}", fontsize=6.5)
            if not bool(res.converged[i]):
                red_frame(ax)
        ok = int(res.converged.sum())
        what = "its activation" if run.objective == "feature" else "the full SAE code"
        concept = f"{run.concept}, " if run.concept is not None else ""
        right.suptitle(f"feature #{run.feature} ({concept}target {run.metrics['target_activation']:.2f}): "
                       f"{len(res.x)} invariant samples of {what}, {ok} below τ = {res.config.tau:g}", fontsize=9)
    return fig


def sae_label_histograms(runs: Sequence):
    """Per SAE feature: the digits classifier's labels of the top-activating real images against
    those of the invariant samples (counts per class; hatched: samples labelled with confidence
    below the threshold, i.e. not clearly digits)."""
    plt = pyplot()
    n = len(runs)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.0), constrained_layout=True, squeeze=False)
    classes = np.arange(10)
    for ax, run in zip(axes[0], runs):
        m = run.metrics
        ax.bar(classes - 0.2, m["real_label_histogram"], width=0.4, color=BLUE,
               label=f"top {m['n_top']} real images")
        conf = np.asarray(m["sample_label_histogram_confident"])
        ax.bar(classes + 0.2, conf, width=0.4, color=ORANGE,
               label=f"invariant samples, confidence ≥ {m['confidence_threshold']:g}")
        ax.bar(classes + 0.2, np.asarray(m["sample_label_histogram"]) - conf, width=0.4, bottom=conf,
               color="none", edgecolor=ORANGE, hatch="////", label="invariant samples, less confident")
        ax.set_xticks(classes)
        ax.set_xlabel("digits classifier's label")
        ax.set_ylabel("count")
        ax.set_title(f"feature #{run.feature} ({run.concept})", fontsize=9)
        ax.legend(fontsize=7)
    return fig
