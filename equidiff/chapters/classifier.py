"""Thesis Section 4.4: invariant sets of a classifier's *outputs*, in any world.

Two constraints (Section 4.4.1) on the world's classifier (images in [-1, 1], K classes):

* ``"class_probability"`` — one number, the softmax probability of the query's class,
  p_y(x) = p_y(x*) ("single-class prediction preservation");
* ``"distribution"`` — the whole output distribution, the K-vector of class probabilities,
  p(x) = p(x*) ("preserving full output distributions").

For one query x* (:func:`load_query`), :func:`run_methods` samples the invariant set with
EquiDiff and with the baselines of :mod:`equidiff.core.baselines`, all on the same objective,
query, τ, starting seed, optimiser and step budget:

=======================  ==================================================================
``equidiff``             Algorithm 1 through the world's DDIM prior, dual loss with low-pass F
``equidiff_no_lowpass``  the same without the filtered term (what the low-pass term buys)
``pixel``                Algorithm 1's loop on the pixels themselves (Lucent-style pixel image)
``pixel_fourier``        the same with Lucent's Fourier (1/f-scaled spectrum) parameterisation
``guidance``             one DPS-style guided DDIM pass (gradient through x̂_0 at every step);
                         only in a world with a pixel-space chain (``world.has("guidance")``)
=======================  ==================================================================

and :func:`evaluate` measures each with the same code (:func:`method_row`): success at τ
(membership of IS(x*) at tolerance τ: ||L(x) − L(x*)||² < τ on the returned images, and the
same with the low-pass term), L2, KL(p(x*) || p(x)), the share of spectral power above half
Nyquist, the world's FID (:attr:`equidiff.worlds.base.World.fid`) against its real images,
diversity and seconds. :func:`cutoff_curves` is the protocol of Appendix .4.2 (Figure 4.5).

One code path serves every world: what a world lacks (true labels, held-out images, a pixel
chain for guidance) is asked with ``world.has``; the notebook's parameters are checked at the
chapter's entry by :class:`Settings`, and a parameter left at None takes the world's value
(:data:`equidiff.worlds.settings.SETTINGS`, chapter ``"classifier"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from equidiff._validate import bad as _bad, check_choice, check_folder, check_int, is_int as _is_int, is_num as _is_num
from equidiff.core.baselines import GuidanceConfig, guided_sampling, pixel_invariants
from equidiff.core.batched import find_invariants_batched
from equidiff.core.filters import DEFAULT_CUTOFFS, cutoff_sweep, high_frequency_share, lowpass
from equidiff.core.invariants import InvariantConfig
from equidiff.core.metrics import FIDResult, classifier_features, diversity, kl_divergence
from equidiff.core.objectives import class_probability, probabilities
from equidiff.report.tables import html_table
from equidiff.worlds import world_names
from equidiff.worlds.base import CAPABILITIES

__all__ = [
    "CHAPTER",
    "MODES",
    "METHODS",
    "METHOD_LABELS",
    "MODE_LABELS",
    "resolve_modes",
    "resolve_methods",
    "Settings",
    "check_parameters",
    "held_out",
    "Query",
    "load_query",
    "make_objective",
    "MethodRun",
    "run_methods",
    "method_row",
    "real_same_class",
    "reference_row",
    "cutoff_curves",
    "evaluate",
    "spectra_block",
    "comparison_rows",
    "chapter_metrics",
    "table_html",
    "row_line",
    "deviation_lines",
]

CHAPTER = "classifier"  # this chapter's key in World.defaults (worlds/settings.py)
MODES = ("class_probability", "distribution")
METHODS = ("equidiff", "equidiff_no_lowpass", "pixel", "pixel_fourier", "guidance")
METHOD_LABELS = {
    "equidiff": "EquiDiff",
    "equidiff_no_lowpass": "EquiDiff, no low-pass term",
    "pixel": "pixel-space (pixels)",
    "pixel_fourier": "pixel-space (Fourier)",
    "guidance": "guidance (DPS, one pass)",
}
MODE_LABELS = {"class_probability": "single class probability", "distribution": "full output distribution"}
# what each method needs of a world beyond a classifier and a prior
METHOD_NEEDS = {"guidance": "guidance"}


def resolve_modes(mode) -> list[str]:
    """``"both"``, one mode name, or a list of mode names -> list of modes (in the order given)."""
    if isinstance(mode, str):
        if mode == "both":
            return list(MODES)
        mode = [mode]
    if not isinstance(mode, (list, tuple)) or not mode or any(m not in MODES for m in mode) or len(set(mode)) < len(mode):
        raise _bad("mode", mode, f"'both', one of {MODES}, or a list of distinct ones")
    return list(mode)


def resolve_methods(methods, world=None) -> list[str]:
    """``"all"`` or a list of distinct names of :data:`METHODS` -> list of names.

    With a ``world``, ``"all"`` means every method that world supports, and naming a method it
    cannot run (``guidance`` without a pixel-space chain) raises ``ValueError`` naming ``methods``.
    """
    supported = [m for m in METHODS if world is None or m not in METHOD_NEEDS or world.has(METHOD_NEEDS[m])]
    if isinstance(methods, str) and methods == "all":
        return supported
    if (
        not isinstance(methods, (list, tuple))
        or not methods
        or any(m not in METHODS for m in methods)
        or len(set(methods)) < len(methods)
    ):
        raise _bad("methods", methods, f"'all' or a list of distinct names among {tuple(supported)}")
    missing = [m for m in methods if m not in supported]
    if missing:
        cap = METHOD_NEEDS[missing[0]]
        raise _bad("methods", list(methods), f"'all' or names among {tuple(supported)} in world {world.name!r} "
                                             f"({missing[0]} needs {CAPABILITIES[cap]}: {world.reason(cap)})")
    return list(methods)


# --------------------------------------------------------------------------------------------
# The chapter's parameters, checked at its entry
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """The chapter's notebook parameters, checked when built (before any model is loaded or run):
    a bad value raises ``ValueError`` naming the notebook parameter. ``None`` takes the world's
    value in :meth:`for_world`."""

    mode: object = "both"  # "both" | "class_probability" | "distribution" | a list of them
    methods: object = "all"  # "all" (every method the world supports) or a list of names of METHODS
    n_samples: Optional[int] = None  # int ≥ 2: samples per method; None: the world's
    steps: Optional[int] = None  # int ≥ 0: step budget B per sample; None: the world's
    ddim_steps: Optional[int] = None  # int ≥ 1: DDIM steps T of the prior; None: the world's
    tau: float = 0.01  # > 0: loss threshold τ (thesis: 0.01)
    optimizer: str = "adam"  # Algorithm 1's optimiser for EquiDiff and the pixel-space methods (thesis: "sgd")
    lr: float = 0.3  # > 0: its learning rate η (thesis: SGD with η = 10)
    keep_norm: bool = True  # keep each z_T at its drawn norm (EquiDiff only)
    lowpass_cutoff: float = 0.5  # in (0, 1): cutoff of the low-pass term F (fraction of Nyquist)
    guidance_scale: float = 3.0  # ≥ 0: step ζ of the guidance baseline
    cutoffs: Sequence[float] = DEFAULT_CUTOFFS  # low-pass cutoffs of Figure 4.5, each in (0, 1]
    seed: int = 0  # ≥ 0: seed of the starting noise (the same for every method)
    modes: list = field(init=False, repr=False)  # resolve_modes(mode)

    def __post_init__(self):
        self.modes = resolve_modes(self.mode)
        if self.methods != "all":
            resolve_methods(self.methods)
        if self.n_samples is not None and (not _is_int(self.n_samples) or self.n_samples < 2):
            raise _bad("n_samples", self.n_samples, "None or an integer ≥ 2 (FID and diversity need two samples)")
        if self.ddim_steps is not None and (not _is_int(self.ddim_steps) or self.ddim_steps < 1):
            raise _bad("ddim_steps", self.ddim_steps, "None or an integer ≥ 1 (DDIM steps T of the prior)")
        if not _is_num(self.lowpass_cutoff) or not (0 < self.lowpass_cutoff < 1):
            raise _bad("lowpass_cutoff", self.lowpass_cutoff,
                       "a number in (0, 1) (fraction of Nyquist; 1 would filter nothing)")
        if not _is_num(self.guidance_scale) or self.guidance_scale < 0:
            raise _bad("guidance_scale", self.guidance_scale, "a finite number ≥ 0 (step ζ of the guidance baseline; "
                                                              "0 = unguided sampling)")
        cutoffs = self.cutoffs
        if (isinstance(cutoffs, (str, bytes)) or not isinstance(cutoffs, Sequence) or not cutoffs
                or any(not _is_num(c) or not (0 < c <= 1) for c in cutoffs)):
            raise _bad("cutoffs", cutoffs, "a non-empty list of numbers in (0, 1] (fractions of Nyquist)")
        self.cutoffs = [float(c) for c in cutoffs]
        # Algorithm 1's own checks (steps, tau, optimizer, lr, keep_norm, seed), named as the notebook names them
        self.config(self.lowpass_cutoff, self.keep_norm)

    def config(self, lowpass_cutoff, keep_norm: bool) -> InvariantConfig:
        """Algorithm 1's settings for one method (``lowpass_cutoff`` None: no filtered term)."""
        return InvariantConfig(n_samples=2 if self.n_samples is None else self.n_samples,
                               steps=0 if self.steps is None else self.steps, tau=self.tau,
                               optimizer=self.optimizer, lr=self.lr, lowpass_cutoff=lowpass_cutoff,
                               keep_norm=keep_norm, seed=self.seed)

    def for_world(self, world) -> "Settings":
        """A copy with the world's values for the parameters left at None and ``methods`` resolved
        against what ``world`` supports (``"all"`` -> its methods; an unsupported one raises)."""
        filled = {k: world.setting(CHAPTER, k, getattr(self, k)) for k in ("n_samples", "steps", "ddim_steps")}
        return dataclasses.replace(self, methods=resolve_methods(self.methods, world), **filled)

    def record(self) -> dict:
        """The settings the run used, for metrics.json (the keys the chapter has always written)."""
        return {"seed": self.seed, "mode": self.mode, "tau": self.tau, "steps_budget": self.steps,
                "n_samples": self.n_samples, "optimizer": self.optimizer, "lr": self.lr, "keep_norm": self.keep_norm,
                "lowpass_cutoff": self.lowpass_cutoff, "guidance_scale": self.guidance_scale,
                "ddim_steps": self.ddim_steps, "cutoffs": list(self.cutoffs)}


