"""Figures of the "your own classifier" chapter (notebook 06_own_classifier): what the wrapped model sees,
and the query beside the members of an invariant set, each labelled by the judge and by the model."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from equidiff.report.figures.common import pyplot, red_frame, show_image

__all__ = ["model_view_figure", "members_figure"]


def model_view_figure(query, views: dict, title: str = ""):
    """The query as the prior makes it (left) and as the wrapped model receives it under each fit.

    ``query``: (1, C, H, W) in [-1, 1]; ``views``: caption -> (1, C, H', W') in [-1, 1] (the model's
    image before its normalisation, mapped to [-1, 1] for display).
    """
    plt = pyplot()
    n = 1 + len(views)
    fig, axes = plt.subplots(1, n, figsize=(2.0 * n, 2.2), squeeze=False)
    show_image(axes[0, 0], query[0], f"prior's image, {query.shape[-2]}×{query.shape[-1]}", fontsize=8)
    for ax, (caption, v) in zip(axes[0, 1:], views.items()):
        show_image(ax, v[0], caption, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def members_figure(query, x, row: dict, query_caption: str, title: str = "", cols: int = 8,
                   class_names: Sequence[str] | None = None):
    """The query (left, large) beside the samples of one run: each titled ``judge / model`` with the two
    classifiers' labels, a "?" after the judge's where its confidence is below ``row["confident"]`` (the
    world's threshold for a recognisable digit); a title in red where the two disagree, a red frame around a
    sample that did not reach τ (not a member).

    ``query``: (1, C, H, W) and ``x``: (N, C, H, W), both in [-1, 1]; ``row``: what
    :func:`equidiff.chapters.own_model.judge_members` measured of them (``confident`` and ``samples``: per
    sample ``judge_labels``, ``model_labels``, ``converged``, ``judge_confidence``).
    """
    plt = pyplot()
    name = (lambda k: class_names[int(k)]) if class_names else (lambda k: str(int(k)))
    samples, n = row["samples"], len(x)
    rows = max(int(np.ceil(n / cols)), 2)
    fig = plt.figure(figsize=(1.05 * (cols + 2), 1.2 * rows + 0.6), constrained_layout=True)
    gs = fig.add_gridspec(rows, cols + 2)
    ax = fig.add_subplot(gs[0:2, 0:2])
    show_image(ax, query[0], query_caption, fontsize=9)
    for i in range(n):
        ax = fig.add_subplot(gs[i // cols, 2 + i % cols])
        j, m = int(samples["judge_labels"][i]), int(samples["model_labels"][i])
        unsure = "?" if float(samples["judge_confidence"][i]) < float(row["confident"]) else ""
        show_image(ax, x[i], f"{name(j)}{unsure} / {name(m)}", fontsize=8)
        if j != m:
            ax.title.set_color("red")
        if not bool(samples["converged"][i]):
            red_frame(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
