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

    ``runs``: :class:`equidiff.chapters.neurons.NeuronRun` objects.
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


# --------------------------------------------------------------------------------------------
# Chapter 4.3: SAE features (thesis Figure 4.3)
# --------------------------------------------------------------------------------------------


def _frame_red(ax):
    for s in ax.spines.values():
        s.set_edgecolor("red")
        s.set_linewidth(2)


def sae_top_images(rows: Sequence[dict], cols: int = 8):
    """Each chosen SAE feature's top-activating images: one row per feature.

    ``rows``: dicts with ``feature``, ``firing_rate``, ``images`` (n, 1, H, W) in [-1, 1] and
    ``values`` (n,) the feature's activations; in the digits world also ``concept``,
    ``selectivity`` and ``labels`` (n,) digit classes, at paper scale (no labels) ``indices``
    (n,) the images' numbers among the query images.
    """
    plt = _plt()
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
            _img(ax, row["images"][j], f"{name}  {float(row['values'][j]):.2f}")
        if labelled:
            axes[i, 0].set_ylabel(f"#{row['feature']}\n{row['concept']}\nsel. {row['selectivity']:.2f}, "
                                  f"rate {row['firing_rate']:.2f}", fontsize=7.5)
        else:
            axes[i, 0].set_ylabel(f"feature #{row['feature']}\nrate {row['firing_rate']:.2f}", fontsize=7.5)
    if not labelled:
        fig.suptitle("top-activating query images (title: image number, activation)", fontsize=9)
    return fig