def check_parameters(p: dict) -> None:
    """The notebook's parameters (``notebooks/04_classifier.ipynb``), each checked by its own name before any
    world is loaded (:class:`Settings` and the rest); ``query_index``'s range is checked by :func:`load_query`
    and the paper parameters by :func:`~equidiff.worlds.load_world`, where the world is known."""
    check_choice("profile", p["profile"], tuple(world_names()))
    check_int("query_index", p["query_index"], 0, why="one of the world's held-out images")
    Settings(**{f.name: p[f.name] for f in dataclasses.fields(Settings) if f.init})
    check_folder("output_dir", p["output_dir"])


# --------------------------------------------------------------------------------------------
# Query and objectives
# --------------------------------------------------------------------------------------------


def held_out(world) -> tuple[torch.Tensor, Optional[torch.Tensor], str]:
    """The real images queries are drawn from and samples are compared with (FID, spectral share):
    ``(images, labels or None, what)``. The world's held-out images with their labels when it has
    them (digits: the test split), else its own images, labelled only if the world has labels."""
    if world.has("test_images"):
        return world.test_images, world.test_labels, f"held-out {world.image_noun}"
    return world.images, (world.labels if world.has("labels") else None), f"{world.image_noun} of world {world.name!r}"


@dataclass
class Query:
    """The query x* of the chapter: one real image and the classifier's reading of it."""

    index: int  # index in held_out(world)
    image: torch.Tensor  # (1, C, H, W) in [-1, 1], on the world's device
    label: int  # its class y: the true label, or the classifier's class where the world has no labels
    probs: torch.Tensor  # (K,) p(x*), the classifier's output distribution
    predicted: int  # argmax of p(x*)
    source: str | None = None  # the image's file, when the world's images come from files
    label_source: str = "label"  # "label" (true class) or "classifier" (the classifier's own class)
    class_name: str | None = None  # the world's name of class `label`, when it has names

    @property
    def p_true(self) -> float:
        """p_y(x*): the classifier's probability of the query's class."""
        return float(self.probs[self.label])

    def describe(self) -> str:
        top = torch.topk(self.probs, min(3, len(self.probs)))
        parts = ", ".join(f"p({int(i)}) = {float(v):.3f}" for v, i in zip(top.values, top.indices))
        where = f" ({self.source})" if self.source is not None else ""
        name = self.class_name if self.class_name is not None else str(self.label)
        how = "a" if self.label_source == "label" else "by the classifier a"
        return f"query #{self.index}{where}, {how} '{name}': {parts}"


