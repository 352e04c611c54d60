"""Shared pieces of the book's figures: pyplot, saving, an image panel, frames, colours, a sample grid."""

from __future__ import annotations


import numpy as np

__all__ = ['PRIOR_GREEN', 'pyplot', 'save', 'show_image', 'red_frame', 'sample_grid', 'METHOD_COLORS', 'show_spectrum']


# Thesis Figure 3.1 colours: outer class blue, inner class pink, invariant points orange,
# queries as black stars, the 0.5 decision boundary in black.
BLUE, PINK, ORANGE = "#1f77b4", "#e377c2", "#ff7f0e"


PRIOR_GREEN = "#2ca02c"


def pyplot():
    import matplotlib.pyplot as plt  # headless machines pick the Agg backend by themselves

    return plt


def save(fig, path) -> str:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return str(path)


def show_image(ax, x, title=None, fontsize=7):
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
    plt = pyplot()
    x = result.x
    n = len(x)
    rows = int(np.ceil(n / cols))
    fig = plt.figure(figsize=(1.25 * (cols + 2), 1.35 * max(rows, 2) + 0.5), constrained_layout=True)
    gs = fig.add_gridspec(max(rows, 2), cols + 2)
    ax = fig.add_subplot(gs[0:2, 0:2])
    show_image(ax, query[0], "query $x^*$", fontsize=9)
    for i in range(n):
        ax = fig.add_subplot(gs[i // cols, 2 + i % cols])
        show_image(ax, x[i], f"{float(result.loss[i]):.1e}")
        if not bool(result.converged[i]):
            for s in ax.spines.values():
                s.set_edgecolor("red")
                s.set_linewidth(2)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def red_frame(ax):
    for s in ax.spines.values():
        s.set_edgecolor("red")
        s.set_linewidth(2)


# One colour per method of equidiff.chapters.classifier, the same in every figure of the chapter.
METHOD_COLORS = {
    "equidiff": PRIOR_GREEN,
    "equidiff_no_lowpass": "#17becf",
    "pixel": "#d62728",
    "pixel_fourier": ORANGE,
    "guidance": "#9467bd",
}


def show_spectrum(ax, s, vmin, vmax, title=None):
    s = s.detach().cpu() if hasattr(s, "detach") else s  # spectra of GPU samples
    ax.imshow(np.asarray(s), cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=7, pad=2)