def sae_feature_figure(runs: Sequence, n_real: int = 16, cols: int = 8):
    """Figure 4.3 analogue: per SAE feature (one block each), left the ``n_real`` top-activating
    training images (digit label and activation), right the invariant samples, each with its
    measured loss L2 = Σ(L(x) − L(x*))² and the digits classifier's label ("?": confidence below
    the threshold, not clearly a digit). Red frames: samples still above τ when the budget ran out.

    ``runs``: :class:`equidiff.chapters.sae.FeatureRun` objects.
    """
    plt = _plt()
    real_cols = 4
    heights = []
    for r in runs:
        heights.append(max(int(np.ceil(len(r.result.x) / cols)), int(np.ceil(min(n_real, len(r.top_images)) / real_cols))))
    fig = plt.figure(figsize=(1.05 * (cols + real_cols) + 0.6, 1.3 * sum(heights) + 0.75 * len(runs)),
                     constrained_layout=True)
    sub = fig.subfigures(len(runs), 1, height_ratios=[h + 0.6 for h in heights], squeeze=False)[:, 0]
    for sf, run, h in zip(sub, runs, heights):
        left, right = sf.subfigures(1, 2, width_ratios=[real_cols, cols + 0.6])
        res = run.result
        k = min(n_real, len(run.top_images))
        gl = left.add_gridspec(h, real_cols)
        for i in range(k):
            ax = left.add_subplot(gl[i // real_cols, i % real_cols])
            _img(ax, run.top_images[i], f"'{int(run.top_predicted[i])}' {float(run.top_values[i]):.2f}", fontsize=6.5)
        left.suptitle(f"real: top {k} training digits", fontsize=9)
        gr = right.add_gridspec(h, cols)
        for i in range(len(res.x)):
            ax = right.add_subplot(gr[i // cols, i % cols])
            unsure = "?" if float(run.confidence[i]) < run.metrics["confidence_threshold"] else ""
            _img(ax, res.x[i], f"{float(res.loss[i]):.0e} '{int(run.predicted[i])}'{unsure}", fontsize=6.5)
            if not bool(res.converged[i]):
                _frame_red(ax)
        ok = int(res.converged.sum())
        what = "its activation" if run.objective == "feature" else "the full SAE code"
        right.suptitle(f"feature #{run.feature} ({run.concept}, target {run.metrics['target_activation']:.2f}): "
                       f"{len(res.x)} invariant samples of {what}, {ok} below τ = {res.config.tau:g}", fontsize=9)
    return fig


def sae_label_histograms(runs: Sequence):
    """Per SAE feature: the digits classifier's labels of the top-activating real images against
    those of the invariant samples (counts per class; hatched: samples labelled with confidence
    below the threshold, i.e. not clearly digits)."""
    plt = _plt()
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


# --------------------------------------------------------------------------------------------
# Chapter 4.4: classifier outputs (thesis Figures 4.4 and 4.5)
# --------------------------------------------------------------------------------------------

# One colour per method of equidiff.outputs, the same in every figure of the chapter.
METHOD_COLORS = {
    "equidiff": PRIOR_GREEN,
    "equidiff_no_lowpass": "#17becf",
    "pixel": "#d62728",
    "pixel_fourier": ORANGE,
    "guidance": "#9467bd",
}


def _spectrum(ax, s, vmin, vmax, title=None):
    s = s.detach().cpu() if hasattr(s, "detach") else s  # spectra of GPU samples
    ax.imshow(np.asarray(s), cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=7, pad=2)


def _red_frame(ax):
    for s in ax.spines.values():
        s.set_edgecolor("red")
        s.set_linewidth(2)


def classifier_spectra_figure(query, blocks: Sequence[dict], n: int = 7):
    """Thesis Figure 4.4 analogue: per block, the query x* (left) and ``n`` invariant samples
    (right), and under each image its centred log-magnitude spectrum log(1 + |FFT|) (DC in the
    centre, the highest frequencies at the border; one colour scale for the whole figure).

    ``blocks``: dicts with ``title``, ``x`` (N, 1, H, W) in [-1, 1], ``captions`` (N strings
    shown above the samples) and optionally ``ok`` (N bools; False: framed in red).
    """
    from equidiff.core.filters import log_magnitude_spectrum

    plt = _plt()
    specs = [log_magnitude_spectrum(query)] + [log_magnitude_spectrum(b["x"][:n]) for b in blocks]
    vmin = min(float(s.min()) for s in specs)
    vmax = max(float(s.max()) for s in specs)
    cols = n + 1
    fig = plt.figure(figsize=(1.15 * cols + 0.6, 2.55 * len(blocks) + 0.2), constrained_layout=True)
    sub = fig.subfigures(len(blocks), 1, squeeze=False)[:, 0]
    for sf, b, spec in zip(sub, blocks, specs[1:]):
        axes = sf.subplots(2, cols)
        _img(axes[0, 0], query[0], "query $x^*$", fontsize=8)
        _spectrum(axes[1, 0], specs[0][0], vmin, vmax)
        axes[1, 0].set_ylabel("log |FFT|", fontsize=7)
        for j in range(n):
            if j >= len(b["x"]):
                axes[0, j + 1].axis("off")
                axes[1, j + 1].axis("off")
                continue
            _img(axes[0, j + 1], b["x"][j], b["captions"][j], fontsize=6.5)
            _spectrum(axes[1, j + 1], spec[j], vmin, vmax)
            if "ok" in b and not bool(b["ok"][j]):
                _red_frame(axes[0, j + 1])
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
    from equidiff.core.filters import log_magnitude_spectrum

    plt = _plt()
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
    _img(top[2], query[0], "query $x^*$", fontsize=7)
    top[1].axis("on")
    _spectrum(top[1], qspec, vmin, vmax, "its spectrum")
    for sf, t in zip(sub[1:], titles):
        rows = panels[t]
        axes = sf.subplots(len(rows), cols + 2, squeeze=False, gridspec_kw={"width_ratios": ratios})
        for i, (r, m) in enumerate(zip(rows, means[t])):
            ax = axes[i, 0]
            ax.axis("off")
            ax.text(0.0, 0.5, f"{r['label']}\n{r.get('note', '')}", fontsize=7, va="center", ha="left",
                    transform=ax.transAxes)
            _spectrum(axes[i, 1], m, vmin, vmax, "mean spectrum" if i == 0 else None)
            for j in range(cols):
                ax = axes[i, 2 + j]
                if j >= len(r["x"]):
                    ax.axis("off")
                    continue
                _img(ax, r["x"][j])
                if not bool(r["ok"][j]):
                    _red_frame(ax)
        sf.suptitle(t, fontsize=9)
    return fig


def cutoff_curve_figure(curves: dict, titles: dict | None = None, labels: dict | None = None):
    """Thesis Figure 4.5 analogue (Appendix .4.2): deviation of the true-class probability under
    an ideal low-pass filter, |p_y(F_c(x)) − p_y(x*)|, against the cutoff c, one panel per
    constraint. Black: the query; coloured: each method's samples (mean; band: ± one standard
    deviation for EquiDiff); grey band: real digits of the query's class, each against its own
    unfiltered probability.

    ``curves``: ``{key: equidiff.chapters.classifier.cutoff_curves(...)}``; ``titles``: panel titles per key;
    ``labels``: legend label per method name.
    """
    plt = _plt()
    keys = list(curves)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.8 * len(keys), 3.7), constrained_layout=True,
                             squeeze=False, sharey=True)
    for ax, k in zip(axes[0], keys):
        c = curves[k]
        xs = np.asarray(c["cutoffs"])
        r = c["real_same_class"]
        rm, rs = np.asarray(r["mean"]), np.asarray(r["std"])
        ax.fill_between(xs, np.clip(rm - rs, 0, None), rm + rs, color="0.85", label=f"real digits of its class (n={r['n']})")
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
    plt = _plt()
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


# --------------------------------------------------------------------------------------------
# Chapter 5: applications (planted shortcut, choosing members)
# --------------------------------------------------------------------------------------------


def shortcut_world_figure(images, labels, marked, shortcut_class: int, per_class: int = 3):
    """Training images of the planted-shortcut world: for each class, ``per_class`` images, marked
    ones first; the title says the class and its share of marked training images."""
    plt = _plt()
    labels, marked = np.asarray(labels), np.asarray(marked, dtype=bool)
    fig, axes = plt.subplots(per_class, 10, figsize=(10 * 0.95, per_class * 1.05 + 0.5),
                             constrained_layout=True, squeeze=False)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        order = np.concatenate([idx[marked[idx]], idx[~marked[idx]]])[:per_class]
        for r in range(per_class):
            ax = axes[r, c]
            _img(ax, images[order[r]])
            if r == 0:
                share = marked[idx].mean()
                ax.set_title(f"'{c}': {share:.0%}", fontsize=9, color="red" if c == shortcut_class else "black")
    fig.suptitle("training images per class (top: marked ones first); title: share of that class carrying "
                 "the marker", fontsize=9)
    return fig


def reliance_figure(rows: dict):
    """Grouped bars: per classifier (``rows`` name -> reliance dict), accuracy on clean, in-distribution
    and marker-swapped test images, and the share of marked other-class images called the shortcut class."""
    plt = _plt()
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
    ax.set_title("Does the classifier read the digit or the marker? (digits test split, 360 images)", fontsize=9)
    return fig


def detection_grid(detection, cols: int = 16, max_n: int = 64):
    """Invariant samples of one classifier's shortcut-class probability. Under each image: the judge's
    class for the marker-blanked image. Red frame: a planted-shortcut hit (member, marker, not the
    class); grey background title: not a member (loss ≥ τ)."""
    plt = _plt()
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
        _img(ax, detection.x[i], f"'{int(detection.judged[i])}'" + ("" if member else " ✗"), fontsize=6.5)
        if hits[i]:
            _frame_red(ax)
    s = detection.summary()
    fig.suptitle(f"{detection.name} classifier: {s['n_members']}/{s['n_samples']} members; red = marker and "
                 f"not a '{detection.shortcut_class}' ({s['share']:.0%} of members); label = judge's class "
                 f"of the image with the corner blanked; ✗ = not a member", fontsize=8.5)
    return fig


def share_figure(summaries: dict, shortcut_class: int):
    """Share of invariant-set members that carry the marker without depicting the shortcut class,
    per classifier, with the bootstrap interval as an error bar."""
    plt = _plt()
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
    plt = _plt()
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
            _img(ax, x[i], None if judged is None else f"'{int(judged[i])}'", fontsize=7)
            if rel is not None and rel[i]:
                _frame_red(ax)
        share = "" if rel is None or not idx else f"\n{rel[idx].mean():.0%} red"
        axes[r, 0].set_ylabel(f"{name}{share}", fontsize=8)
    return fig


def circles_selection_figure(model, points, picked: Sequence[int], train_points, query, box: float = 2.5):
    """Circles world: an invariant set (orange), the k selected members (black rings, numbered in pick
    order), the training data (grey) and the query (star)."""
    plt = _plt()
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
