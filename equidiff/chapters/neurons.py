"""Thesis Section 4.2 in the embedded world: invariant sets of single neurons of the digits ResNet.

The thesis picks three neurons of ResNet-50's last stage (#1656 zebra striping, #1052 honeycomb,
#421 gyromitra) by their *semantic alignment* r from SemanticLens [Dreyer et al., 2025], which
embeds each neuron's top-activating ImageNet patches with CLIP and compares them with text
concepts (Appendix .5). Neither CLIP nor ImageNet is available offline, so this module computes
an alignment that needs neither:

* **Concepts** (:func:`concept_labels`) are labels computed automatically on the digits: the ten
  digit classes and four stroke shapes measured on the thresholded image — ``closed loop`` (a
  background region not connected to the border, found with ``scipy.ndimage.label``), ``two
  loops``, ``horizontal bar`` (a row with a long run of ink) and ``vertical stroke`` (a column
  with a long run of ink).
* **Alignment r** (:func:`alignment_scores`) of a channel with a concept is the point-biserial
  correlation: Pearson's r between the channel's mean pre-activation (the mean of its 4×4 map,
  read before the block's final activation) and the concept's 0/1 label, over the training
  digits. r ∈ [-1, 1]; r = 1 would mean the channel's activation separates the images with the
  concept from those without it perfectly (linearly). It is a *correlation over a labelled
  data set* (as in Network Dissection), not SemanticLens' CLIP similarity: the numbers are on a
  different scale from the thesis' r = 0.88–0.95.

:func:`run_neuron` is the protocol of Section 4.2.2 for one neuron: the query x* is the image
that activates the channel most strongly; the objective is the channel's whole 4×4 pre-activation
map (16 values, the analogue of the thesis' 7×7 = 49 "logits"); ``n_samples`` invariant samples
come from :func:`equidiff.core.invariants.find_invariants` through the pixel DDIM prior; the returned
metrics are those of Table 4.1 plus diversity and the classifier's reading of the samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from equidiff._validate import bad as _bad
from equidiff.core.objectives import capture_activation, neuron_map, resolve_module
from equidiff.report.progress import ProgressLine

__all__ = [
    "LAYER",
    "PROFILES",
    "PAPER_NEURONS",
    "PAPER_ALIGNMENT",
    "PAPER_PROFILE",
    "NeuronWorld",
    "load_world",
    "run_paper_neuron",
    "sample_summaries",
    "DIGIT_CONCEPTS",
    "STROKE_CONCEPTS",
    "CONCEPTS",
    "closed_loops",
    "longest_run",
    "concept_labels",
    "channel_activations",
    "alignment_scores",
    "AlignmentTable",
    "alignment_table",
    "SelectedNeuron",
    "select_neurons",
    "top_activating",
    "resolve_profile",
    "NeuronRun",
    "run_neuron",
    "choose_neurons",
    "top_image_rows",
    "html_table",
    "alignment_html",
    "table_rows",
    "table_html",
]

# The neuron layer: the *input* of the last block's final activation (read="input"), i.e. the
# unbounded pre-activation values — the thesis' "L2 losses computed on unbounded activation logits".
LAYER = "layer4.0.act2"

# Defaults per profile (explicit arguments of run_neuron override them).
PROFILES: dict[str, dict] = {
    "cpu": {"n_samples": 32, "steps": 200, "ddim_steps": 10},  # Section 4.2.2: 32 samples per neuron
    "smoke": {"n_samples": 4, "steps": 20, "ddim_steps": 5},  # seconds-long run of the same code path
}
# The thesis' neurons (ResNet-50, last stage, Section 4.2.1) and their SemanticLens alignment r as the
# thesis reports it (not recomputed here: SemanticLens needs CLIP and ImageNet).
PAPER_NEURONS = {1656: "zebra striping", 1052: "honeycomb", 421: "gyromitra"}
PAPER_ALIGNMENT = {1656: 0.945, 1052: 0.880, 421: 0.952}
# profile "paper": the thesis' protocol (Section 4.2.2: 32 samples, 1,024 steps); DDIM steps of the latent DiT
PAPER_PROFILE = {"n_samples": 32, "steps": 1024, "ddim_steps": 25}

DIGIT_CONCEPTS = tuple(f"digit {d}" for d in range(10))
STROKE_CONCEPTS = ("closed loop", "two loops", "horizontal bar", "vertical stroke")
CONCEPTS = DIGIT_CONCEPTS + STROKE_CONCEPTS
CONCEPT_SETS = {"all": CONCEPTS, "digits": DIGIT_CONCEPTS, "strokes": STROKE_CONCEPTS}

# Thresholds of the stroke concepts, on images in [-1, 1] (background -1, ink +1).
HOLE_INK = -0.25  # a pixel is ink for the loop test if its value is > -0.25 (intensity > 0.375)
RUN_INK = 0.0  # a pixel is ink for the bar / stroke tests if its value is > 0 (intensity > 0.5)
BAR_RUN = 10  # horizontal bar: some row holds ≥ 10 consecutive ink pixels (of 16)
STROKE_RUN = 14  # vertical stroke: some column holds ≥ 14 consecutive ink pixels (of 16)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise _bad("images", shape, "a tensor of grey images, shape (N, 1, H, W), values in [-1, 1]")
    return images


# --------------------------------------------------------------------------------------------
# Concepts
# --------------------------------------------------------------------------------------------


def closed_loops(image: np.ndarray, threshold: float = HOLE_INK) -> int:
    """Number of holes of one (H, W) image: background regions not connected to the border.

    Background is labelled with 4-connectivity (``scipy.ndimage.label``'s default), the
    topologically consistent partner of 8-connected ink: a diagonal gap in a stroke does not open
    a loop.
    """
    from scipy import ndimage

    bg = np.asarray(image) <= threshold  # (H, W) background pixels
    lab, n = ndimage.label(bg)
    border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))) - {0}
    return int(sum(1 for i in range(1, n + 1) if i not in border))


def longest_run(mask: np.ndarray, axis: int) -> int:
    """Longest run of consecutive True values along ``axis`` (1: within rows, 0: within columns)."""
    m = np.asarray(mask, dtype=bool)
    if axis == 0:
        m = m.T
    best = 0
    for row in m:
        cur = 0
        for v in row:
            cur = cur + 1 if v else 0
            best = max(best, cur)
    return best


def concept_labels(images: torch.Tensor, labels=None) -> tuple[np.ndarray, list[str]]:
    """Binary concept matrix of the images: ``(N, n_concepts)`` bool, and the concept names.

    With ``labels`` (N,) the ten digit classes come first (``"digit 0"`` ... ``"digit 9"``), then
    the stroke concepts of :data:`STROKE_CONCEPTS`; without labels only the stroke concepts.
    """
    images = _check_images(images)
    x = images[:, 0].detach().cpu().numpy()  # (N, H, W)
    holes = np.array([closed_loops(im) for im in x])
    ink = x > RUN_INK
    hrun = np.array([longest_run(m, axis=1) for m in ink])
    vrun = np.array([longest_run(m, axis=0) for m in ink])
    strokes = np.stack([holes >= 1, holes >= 2, hrun >= BAR_RUN, vrun >= STROKE_RUN], 1)
    if labels is None:
        return strokes, list(STROKE_CONCEPTS)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if len(y) != len(x):
        raise _bad("labels", f"{len(y)} labels", f"one label per image ({len(x)})")
    digits = y[:, None] == np.arange(10)[None, :]
    return np.concatenate([digits, strokes], 1), list(CONCEPTS)


# --------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def channel_activations(model, images: torch.Tensor, layer: str = LAYER, reduce: str = "mean",
                        batch: int = 512) -> torch.Tensor:
    """Pre-activations of every channel of ``layer`` (its input): (N, C) means, or (N, C, H, W) maps."""
    if reduce not in ("mean", "map"):
        raise _bad("reduce", reduce, "'mean' or 'map'")
    images = _check_images(images)
    module = resolve_module(model, layer)
    out = []
    for i in range(0, len(images), batch):
        with capture_activation(module) as store:
            model(images[i : i + batch])
        a = store["input"]  # (B, C, H, W)
        out.append(a.mean((2, 3)) if reduce == "mean" else a)
    return torch.cat(out)


def alignment_scores(activations, concepts) -> np.ndarray:
    """Point-biserial correlation r of every channel with every concept: (C, K), values in [-1, 1].

    ``activations`` (N, C): one scalar per image and channel; ``concepts`` (N, K) 0/1 labels.
    A concept or channel that is constant over the images has no defined correlation: r = 0.
    """
    a = np.asarray(activations, dtype=np.float64)
    c = np.asarray(concepts, dtype=np.float64)
    if a.ndim != 2 or c.ndim != 2 or len(a) != len(c):
        raise _bad("activations, concepts", (a.shape, c.shape), "arrays (N, C) and (N, K) with the same N")
    a = a - a.mean(0)
    c = c - c.mean(0)
    num = a.T @ c  # (C, K)
    den = np.sqrt((a**2).sum(0))[:, None] * np.sqrt((c**2).sum(0))[None, :]
    r = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return np.clip(r, -1.0, 1.0)


@dataclass
class AlignmentTable:
    """Alignment of every channel of the neuron layer with every concept, over one data set."""

    scores: np.ndarray  # (C, K) point-biserial r
    concepts: list  # K concept names
    activations: torch.Tensor  # (N, C) channel-mean pre-activations of the images
    labels: np.ndarray  # (N, K) bool concept labels
    images: torch.Tensor  # (N, 1, H, W) the images the table was computed on
    digit_labels: torch.Tensor  # (N,) digit classes

    def best_channel(self, concept: str) -> tuple[int, float]:
        """The channel most aligned with ``concept`` and its r."""
        if concept not in self.concepts:
            raise _bad("concept", concept, f"one of {self.concepts}")
        k = self.concepts.index(concept)
        ch = int(np.argmax(self.scores[:, k]))
        return ch, float(self.scores[ch, k])

    def best_concept(self, channel: int) -> tuple[str, float]:
        """The concept ``channel`` is most aligned with and its r."""
        _check_channel(channel, self.scores.shape[0])
        k = int(np.argmax(self.scores[channel]))
        return self.concepts[k], float(self.scores[channel, k])

    def rows(self) -> list[dict]:
        """One row per concept: its share of the images, best channel and that channel's r."""
        out = []
        for k, name in enumerate(self.concepts):
            ch, r = self.best_channel(name)
            out.append({"concept": name, "share": float(self.labels[:, k].mean()), "channel": ch, "r": r})
        return out


def _check_channel(channel, n_channels: int) -> int:
    if not _is_int(channel) or not (0 <= int(channel) < n_channels):
        raise _bad("channel", channel, f"an integer in [0, {n_channels - 1}] (channels of {LAYER})")
    return int(channel)


def alignment_table(model, images: torch.Tensor, labels, layer: str = LAYER) -> AlignmentTable:
    """Concept labels, channel-mean pre-activations and their correlations for a labelled image set."""
    concepts, names = concept_labels(images, labels)
    acts = channel_activations(model, images, layer)
    return AlignmentTable(alignment_scores(acts, concepts), names, acts, concepts, images,
                          torch.as_tensor(np.asarray(labels)))


@dataclass
class SelectedNeuron:
    channel: int  # channel of the neuron layer
    concept: str  # the concept it is most aligned with (among those allowed)
    alignment: float  # point-biserial r with that concept


def select_neurons(table: AlignmentTable, k: int = 3, concepts=None) -> list[SelectedNeuron]:
    """``k`` channels with high alignment for ``k`` different concepts (thesis Appendix .5.1).

    Greedy: over all (channel, concept) pairs allowed by ``concepts`` (default: all), take the
    pair with the highest r, then the next one whose concept *and* channel are both new, until
    ``k`` are chosen. Returned in the order chosen (highest r first).
    """
    names, cols = concept_columns(table.concepts, concepts, k, "neuron")
    s = table.scores[:, cols]  # (C, K')
    return [SelectedNeuron(ch, names[j], float(s[ch, j])) for ch, j in greedy_distinct_pairs(s, k)]


def concept_columns(known, concepts, k: int, unit: str) -> tuple[list[str], list[int]]:
    """Check a selection's ``concepts`` (None: all of ``known``) and ``k``; their names and columns."""
    names = list(known) if concepts is None else list(concepts)
    for c in names:
        if c not in known:
            raise _bad("concepts", c, f"names among {known}")
    if not _is_int(k) or not (1 <= k <= len(names)):
        raise _bad("k", k, f"an integer in [1, {len(names)}] (one {unit} per distinct concept)")
    return names, [list(known).index(c) for c in names]


def greedy_distinct_pairs(scores: np.ndarray, k: int, floor: float | None = None) -> list[tuple[int, int]]:
    """Up to ``k`` (row, column) pairs of ``scores`` (units × concepts), highest first, no row and no
    column used twice; pairs scoring below ``floor`` are never taken. Ties keep index order."""
    order = np.dstack(np.unravel_index(np.argsort(-scores, axis=None, kind="stable"), scores.shape))[0]
    chosen: list[tuple[int, int]] = []
    used_row, used_col = set(), set()
    for r, c in order:
        if floor is not None and scores[r, c] < floor:
            break
        if int(r) in used_row or int(c) in used_col:
            continue
        chosen.append((int(r), int(c)))
        used_row.add(int(r))
        used_col.add(int(c))
        if len(chosen) == k:
            break
    return chosen


def choose_neurons(table: AlignmentTable, neurons="auto", concept_set: str = "all", k: int = 3) -> list[SelectedNeuron]:
    """The notebook's choice: ``"auto"`` = :func:`select_neurons` among ``concept_set``
    (``"all"``, ``"digits"`` or ``"strokes"``); or a list of channels, each paired with the
    concept of ``concept_set`` it is most aligned with."""
    if concept_set not in CONCEPT_SETS:
        raise _bad("concept_set", concept_set, f"one of {tuple(CONCEPT_SETS)}")
    allowed = list(CONCEPT_SETS[concept_set])
    if isinstance(neurons, str) and neurons == "auto":
        return select_neurons(table, k, concepts=allowed)
    n_ch = table.scores.shape[0]
    if not isinstance(neurons, (list, tuple)) or not neurons or not all(_is_int(c) for c in neurons):
        raise _bad("neurons", neurons, f"'auto' or a non-empty list of channel integers in [0, {n_ch - 1}]")
    cols = [table.concepts.index(c) for c in allowed]
    out = []
    for ch in neurons:
        ch = _check_channel(ch, n_ch)
        j = int(np.argmax(table.scores[ch, cols]))
        out.append(SelectedNeuron(ch, allowed[j], float(table.scores[ch, cols[j]])))
    return out


def top_activating(table: AlignmentTable, channel: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into ``table.images``) of the ``n`` images with the highest channel-mean pre-activation, and those values."""
    channel = _check_channel(channel, table.activations.shape[1])
    if not _is_int(n) or not (1 <= n <= len(table.activations)):
        raise _bad("n", n, f"an integer in [1, {len(table.activations)}]")
    vals, idx = torch.topk(table.activations[:, channel], n)
    return idx, vals


def top_image_rows(table: AlignmentTable, chosen, n: int = 8) -> list[dict]:
    """Rows for :func:`equidiff.report.figures.neuron_top_images`: each neuron's ``n`` top-activating images."""
    rows = []
    for s in chosen:
        idx, vals = top_activating(table, s.channel, n)
        rows.append({"channel": s.channel, "concept": s.concept, "alignment": s.alignment,
                     "images": table.images[idx], "values": vals, "labels": table.digit_labels[idx]})
    return rows


def html_table(header, rows, note: str = "") -> str:
    """A plain HTML table (the book renders notebook HTML outputs as they are; no pandas needed)."""
    import html

    esc = lambda v: html.escape(str(v))  # noqa: E731
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    foot = f"<p><small>{esc(note)}</small></p>" if note else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{foot}"


def alignment_html(table: AlignmentTable) -> str:
    """Per concept: its share of the images, the most aligned channel and its r (HTML table)."""
    rows = [(r["concept"], f"{r['share']:.2f}", f"#{r['channel']}", f"{r['r']:.2f}") for r in table.rows()]
    return html_table(("Concept", "share of images", "best channel", "r"), rows)


# --------------------------------------------------------------------------------------------
# Section 4.2.2 protocol
# --------------------------------------------------------------------------------------------


def resolve_profile(profile: str) -> dict:
    """Defaults of a profile: ``"cpu"``/``"smoke"`` (the digits world) or ``"paper"`` (ResNet-50 + latent DiT,
    :func:`run_paper_neuron`; its neurons are :attr:`equidiff.worlds.imagenet.models.PaperConfig.neurons`)."""
    if profile == "paper":
        return dict(PAPER_PROFILE)
    if profile not in PROFILES:
        raise _bad("profile", profile, f"one of {tuple(PROFILES) + ('paper',)}")
    return dict(PROFILES[profile])


@dataclass
class NeuronRun:
    """One neuron's invariant set (Section 4.2.2) and its Table 4.1 metrics."""

    channel: int
    concept: str
    alignment: float
    query: torch.Tensor  # (1, 1, H, W) the strongest-activating image x*
    query_index: int  # its index in the image set searched
    query_label: int  # its digit class
    query_map: torch.Tensor  # (H', W') its pre-activation map (the target, 16 values)
    result: object  # InvariantResult
    predicted: torch.Tensor  # (N,) the classifier's class for each sample
    metrics: dict = field(default_factory=dict)

    @property
    def description(self) -> str:
        return f"neuron {self.channel} ({self.concept}, r = {self.alignment:.2f})"


def _run_settings(profile: str, *, n_samples=None, steps=None, ddim_steps=None, tau=0.01, optimizer="lbfgs",
                  lr=1.0, seed=0, restart_after=None):
    """The checked settings of :func:`run_neuron`: ``(InvariantConfig, ddim_steps)``, profile defaults filled in."""
    from equidiff.core.invariants import InvariantConfig

    if profile == "paper":
        raise ValueError("run_neuron runs the digits world; profile 'paper' runs through "
                         "load_world('paper', ...) and run_paper_neuron (ResNet-50 + latent DiT)")
    defaults = resolve_profile(profile)
    n_samples = defaults["n_samples"] if n_samples is None else n_samples
    steps = defaults["steps"] if steps is None else steps
    ddim_steps = defaults["ddim_steps"] if ddim_steps is None else ddim_steps
    if not _is_int(n_samples) or n_samples < 2:
        raise _bad("n_samples", n_samples, "an integer ≥ 2 (FID and diversity need two samples)")
    if not _is_int(ddim_steps) or ddim_steps < 1:
        raise _bad("ddim_steps", ddim_steps, "an integer ≥ 1")
    cfg = InvariantConfig(n_samples=n_samples, steps=steps, tau=tau, optimizer=optimizer, lr=lr, seed=seed,
                          restart_after=restart_after)
    return cfg, ddim_steps


def run_neuron(
    classifier,
    ddpm,
    channel: int,
    table: AlignmentTable,
    real_images: torch.Tensor,
    *,
    concept: str | None = None,
    profile: str = "cpu",
    n_samples: int | None = None,
    steps: int | None = None,
    ddim_steps: int | None = None,
    tau: float = 0.01,
    optimizer: str = "lbfgs",
    lr: float = 1.0,
    seed: int = 0,
    checkpointing: bool = False,
    restart_after: int | None = None,
    on_step=None,
) -> NeuronRun:
    """Thesis Section 4.2.2 for one channel of :data:`LAYER`.

    1. query x* = the image of ``table.images`` with the highest channel-mean pre-activation;
    2. constraint: the channel's whole pre-activation map, n(x) = n(x*) (16 values on 4×4);
    3. ``n_samples`` invariant samples from ``find_invariants`` through ``PixelDDIMPrior``
       (``ddim_steps`` DDIM steps, ``optimizer`` with ``lr``, threshold ``tau``, budget ``steps``;
       the default per-sample L-BFGS reaches τ on the 16 values where Adam stalls, see
       :mod:`equidiff.lbfgs`; ``checkpointing`` off by default: at T = 10 on 16×16 images the
       memory is small and the chain runs about 1.6× faster without recomputation);
    4. metrics: per-sample L2 = Σ(n(x) − n(x*))² over the 16 values (the Algorithm 1 loss) and
       L1 = Σ|·|, the FID in the digits classifier's feature space against ``real_images``, and
       diversity (mean pairwise distance of the samples in that feature space).

    ``classifier`` and ``ddpm`` are :class:`equidiff.worlds.digits.models.ZooModel` (or the bare modules; the
    ddpm needs ``.model`` and ``.scheduler``). Profile defaults fill ``n_samples``, ``steps``
    and ``ddim_steps`` when they are None. ``on_step``, if given, is called with every
    :class:`equidiff.core.invariants.StepState` (progress reports).
    """
    from equidiff.core.priors import PixelDDIMPrior
    from equidiff.core.invariants import iterate_invariants
    from equidiff.core.metrics import classifier_features, diversity, feature_fid, l1_l2

    cfg, ddim_steps = _run_settings(profile, n_samples=n_samples, steps=steps, ddim_steps=ddim_steps, tau=tau,
                                    optimizer=optimizer, lr=lr, seed=seed, restart_after=restart_after)
    n_samples = cfg.n_samples
    real_images = _check_images(real_images)
    if len(real_images) < 2:
        raise _bad("real_images", len(real_images), "at least 2 images")
    clf = getattr(classifier, "model", classifier)
    channel = _check_channel(channel, table.activations.shape[1])
    if concept is None:
        concept, r = table.best_concept(channel)
    else:
        if concept not in table.concepts:
            raise _bad("concept", concept, f"one of {table.concepts}")
        r = float(table.scores[channel, table.concepts.index(concept)])

    # Step 1: the query that activates the neuron most strongly.
    idx, _ = top_activating(table, channel, 1)
    qi = int(idx[0])
    query = table.images[qi : qi + 1]  # (1, 1, H, W)
    # Step 2: the whole pre-activation map of the channel (read before the final activation).
    objective = neuron_map(clf, LAYER, channel, reduce="map", read="input", name="digits ResNet")
    # Step 3: EquiDiff (Algorithm 1) through the deterministic DDIM prior.
    prior = PixelDDIMPrior(ddpm.model, ddpm.scheduler, num_steps=ddim_steps, checkpointing=checkpointing, clamp=False)
    out: dict = {}
    for state in iterate_invariants(objective, query, prior, cfg, _out=out):
        if on_step is not None:
            on_step(state)
    result = out["result"]

    # Step 4: metrics.
    l1, l2 = l1_l2(result.measurements, result.target)  # (N,), (N,)
    # the images as shown; the loss was measured on the unclamped chain output (clamp=False), which
    # the scheduler's clip_sample keeps in [-1, 1] in practice, so this is a safeguard
    x = result.x.clamp(-1, 1)
    with torch.no_grad():
        predicted = clf(x).argmax(1)
    feats = classifier_features(clf, x)
    gen = torch.Generator().manual_seed(seed)
    ref = table.images[torch.randperm(len(table.images), generator=gen)[:n_samples]]
    same = table.images[table.digit_labels == table.digit_labels[qi]]
    same = same[torch.randperm(len(same), generator=gen)[:n_samples]]
    done = result.steps_to_converge[result.converged].float()
    metrics = {
        "channel": channel,
        "concept": concept,
        "alignment": r,
        "query_index": qi,
        "query_label": int(table.digit_labels[qi]),
        "query_top_activation": float(result.target.max()),
        "query_mean_activation": float(result.target.mean()),
        "n_samples": n_samples,
        "l2_mean": float(l2.mean()),
        "l2_std": float(l2.std()) if n_samples > 1 else 0.0,
        "l2_median": float(l2.median()),  # the L2 distribution is heavy-tailed: a few samples lag far behind
        "l1_mean": float(l1.mean()),
        # L2 relative to the target's own size Σ n(x*)²: a scale-free reading of the error
        "l2_relative": float(l2.mean() / (result.target**2).sum()),
        # FID in the digits classifier's feature space (not Inception), samples vs real test digits
        "fid": feature_fid(clf, x, real_images),
        # the same FID for n_samples real training digits: the floor this sample size allows
        "fid_real_reference": feature_fid(clf, ref, real_images),
        "diversity": diversity(feats),
        # diversity of n_samples real training digits of the query's class, for scale
        "diversity_same_class_reference": diversity(classifier_features(clf, same)),
        "same_class_rate": float((predicted == int(table.digit_labels[qi])).float().mean()),
        "success_rate": result.success_rate,
        "steps": float(done.median()) if done.numel() else None,
        "n_restarted": result.summary()["n_restarted"],  # starts replaced by fresh noise (restart_after)
        "seconds": result.seconds,
    }
    qmap = result.target.reshape(int(math.isqrt(result.target.numel())), -1)
    return NeuronRun(channel, concept, r, query, qi, int(table.digit_labels[qi]), qmap, result, predicted, metrics)


def _mean_or_none(values):
    """Mean of the values, or None when any is None (a figure that could not be computed)."""
    return None if any(v is None for v in values) else float(np.mean(values))


def _fmt(v, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def table_rows(runs) -> list[dict]:
    """Table 4.1 rows: per neuron, then the average (means of the per-neuron numbers; the
    average L2 "±" is the mean of the per-neuron standard deviations, as in the thesis' table).
    A figure that could not be computed (None, paper profile) stays None in the average."""
    keys = ("l2_mean", "l2_std", "l2_median", "l2_relative", "l1_mean", "fid", "fid_real_reference", "diversity",
            "same_class_rate", "success_rate")
    rows = [{"neuron": f"#{r.channel}", "concept": r.concept, "alignment": r.alignment,
             **{k: r.metrics[k] for k in keys}} for r in runs]
    if rows:
        avg = {k: _mean_or_none([row[k] for row in rows]) for k in keys}
        rows.append({"neuron": "Average", "concept": "–",
                     "alignment": float(np.mean([r.alignment for r in runs])), **avg})
    return rows


def table_html(runs, tau: float) -> str:
    """Table 4.1 analogue as an HTML table: one row per neuron, then the average."""
    paper = any("fid_features" in r.metrics for r in runs)
    fid_head = "FID, Inception features" if paper else "FID, classifier features (real-digit floor)"
    header = ("Neuron", "Concept", "r", "L2 loss (mean ± std)", "L2 median", "L2 / Σn(x*)²", "L1",
              fid_head, "diversity", "same class as x*", "below τ")
    rows = [(row["neuron"], row["concept"], _fmt(row["alignment"], ".2f"),
             f"{row['l2_mean']:.3g} ± {row['l2_std']:.3g}", f"{row['l2_median']:.3g}",
             f"{row['l2_relative']:.3f}", f"{row['l1_mean']:.3g}",
             _fmt(row["fid"], ".1f") if paper else f"{_fmt(row['fid'], '.1f')} ({_fmt(row['fid_real_reference'], '.1f')})",
             f"{row['diversity']:.2f}", f"{row['same_class_rate']:.2f}", f"{row['success_rate']:.2f}")
            for row in table_rows(runs)]
    if paper:
        reasons = sorted({r.metrics["fid_reason"] for r in runs if r.metrics.get("fid_reason")})
        note = (f"L2 = Σ over the map values of (n(x) − n(x*))² per sample, mean ± standard deviation over the "
                f"samples; τ = {tau:g}. r: SemanticLens alignment as the thesis reports it (not recomputed). FID in "
                "Inception-v3 pool features; diversity in the classifier's pooled features; same class: the "
                "classifier's ImageNet class of the query." + (" FID not computed: " + " ".join(reasons) if reasons else ""))
    else:
        note = (f"L2 = Σ over the 16 map values of (n(x) − n(x*))² per sample, mean ± standard deviation over the "
                f"samples; L2 / Σn(x*)²: mean L2 relative to the size of the target; τ = {tau:g}. The real-digit "
                "floor is the same FID for as many real training digits: about the best this sample size allows.")
    return html_table(header, rows, note)


def sample_summaries(runs) -> list[str]:
    """One line per neuron: the query's class, the share of samples in that class, diversity (and its reference)."""
    lines = []
    for r in runs:
        m = r.metrics
        ref = m["diversity_same_class_reference"]
        what = "images of class" if "fid_features" in m else "real"
        ref_text = f"{what} '{r.query_label}'s: {ref:.2f}" if ref is not None else "no same-class reference"
        lines.append(f"#{r.channel} ({r.concept}): query is a '{r.query_label}'; {m['same_class_rate']:.0%} of the "
                     f"samples are classified '{r.query_label}'; diversity {m['diversity']:.2f} ({ref_text})")
    return lines


# --------------------------------------------------------------------------------------------
# One notebook, two worlds: the digits (cpu, smoke) and ResNet-50 + latent DiT (paper)
# --------------------------------------------------------------------------------------------


class NeuronWorld:
    """The chapter's models and images behind one interface, so the notebook runs the same cells in
    every profile. ``"cpu"``/``"smoke"``: the digits ResNet, the digits DDPM and the alignment table
    over the training digits (exactly the calls the chapter always made); ``"paper"``: ResNet-50, the
    latent DiT and the user's query images (:func:`equidiff.worlds.imagenet.models.load_paper_inputs`)."""

    def __init__(self, profile: str, *, classifier=None, ddpm=None, table=None, real_images=None, paper=None):
        self.profile = profile
        self.classifier, self.ddpm, self.table, self.real_images = classifier, ddpm, table, real_images
        self.paper = paper  # PaperInputs (profile "paper")
        self.activations = None  # paper: (N, C) channel-mean pre-activations of the query images
        if paper is not None:
            self.activations = _paper_channel_means(paper)

    @property
    def is_paper(self) -> bool:
        return self.paper is not None

    def alignment_rows(self) -> list[dict]:
        """cpu: per concept, its share of images, best channel and r; paper: the thesis' neurons with
        their reported r and mean pre-activation over the query images."""
        if not self.is_paper:
            return self.table.rows()
        out = []
        for ch in self.paper.config.neurons:
            ch = _check_channel(ch, self.activations.shape[1])
            out.append({"concept": PAPER_NEURONS.get(ch, f"channel {ch}"), "share": None, "channel": ch,
                        "r": PAPER_ALIGNMENT.get(ch), "mean_activation": float(self.activations[:, ch].mean())})
        return out

    def paper_metrics(self) -> dict:
        """Extra metrics.json fields of the paper profile (the config, the query files); {} otherwise."""
        if not self.is_paper:
            return {}
        return {"paper_config": self.paper.config.to_dict(), "device": str(self.paper.models.device),
                "query_images": [str(f) for f in self.paper.files]}

    def alignment_html(self) -> str:
        if not self.is_paper:
            return alignment_html(self.table)
        rows = [(f"#{r['channel']}", r["concept"], _fmt(r["r"], ".3f"), f"{r['mean_activation']:.3f}")
                for r in self.alignment_rows()]
        n = len(self.paper.files)
        return html_table(("Neuron", "concept (SemanticLens, thesis)", "r (thesis)",
                           f"mean pre-activation over {n} query images"), rows,
                          "r is the thesis' SemanticLens alignment, not recomputed here (it needs CLIP and ImageNet).")

    def choose(self, neurons="auto", concept_set: str = "all", k: int = 3) -> list[SelectedNeuron]:
        """cpu: :func:`choose_neurons`; paper: ``"auto"`` = ``PaperConfig.neurons`` (1656, 1052, 421),
        or the given channels of ResNet-50's last stage (``concept_set`` and ``k`` apply to the digits only)."""
        if not self.is_paper:
            return choose_neurons(self.table, neurons, concept_set, k)
        n_ch = self.activations.shape[1]
        if isinstance(neurons, str) and neurons == "auto":
            neurons = list(self.paper.config.neurons)
        if not isinstance(neurons, (list, tuple)) or not neurons or not all(_is_int(c) for c in neurons):
            raise _bad("neurons", neurons, f"'auto' or a non-empty list of channel integers in [0, {n_ch - 1}]")
        out = []
        for ch in neurons:
            if not (0 <= ch < n_ch):
                raise _bad("neurons", neurons, f"'auto' or channels in [0, {n_ch - 1}] (the classifier's last stage)")
            r = PAPER_ALIGNMENT.get(int(ch))
            out.append(SelectedNeuron(int(ch), PAPER_NEURONS.get(int(ch), f"channel {ch}"),
                                      float("nan") if r is None else r))
        return out

    def top_image_rows(self, chosen, n: int = 8) -> list[dict]:
        """Rows of :func:`equidiff.report.figures.neuron_top_images` (paper: the top query images, labelled with
        the classifier's ImageNet class)."""
        if not self.is_paper:
            return top_image_rows(self.table, chosen, n)
        rows = []
        for s in chosen:
            vals, idx = torch.topk(self.activations[:, s.channel], min(n, len(self.activations)))
            rows.append({"channel": s.channel, "concept": s.concept, "alignment": s.alignment,
                         "images": self.paper.images[idx], "values": vals, "labels": self.paper.predicted[idx]})
        return rows

    def run(self, selected: SelectedNeuron, **kwargs) -> NeuronRun:
        """:func:`run_neuron` (cpu, smoke) or :func:`run_paper_neuron` (paper) for one chosen neuron."""
        if not self.is_paper:
            return run_neuron(self.classifier, self.ddpm, selected.channel, self.table, self.real_images,
                              concept=selected.concept, profile=self.profile, **kwargs)
        kwargs.pop("checkpointing", None)
        return run_paper_neuron(self.paper, selected, **kwargs)

    def run_all(self, chosen, *, workers: int | None = None, progress: bool = True, **kwargs) -> list[NeuronRun]:
        """:meth:`run` for every chosen neuron, in order, with one progress line (samples below τ).

        cpu/smoke: every neuron is optimised on **one torch thread** — its numbers then do not
        depend on the machine's core count (L-BFGS's do depend on the thread count) — and
        ``workers`` processes (None: one per neuron, at most one per CPU core) run neurons side by
        side; ``workers=1`` runs them one after the other in this process. The results are the
        same for every ``workers``; only the wall time changes (on two cores, three neurons take
        about half the time of one process with two threads, whose cores idle in each run's tail,
        when only a few samples are left). paper: in this process, on the configured device
        (``workers`` must be None or 1).
        """
        chosen = list(chosen)
        if workers is not None and (not _is_int(workers) or workers < 1):
            raise _bad("workers", workers, "None or an integer ≥ 1")
        if self.is_paper:
            if workers not in (None, 1):
                raise _bad("workers", workers, "None or 1 in the paper profile (it runs on one device, in this process)")
            runs = []
            with ProgressLine(len(chosen), "neurons done", enabled=progress) as bar:
                for s in chosen:
                    runs.append(self.run(s, **kwargs))
                    bar.update_to(len(runs))
            return runs
        cfg, _ = _run_settings(self.profile, **{k: v for k, v in kwargs.items() if k in _SETTINGS})  # fail early
        n_workers = min(len(chosen), workers or os.cpu_count() or 1)
        below = [0] * len(chosen)  # per neuron: samples below τ so far
        done = [False] * len(chosen)

        def report(bar, i, n_below, finished=False):
            below[i] = max(below[i], n_below)  # counts only grow; a late queued message must not lower one
            done[i] = done[i] or finished
            bar.update_to(sum(below), f"{sum(done)}/{len(chosen)} neurons done")

        total = len(chosen) * cfg.n_samples
        with ProgressLine(total, "invariant samples below τ", enabled=progress) as bar:
            if n_workers == 1:
                runs = []
                with _torch_threads(1):
                    for i, s in enumerate(chosen):
                        runs.append(self.run(s, on_step=lambda st, i=i: report(bar, i, int(st.converged.sum())),
                                             **kwargs))
                        report(bar, i, below[i], finished=True)
                return runs
            return _run_in_workers(self, chosen, n_workers, kwargs, lambda i, n, fin: report(bar, i, n, fin))


# run_neuron's settings that _run_settings checks (the others go to run_neuron as they are)
_SETTINGS = ("n_samples", "steps", "ddim_steps", "tau", "optimizer", "lr", "seed", "restart_after")


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads; the caller's count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_WORKER: dict = {}  # in a worker process: the world's parts and the progress queue


def _portable(model):
    """What a worker needs to rebuild ``model``: a cached zoo model travels as its folder (reloaded
    there, bit-identical to this process's copy); anything else is pickled."""
    from equidiff.worlds.digits.models import ZooModel

    if isinstance(model, ZooModel) and (Path(model.path) / "config.json").exists():
        return ("zoo", dataclasses.replace(model, model=None, scheduler=None))  # the folder, not the weights
    return ("object", model)


def _unportable(packed):
    from equidiff.worlds.digits.models import reload

    kind, model = packed
    return reload(model) if kind == "zoo" else model


def _worker_init(parts: tuple, queue) -> None:
    torch.set_num_threads(1)  # the same single thread as NeuronWorld.run_all's in-process path
    profile, clf, ddpm, table, real = parts
    _WORKER["parts"] = (profile, _unportable(clf), _unportable(ddpm), table, real)
    _WORKER["queue"] = queue


def _worker_run(i: int, selected: SelectedNeuron, kwargs: dict) -> NeuronRun:
    profile, clf, ddpm, table, real = _WORKER["parts"]
    queue = _WORKER["queue"]
    return run_neuron(clf, ddpm, selected.channel, table, real, concept=selected.concept, profile=profile,
                      on_step=lambda st: queue.put((i, int(st.converged.sum()))), **kwargs)


def _run_in_workers(world: NeuronWorld, chosen: list, n_workers: int, kwargs: dict, report) -> list[NeuronRun]:
    """Run the chosen neurons in ``n_workers`` spawned processes (one torch thread each); ``report(i,
    n_below, finished)`` is called in this process as the workers send progress."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # fork would copy this process's OpenMP state (and can deadlock)
    messages = ctx.Queue()
    parts = (world.profile, _portable(world.classifier), _portable(world.ddpm), world.table, world.real_images)
    try:
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(parts, messages)) as ex:
            futures = [ex.submit(_worker_run, i, s, kwargs) for i, s in enumerate(chosen)]
            pending = set(range(len(chosen)))
            while pending:
                try:
                    i, n_below = messages.get(timeout=0.5)
                    report(i, n_below, False)
                except queue_mod.Empty:
                    pass
                for i in [i for i in pending if futures[i].done()]:
                    if futures[i].exception() is not None:
                        for f in futures:
                            f.cancel()
                        raise futures[i].exception()
                    pending.discard(i)
                    report(i, int(futures[i].result().result.converged.sum()), True)
            return [f.result() for f in futures]
    except BrokenProcessPool as e:
        raise RuntimeError(
            f"workers={n_workers}: the worker processes died before finishing ({e}). Started from a "
            "script, the code that calls run_all must sit under `if __name__ == '__main__':` (worker "
            "processes import the script again); or pass workers=1 to run in this process"
        ) from e


def load_world(profile: str = "cpu", *, paper_config=None, query_images=None, batch_size=None, bf16=None,
               device=None, ddim_steps=None) -> NeuronWorld:
    """The chapter's world for ``profile``. cpu/smoke: the zoo's digits models and data (the paper
    parameters must stay None); paper: :func:`equidiff.worlds.imagenet.models.load_paper_inputs` (``ddim_steps``: the
    latent chain's T)."""
    resolve_profile(profile)
    if profile != "paper":
        from equidiff.worlds.imagenet.models import digits_chapter_inputs

        clf, ddpm, (train_x, train_y), test_x = digits_chapter_inputs(
            profile, paper_config=paper_config, query_images=query_images, batch_size=batch_size, bf16=bf16,
            device=device)
        return NeuronWorld(profile, classifier=clf, ddpm=ddpm, table=alignment_table(clf.model, train_x, train_y),
                           real_images=test_x)
    from equidiff.worlds.imagenet.models import load_paper_inputs

    inputs = load_paper_inputs(paper_config, query_images, batch_size=batch_size, bf16=bf16, device=device,
                               ddim_steps=ddim_steps)
    return NeuronWorld(profile, paper=inputs)


@torch.no_grad()
def _paper_channel_means(inputs) -> torch.Tensor:
    """(N, C) channel-mean pre-activations of the classifier's last stage over the query images."""
    from equidiff.worlds.imagenet.models import paper_neuron_layer

    clf = inputs.models.classifier
    module = resolve_module(clf, paper_neuron_layer(clf)[0])
    dev, bs, out = inputs.models.device, inputs.config.batch_size, []
    for i in range(0, len(inputs.images), bs):
        with capture_activation(module) as store:
            clf(inputs.images[i: i + bs].to(dev))
        out.append(store["input"].float().mean((2, 3)).cpu())  # (B, C)
    return torch.cat(out)


def run_paper_neuron(inputs, selected: SelectedNeuron, *, n_samples: int | None = None, steps: int | None = None,
                     ddim_steps: int | None = None, tau: float = 0.01, optimizer: str = "lbfgs", lr: float = 1.0,
                     seed: int = 0, restart_after: int | None = None) -> NeuronRun:
    """Section 4.2.2 for one ResNet-50 channel at paper scale, with the metrics of :func:`run_neuron`.

    The query is the strongest-activating of the user's images (:func:`equidiff.worlds.imagenet.models.strongest_query`);
    the objective the channel's whole pre-ReLU map (49 values at 224 px); samples come from the latent
    DiT in batches of ``PaperConfig.batch_size``. ``fid`` is the Inception FID against
    ``PaperConfig.fid_reference`` (or the query images), None with ``fid_reason`` when Inception's
    weights are missing; figures without a paper-scale reference (``fid_real_reference``,
    ``diversity_same_class_reference``) are None with their reason. ``ddim_steps`` must match the prior's.
    """
    from equidiff.core.invariants import InvariantConfig
    from equidiff.core.metrics import classifier_features, diversity, l1_l2
    from equidiff.worlds.imagenet.models import fid_against_reference, predict_classes, strongest_query

    models, cfg = inputs.models, inputs.config
    defaults = resolve_profile("paper")
    n_samples = defaults["n_samples"] if n_samples is None else n_samples
    steps = defaults["steps"] if steps is None else steps
    if not _is_int(n_samples) or n_samples < 2:
        raise _bad("n_samples", n_samples, "an integer ≥ 2 (FID and diversity need two samples)")
    if ddim_steps is not None and ddim_steps != cfg.ddim_steps:
        raise _bad("ddim_steps", ddim_steps, f"the prior's T ({cfg.ddim_steps}): pass it to load_world")
    objective = models.neuron_objective(selected.channel)
    # Step 1: the query that activates the neuron most strongly, among the user's images.
    qi, _ = strongest_query(objective, inputs.images.to(models.device), cfg.batch_size)
    query = inputs.images[qi: qi + 1]  # (1, 3, S, S)
    # Steps 2-3: the channel's whole pre-ReLU map; Algorithm 1 through the latent DiT.
    icfg = InvariantConfig(n_samples=n_samples, steps=steps, tau=tau, optimizer=optimizer, lr=lr, seed=seed,
                           restart_after=restart_after)
    result = models.find_invariants(objective, query, icfg)
    # Step 4: metrics, with the names of run_neuron's.
    l1, l2 = l1_l2(result.measurements.float().cpu(), result.target.float().cpu())
    x = result.x.detach().clamp(-1, 1).float()
    predicted = predict_classes(models.classifier, x, cfg.batch_size)
    label = int(inputs.predicted[qi])
    fid = fid_against_reference(models, x, inputs.images, f"Table 4.1 FID, neuron #{selected.channel}")
    done = result.steps_to_converge[result.converged].float()
    target = result.target.float().cpu()
    alignment = None if not math.isfinite(selected.alignment) else selected.alignment
    metrics = {
        "channel": selected.channel, "concept": selected.concept, "alignment": alignment,
        "query_index": qi, "query_label": label,
        "query_top_activation": float(target.max()), "query_mean_activation": float(target.mean()),
        "n_samples": n_samples,
        "l2_mean": float(l2.mean()), "l2_std": float(l2.std()), "l2_median": float(l2.median()),
        "l1_mean": float(l1.mean()), "l2_relative": float(l2.mean() / (target**2).sum().clamp(min=1e-12)),
        "fid": fid.value,
        "fid_real_reference": None,
        "diversity": diversity(classifier_features(models.classifier, x.to(models.device)).cpu()),
        "diversity_same_class_reference": None,
        "same_class_rate": float((predicted == label).float().mean()),
        "success_rate": result.success_rate,
        "steps": float(done.median()) if done.numel() else None,
        "n_restarted": result.summary()["n_restarted"],  # starts replaced by fresh noise (restart_after)
        "seconds": result.seconds,
        # paper only: where the numbers come from, and why a figure is missing
        "query_file": str(inputs.files[qi]),
        "alignment_reason": None if alignment is not None else "not one of the thesis' neurons: no SemanticLens r",
        "fid_features": fid.features, "fid_reason": fid.reason, "fid_note": fid.note,
        "fid_n_reference": fid.n_reference,
        "fid_real_reference_reason": "no held-out real images at paper scale (the digits world's real-image floor)",
        "diversity_features": "the classifier's pooled features",
        "diversity_same_class_reference_reason": "the query images carry no class labels",
    }
    side = int(math.isqrt(target.numel()))
    qmap = target.reshape(side, -1) if side * side == target.numel() else target.reshape(1, -1)
    return NeuronRun(selected.channel, selected.concept, selected.alignment, query, qi, label, qmap, result,
                     predicted, metrics)