def load_query(world, index: int) -> Query:
    """Query number ``index`` of :func:`held_out` and the classifier's output distribution for it."""
    images, labels, what = held_out(world)
    if not _is_int(index) or not (0 <= index < len(images)):
        raise _bad("query_index", index, f"an integer in [0, {len(images) - 1}] (the {len(images)} {what})")
    x = images[index: index + 1].to(world.device)  # (1, C, H, W)
    with torch.no_grad():
        p = torch.softmax(world.classifier(x).float(), dim=1)[0]  # (K,)
    predicted = int(p.argmax())
    label = int(labels[index]) if labels is not None else predicted  # no labels: the classifier's class stands in
    files = world.image_files if not world.has("test_images") else None
    return Query(index, x, label, p, predicted, source=str(files[index]) if files else None,
                 label_source="label" if labels is not None else "classifier",
                 class_name=world.class_names[label] if world.class_names else None)


def make_objective(classifier, mode: str, label: int, name: str | None = None):
    """The constraint of ``mode``: p_y (B, 1) for ``"class_probability"``, p (B, K) for ``"distribution"``."""
    if mode == "class_probability":
        return class_probability(classifier, int(label), name=name)
    if mode == "distribution":
        return probabilities(classifier, name=name)
    raise _bad("mode", mode, f"one of {MODES}")


