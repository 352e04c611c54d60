"""Figures of the classifier-output chapter (thesis Figures 4.4-4.5)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from equidiff.core.filters import log_magnitude_spectrum
from equidiff.report.figures.common import pyplot, show_image, red_frame, METHOD_COLORS, show_spectrum

__all__ = ['classifier_spectra_figure', 'method_comparison_figure', 'cutoff_curve_figure', 'classifier_convergence_figure']


def classifier_spectra_figure(query, blocks: Sequence[dict], n: int = 7):
    """Thesis Figure 4.4 analogue: per block, the query x* (left) and ``n`` invariant samples
    (right), and under each image its centred log-magnitude spectrum log(1 + |FFT|) (DC in the
    centre, the highest frequencies at the border; one colour scale for the whole figure).

    ``blocks``: dicts with ``title``, ``x`` (N, 1, H, W) in [-1, 1], ``captions`` (N strings
    shown above the samples) and optionally ``ok`` (N bools; False: framed in red).
    """
    plt = pyplot()
    specs = [log_magnitude_spectrum(query)] + [log_magnitude_spectrum(b["x"][:n]) for b in blocks]
    vmin = min(float(s.min()) for s in specs)
    vmax = max(float(s.max()) for s in specs)
    cols = n + 1
    fig = plt.figure(figsize=(1.15 * cols + 0.6, 2.55 * len(blocks) + 0.2), constrained_layout=True)
    sub = fig.subfigures(len(blocks), 1, squeeze=False)[:, 0]
    for sf, b, spec in zip(sub, blocks, specs[1:]):
        axes = sf.subplots(2, cols)
        show_image(axes[0, 0], query[0], "query $x^*$", fontsize=8)
        show_spectrum(axes[1, 0], specs[0][0], vmin, vmax)
        axes[1, 0].set_ylabel("log |FFT|", fontsize=7)
        for j in range(n):
            if j >= len(b["x"]):
                axes[0, j + 1].axis("off")
                axes[1, j + 1].axis("off")
                continue
            show_image(axes[0, j + 1], b["x"][j], b["captions"][j], fontsize=6.5)
            show_spectrum(axes[1, j + 1], spec[j], vmin, vmax)
            if "ok" in b and not bool(b["ok"][j]):
                red_frame(axes[0, j + 1])
        for ax in axes[:, 0]:
            for s in ax.spines.values():
                s.set_linewidth(2)
        sf.suptitle(b["title"], fontsize=9)
    return fig


def method_comparison_figure(query, panels: dict, cols: int = 8):
    """The methods side by side, one panel per constraint (``{panel title: rows}``): per method
    (row) the mean log-magnitude spectrum of all its samples (left; one colour scale for the
    figure, that of the query printed at the top) and its first ``cols`` samples. Samples outside
    the invariant set at τ are framed in red.

    ``rows``: dicts with ``label``, ``x`` (N, 1, H, W), ``ok`` (N bools) and ``note`` (a short
    string shown under the label).
    """
    plt = pyplot()
    titles = list(panels)
    means = {t: [log_magnitude_spectrum(r["x"]).mean(0) for r in panels[t]] for t in titles}
    qspec = log_magnitude_spectrum(query)[0]
    allm = [m for t in titles for m in means[t]]
    vmin = min(float(qspec.min()), *(float(m.min()) for m in allm))
    vmax = max(float(qspec.max()), *(float(m.max()) for m in allm))
    heights = [1] + [len(panels[t]) + 0.35 for t in titles]
    fig = plt.figure(figsize=(1.05 * (cols + 2) + 1.6, 1.15 * sum(heights) + 0.2), constrained_layout=True)
    sub = fig.subfigures(len(titles) + 1, 1, height_ratios=heights, squeeze=False)[:, 0]
    ratios = [1.6, 1] + [1] * cols
    top = sub[0].subplots(1, cols + 2, gridspec_kw={"width_ratios": ratios})
    for ax in top:
        ax.axis("off")
    show_image(top[2], query[0], "query $x^*$", fontsize=7)
    top[1].axis("on")
    show_spectrum(top[1], qspec, vmin, vmax, "its spectrum")
    for sf, t in zip(sub[1:], titles):
        rows = panels[t]
        axes = sf.subplots(len(rows), cols + 2, squeeze=False, gridspec_kw={"width_ratios": ratios})
        for i, (r, m) in enumerate(zip(rows, means[t])):
            ax = axes[i, 0]
            ax.axis("off")
            ax.text(0.0, 0.5, f"{r['label']}\n{r.get('note', '')}", fontsize=7, va="center", ha="left",
                    transform=ax.transAxes)
            show_spectrum(axes[i, 1], m, vmin, vmax, "mean spectrum" if i == 0 else None)
            for j in range(cols):
                ax = axes[i, 2 + j]
                if j >= len(r["x"]):
                    ax.axis("off")
                    continue
                show_image(ax, r["x"][j])
                if not bool(r["ok"][j]):
                    red_frame(ax)
        sf.suptitle(t, fontsize=9)
    return fig


def cutoff_curve_figure(curves: dict, titles: dict | None = None, labels: dict | None = None, noun: str = "digits"):
    """Thesis Figure 4.5 analogue (Appendix .4.2): deviation of the true-class probability under
    an ideal low-pass filter, |p_y(F_c(x)) − p_y(x*)|, against the cutoff c, one panel per
    constraint. Black: the query; coloured: each method's samples (mean; band: ± one standard
    deviation for EquiDiff); grey band: real images of the query's class, each against its own
    unfiltered probability.

    ``curves``: ``{key: equidiff.chapters.classifier.cutoff_curves(...)}``; ``titles``: panel titles per key;
    ``labels``: legend label per method name; ``noun``: what the real images are (``world.image_noun``).
    """
    plt = pyplot()
    keys = list(curves)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.8 * len(keys), 3.7), constrained_layout=True,
                             squeeze=False, sharey=True)
    for ax, k in zip(axes[0], keys):
        c = curves[k]
        xs = np.asarray(c["cutoffs"])
        r = c["real_same_class"]
        rm, rs = np.asarray(r["mean"]), np.asarray(r["std"])
        ax.fill_between(xs, np.clip(rm - rs, 0, None), rm + rs, color="0.85", label=f"real {noun} of its class (n={r['n']})")
        ax.plot(xs, rm, color="0.55", lw=1)
        for name, m in c["methods"].items():
            mean, std = np.asarray(m["mean"]), np.asarray(m["std"])
            color = METHOD_COLORS.get(name, "0.3")
            lab = (labels or {}).get(name, name)
            if name == "equidiff":
                ax.fill_between(xs, np.clip(mean - std, 0, None), mean + std, color=color, alpha=0.25)
                ax.plot(xs, mean, "-o", color=color, lw=2, ms=4, label=f"{lab} samples (mean ± sd)", zorder=3)
            else:
                ax.plot(xs, mean, "--", color=color, lw=1.3, label=f"{lab} (mean)")
        ax.plot(xs, c["query"], "-s", color="k", lw=1.5, ms=4, label="query $x^*$", zorder=4)
        ax.set_xlabel("low-pass cutoff c (fraction of Nyquist)")
        ax.set_ylabel("$|p_y(F_c(x)) - p_y(x^*)|$")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(xs)
        ax.set_title((titles or {}).get(k, str(k)), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=6.5, loc="upper right")
    return fig


def classifier_convergence_figure(histories: dict, tau: float):
    """Per run (``{label: InvariantResult.history}``): the largest loss among its samples (left,
    log scale; dotted: τ) and the number of samples still above τ (right) against the step."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.3), constrained_layout=True)
    for label, h in histories.items():
        a.semilogy(h["loss_max"], label=label)
        b.plot(h["n_active"], label=label)
    a.axhline(tau, color="k", ls=":", lw=1, label="τ")
    a.set_xlabel("optimisation step")
    a.set_ylabel("largest loss among samples")
    b.set_xlabel("optimisation step")
    b.set_ylabel("samples still above τ")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    return fig