def _objective(world, mode: str, query: Query):
    return make_objective(world.classifier, mode, query.label, name=f"the classifier of world {world.name!r}")


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


@dataclass
class MethodRun:
    """One method's samples for one query and constraint, and their metrics row."""

    name: str  # a key of METHODS
    mode: str  # a key of MODES
    result: object  # InvariantResult (guidance: one pass, nothing optimised)
    row: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return METHOD_LABELS[self.name]

    @property
    def x(self) -> torch.Tensor:
        return self.result.x.clamp(-1, 1)  # (N, C, H, W) the images as shown


def run_methods(world, query: Query, mode: str, settings: Settings) -> dict[str, MethodRun]:
    """Run every method of ``settings.methods`` on the same objective, query, τ, seed and budget.

    EquiDiff (Algorithm 1) optimises z_T of the world's ``ddim_steps``-step deterministic DDIM
    chain (``world.make_prior``, outputs clamped to [-1, 1]) with ``optimizer`` at ``lr``, budget
    ``steps``, threshold ``tau`` and the low-pass term at ``lowpass_cutoff``, ``world.batch_size``
    samples at a time; ``equidiff_no_lowpass`` drops that term; the two pixel-space baselines run
    the same loop, optimiser and loss with the image itself as the variable; ``guidance`` runs one
    DPS-style guided pass from the same starting noises with step ``guidance_scale`` and the same
    loss. ``keep_norm`` applies to the EquiDiff runs only (it keeps |z_T| at its drawn size, a
    property of Gaussian starting noise).
    """
    s = settings.for_world(world)
    if mode not in MODES:
        raise _bad("mode", mode, f"one of {MODES}")
    objective = world.wrap_objective(_objective(world, mode, query))  # as the world evaluates it (bf16 autocast)
    # Outputs clamped to [-1, 1] (the images as shown); checkpointing as the world sets it (digits:
    # off, at 16×16 the un-checkpointed step is ≈ 1.6× faster on a CPU; book: Performance page).
    prior = world.make_prior(s.ddim_steps, clamp=True)

    runs: dict[str, MethodRun] = {}
    for name in s.methods:
        if name == "equidiff":
            res = find_invariants_batched(objective, query.image, prior, s.config(s.lowpass_cutoff, s.keep_norm),
                                          world.batch_size)
        elif name == "equidiff_no_lowpass":
            res = find_invariants_batched(objective, query.image, prior, s.config(None, s.keep_norm), world.batch_size)
        elif name in ("pixel", "pixel_fourier"):
            par = "pixel" if name == "pixel" else "fourier"
            res = pixel_invariants(objective, query.image, s.config(s.lowpass_cutoff, False), parameterization=par)
        else:  # guidance (resolve_methods checked world.has("guidance"))
            gcfg = GuidanceConfig(n_samples=s.n_samples, scale=s.guidance_scale, tau=s.tau,
                                  lowpass_cutoff=s.lowpass_cutoff, seed=s.seed)
            res = guided_sampling(objective, query.image, prior, gcfg)
        runs[name] = MethodRun(name, mode, res)
    return runs


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _probs(clf, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(clf(x), dim=1)  # (B, K)


def _fid(world, samples: torch.Tensor, real: torch.Tensor, figure: str) -> FIDResult:
    if not world.has("fid"):
        return FIDResult(figure, None, world.reason("fid"), n_samples=len(samples))
    return world.fid(samples, real, figure)


def method_row(run: MethodRun, world, query: Query, *, tau: float, lowpass_cutoff: float) -> dict:
    """The comparison-table row of one method, every number computed here from its returned images.

    success_rate: share of samples with ||L(x) − L(x*)||² < τ (members of IS(x*) at tolerance τ);
    success_lowpass: share with ||L(x) − L(x*)||² + ||L(F(x)) − L(x*)||² < τ (EquiDiff's own
    stopping rule, F = low-pass at ``lowpass_cutoff``); l2_mean / l2_median: of ||L(x) − L(x*)||²;
    l2_lowpass_mean: of ||L(F(x)) − L(x*)||²; kl_mean: KL(p(x*) || p(x)) over all classes;
    high_freq_share: mean share of (non-DC) spectral power above half Nyquist; fid: the world's
    FID against :func:`held_out` (``fid_features`` names its feature space; None with
    ``fid_reason`` when the world cannot compute one); diversity: mean pairwise distance of the
    samples in the classifier's penultimate-feature space; same_class_rate: share the classifier
    assigns the query's predicted class; seconds: the method's own wall time.
    """
    clf = world.classifier
    objective = _objective(world, run.mode, query)
    x = run.x
    with torch.no_grad():
        tgt = objective(query.image)  # (1, m)
        l2 = ((objective(x) - tgt) ** 2).sum(1)  # (N,)
        l2_lp = ((objective(lowpass(x, lowpass_cutoff)) - tgt) ** 2).sum(1)  # (N,)
    p = _probs(clf, x)
    kl = kl_divergence(query.probs, p)
    res = run.result
    done = res.steps_to_converge[res.converged].float()
    f = _fid(world, x, held_out(world)[0], f"FID, {run.label}, {run.mode}")
    return {
        "name": run.name,
        "label": run.label,
        "mode": run.mode,
        "n": int(len(x)),
        "success_rate": float((l2 < tau).float().mean()),
        "success_lowpass": float((l2 + l2_lp < tau).float().mean()),
        "l2_mean": float(l2.mean()),
        "l2_median": float(l2.median()),
        "l2_lowpass_mean": float(l2_lp.mean()),
        "kl_mean": float(kl.mean()),
        "high_freq_share": float(high_frequency_share(x).mean()),
        "fid": f.value,
        "diversity": diversity(classifier_features(clf, x)),
        "same_class_rate": float((p.argmax(1) == query.predicted).float().mean()),
        "steps_median": float(done.median()) if done.numel() and res.config.steps > 0 else None,
        "seconds": float(res.seconds),
        "fid_features": f.features,
        "fid_reason": f.reason,
        "fid_note": f.note,
    }


def real_same_class(world, query: Query) -> torch.Tensor:
    """Real images of the query's class: the world's images with that label, or (a world without
    labels) those its classifier puts in the query's class."""
    if world.has("labels"):
        same = world.images[world.labels == query.label]
    else:
        with torch.no_grad():
            pred = torch.cat([world.classifier(world.images[i: i + 64].to(world.device)).argmax(1).cpu()
                              for i in range(0, len(world.images), 64)])
        same = world.images[pred == query.label]
    return same.to(world.device)


def reference_row(world, query: Query, n: int, seed: int = 0) -> dict:
    """What real images score on the image metrics, for scale (no invariance: not a method).

    fid: ``n`` random images of the world against :func:`held_out` — the floor this sample size
    allows; only where the world has held-out images (else None with ``fid_reason``);
    diversity: ``n`` real images of the query's class (:func:`real_same_class`);
    high_freq_share: all of :func:`held_out`.
    """
    gen = torch.Generator().manual_seed(seed)
    pool = world.images
    ref = pool[torch.randperm(len(pool), generator=gen)[:n]]
    same = real_same_class(world, query)
    same = same[torch.randperm(len(same), generator=gen)[:n]]
    real = held_out(world)[0]
    noun = world.image_noun
    fid = _fid(world, ref, real, f"FID floor, {n} real {noun}").value if world.has("test_images") else None
    fields = {
        "name": f"real_{noun.replace(' ', '_')}",
        "label": f"real {noun} (reference)",
        "n": int(n),
        "high_freq_share": float(high_frequency_share(real).mean()),
        "fid": fid,
        "diversity": diversity(classifier_features(world.classifier, same)) if len(same) > 1 else None,
    }
    return world.with_reasons(fields, {"fid": "test_images"})


def cutoff_curves(world, query: Query, runs: dict, cutoffs: Sequence[float],
                  real: torch.Tensor | None = None) -> dict:
    """Appendix .4.2 / Figure 4.5: |p_y(F_c(x)) − p_y(x*)| for every cutoff c.

    ``query``: the query itself (x = x*); per method: mean and standard deviation over its
    samples; real images of the query's class (``real``, default :func:`real_same_class`), each
    against its *own* unfiltered probability |p_y(F_c(x)) − p_y(x)| (where real images carry the signal).
    """
    clf = world.classifier
    y = query.label
    real = real_same_class(world, query) if real is None else real

    def p_true(x):
        return torch.softmax(clf(x), dim=1)[:, y]  # (B,)

    ref = torch.tensor(query.p_true)
    out = {"cutoffs": [float(c) for c in cutoffs],
           "query": cutoff_sweep(p_true, query.image, ref, cutoffs)[0].tolist(), "methods": {}}
    for name, run in runs.items():
        d = cutoff_sweep(p_true, run.x, ref, cutoffs)  # (N, K)
        out["methods"][name] = {"mean": d.mean(0).tolist(), "std": d.std(0).tolist()}
    with torch.no_grad():
        own = p_true(real)  # (R,)
    d = cutoff_sweep(p_true, real, own, cutoffs)
    out["real_same_class"] = {"mean": d.mean(0).tolist(), "std": d.std(0).tolist(), "n": int(len(real))}
    return out


def evaluate(runs: dict, world, query: Query, *, tau: float, lowpass_cutoff: float) -> list[dict]:
    """:func:`method_row` for every run (stored on ``run.row`` too), in the order run."""
    rows = []
    for run in runs.values():
        run.row = method_row(run, world, query, tau=tau, lowpass_cutoff=lowpass_cutoff)
        rows.append(run.row)
    return rows


def _member(run: MethodRun, world, query: Query, tau: float) -> torch.Tensor:
    objective = _objective(world, run.mode, query)
    with torch.no_grad():
        return ((objective(run.x) - objective(query.image)) ** 2).sum(1) < tau  # (N,) bool


def spectra_block(run: MethodRun, world, query: Query, tau: float, title: str | None = None) -> dict:
    """A block of :func:`equidiff.report.figures.classifier_spectra_figure`: the samples, captioned with
    p_y(x) (and, for the distribution, KL(p(x*) ‖ p(x))), red-framed when outside IS(x*) at τ."""
    p = _probs(world.classifier, run.x)
    py = p[:, query.label]
    if run.mode == "distribution":
        kl = kl_divergence(query.probs, p)
        caps = [f"p={float(a):.2f} KL={float(b):.2f}" for a, b in zip(py, kl)]
    else:
        caps = [f"$p_{{{query.label}}}$={float(a):.3f}" for a in py]
    ok = _member(run, world, query, tau)
    title = title or (f"{run.label}, {MODE_LABELS[run.mode]}: {int(ok.sum())}/{len(ok)} samples in IS(x*) "
                      f"at τ = {tau:g}; query p_{query.label}(x*) = {query.p_true:.3f}")
    return {"title": title, "x": run.x, "captions": caps, "ok": ok}


def comparison_rows(runs: dict, world, query: Query, tau: float) -> list[dict]:
    """Rows of :func:`equidiff.report.figures.method_comparison_figure`, one per method."""
    out = []
    for run in runs.values():
        ok = _member(run, world, query, tau)
        hf = run.row.get("high_freq_share")
        note = f"{int(ok.sum())}/{len(ok)} in IS" + (f", HF {hf:.2f}" if hf is not None else "")
        out.append({"label": run.label, "x": run.x, "ok": ok, "note": note})
    return out


def chapter_metrics(runs_by_mode: dict, curves_by_mode: dict, reference: dict, query: Query, **params) -> dict:
    """The chapter's metrics.json: ``methods`` (one row per method and constraint, each with its
    ``mode``), ``cutoff_curve`` (Figure 4.5: ``query``, ``samples`` = EquiDiff's mean and sd in the
    first constraint run, and every method under ``by_mode``), ``reference`` (real images), the
    query and ``params`` (the settings, :meth:`Settings.record`, and what else the caller adds)."""
    modes = list(runs_by_mode)
    first = curves_by_mode[modes[0]]
    eq = first["methods"].get("equidiff") or next(iter(first["methods"].values()))
    return {
        **params,
        "modes": modes,
        "query": {"index": query.index, "label": query.label, "predicted": query.predicted,
                  "p_true": query.p_true, "probs": query.probs.tolist()},
        "methods": [run.row for runs in runs_by_mode.values() for run in runs.values()],
        "reference": reference,
        "cutoff_curve": {
            "cutoffs": first["cutoffs"],
            "query": first["query"],
            "samples": {"method": "equidiff" if "equidiff" in first["methods"] else next(iter(first["methods"])),
                        "mode": modes[0], **eq},
            "real_same_class": first["real_same_class"],
            "by_mode": {m: c["methods"] for m, c in curves_by_mode.items()},
        },
    }


# --------------------------------------------------------------------------------------------
# Table and printed lines
# --------------------------------------------------------------------------------------------


def _f(v, fmt):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def table_html(world, rows: Sequence[dict], reference: dict | None, tau: float, lowpass_cutoff: float) -> str:
    """The comparison table of one constraint as HTML: one row per method, then the real images."""
    header = ("Method", "success at τ", "… with low-pass term", "L2 mean (median)", "KL(p(x*) ‖ p(x))",
              "power above ½ Nyquist", "FID", "diversity", "same class as x*", "seconds")
    body = [(r["label"], _f(r["success_rate"], ".2f"), _f(r["success_lowpass"], ".2f"),
             f"{_f(r['l2_mean'], '.2g')} ({_f(r['l2_median'], '.2g')})", _f(r["kl_mean"], ".3g"),
             _f(r["high_freq_share"], ".3f"), _f(r["fid"], ".1f"), _f(r["diversity"], ".2f"),
             _f(r["same_class_rate"], ".2f"), _f(r["seconds"], ".1f")) for r in rows]
    if reference:
        body.append((reference["label"], "–", "–", "–", "–", _f(reference["high_freq_share"], ".3f"),
                     _f(reference["fid"], ".1f"), _f(reference["diversity"], ".2f"), "–", "–"))
    real, _, what = held_out(world)
    features = next((r.get("fid_features") for r in rows if r.get("fid_features")), "")
    reasons = sorted({r["fid_reason"] for r in rows if r.get("fid_reason")})
    fid_note = (f"FID in {features or 'the world’s'} features against the {len(real)} {what}"
                + (f" (not computed: {'; '.join(reasons)})" if reasons else "") + "; diversity: mean pairwise "
                "distance in the classifier's penultimate-feature space.")
    floor = (f"FID of as many random {world.image_noun} (the floor for this sample size), " if world.has("test_images")
             else f"no FID floor ({world.reason('test_images')}), ")
    note = (f"Success: share of samples with ||L(x) − L(x*)||² < τ = {tau:g}; “… with low-pass term”: the same "
            f"for ||L(x) − L(x*)||² + ||L(F(x)) − L(x*)||² (F: ideal low-pass at {lowpass_cutoff:g} × Nyquist), "
            f"EquiDiff's stopping rule. L2 = ||L(x) − L(x*)||² per sample. KL over all classes. {fid_note} "
            f"Real {world.image_noun}: {floor}diversity of as many real {world.image_noun} of the query's class, "
            f"spectral share of the {what}.")
    return html_table(header, body, note)


def row_line(mode: str, row: dict) -> str:
    """One printed line per method row (a figure that was not computed prints as –)."""
    return (f"{mode:>17} | {row['label']:<27} success {row['success_rate']:.2f}  L2 {row['l2_mean']:.2g}  "
            f"KL {row['kl_mean']:.3g}  HF {row['high_freq_share']:.3f}  FID {_f(row['fid'], '.1f')}  "
            f"{row['seconds']:.1f} s")


def deviation_lines(curves: dict, lowpass_cutoff: float, noun: str) -> list[str]:
    """One printed line per constraint: every curve's deviation at the loss's cutoff (or the middle one)."""
    out = []
    for m, c in curves.items():
        i = c["cutoffs"].index(lowpass_cutoff) if lowpass_cutoff in c["cutoffs"] else len(c["cutoffs"]) // 2
        dev = ", ".join(f"{METHOD_LABELS[k]} {v['mean'][i]:.2f}" for k, v in c["methods"].items())
        out.append(f"{m}: deviation at c = {c['cutoffs'][i]:g}: query {c['query'][i]:.2f}; {dev}; "
                   f"real {noun} {c['real_same_class']['mean'][i]:.2f}")
    return out
