"""Thesis Section 4.4 in the embedded world: invariant sets of the digits classifier's *outputs*.

Two constraints (Section 4.4.1) on the digits ResNet (16×16 images in [-1, 1], 10 classes):

* ``"class_probability"`` — one number, the softmax probability of the query's true class,
  p_y(x) = p_y(x*) ("single-class prediction preservation");
* ``"distribution"`` — the whole output distribution, the 10-vector of class probabilities,
  p(x) = p(x*) ("preserving full output distributions").

For one query x* of the digits test split, :func:`run_methods` samples the invariant set with
EquiDiff and with the baselines of :mod:`equidiff.baselines`, all on the same objective, query,
τ, starting seed and step budget:

=======================  ==================================================================
``equidiff``             Algorithm 1 through the 10-step DDIM prior, dual loss with low-pass F
``equidiff_no_lowpass``  the same without the filtered term (what the low-pass term buys)
``pixel``                Algorithm 1's loop on the pixels themselves (Lucent-style pixel image)
``pixel_fourier``        the same with Lucent's Fourier (1/f-scaled spectrum) parameterisation
``guidance``             one DPS-style guided DDIM pass (gradient through x̂_0 at every step)
=======================  ==================================================================

and :func:`evaluate` measures each with the same code (:func:`method_row`): success at τ
(membership of IS(x*) at tolerance τ: ||L(x) − L(x*)||² < τ on the returned images, and the
same with the low-pass term), L2, KL(p(x*) || p(x)), the share of spectral power above half
Nyquist, the FID *in the classifier's feature space* against the real test digits, diversity
and seconds. :func:`cutoff_curves` is the protocol of Appendix .4.2 (Figure 4.5).
"""

from __future__ import annotations

import html as _html
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from equidiff._validate import bad as _bad, is_int as _is_int, is_num as _is_num

__all__ = [
    "MODES",
    "METHODS",
    "METHOD_LABELS",
    "PROFILES",
    "resolve_profile",
    "resolve_modes",
    "resolve_methods",
    "Query",
    "load_query",
    "make_objective",
    "MethodRun",
    "run_methods",
    "method_row",
    "reference_row",
    "cutoff_curves",
    "evaluate",
    "spectra_block",
    "comparison_rows",
    "chapter_metrics",
    "table_html",
    "PAPER_PROFILE",
    "PAPER_METHODS",
    "ClassifierWorld",
    "load_world",
    "row_line",
]

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

# Defaults per profile (explicit arguments override them).
PROFILES: dict[str, dict] = {
    "cpu": {"n_samples": 32, "steps": 150, "ddim_steps": 10},
    "smoke": {"n_samples": 4, "steps": 3, "ddim_steps": 3},  # seconds-long run of the same code path
}


# profile "paper": ResNet-50's 1000-class outputs, the latent DiT prior (ClassifierWorld / load_world)
PAPER_PROFILE = {"n_samples": 32, "steps": 512, "ddim_steps": 25}
# guided_sampling steers a pixel-space DDIM chain (its unet); the latent DiT has none
PAPER_METHODS = ("equidiff", "equidiff_no_lowpass", "pixel", "pixel_fourier")


def resolve_profile(profile: str) -> dict:
    """Defaults of a profile: ``"cpu"``/``"smoke"`` (digits) or ``"paper"`` (ResNet-50 + latent DiT)."""
    if profile == "paper":
        return dict(PAPER_PROFILE)
    if profile not in PROFILES:
        raise _bad("profile", profile, f"one of {tuple(PROFILES) + ('paper',)}")
    return dict(PROFILES[profile])


def resolve_modes(mode) -> list[str]:
    """``"both"``, one mode name, or a list of mode names -> list of modes (in :data:`MODES` order given)."""
    if isinstance(mode, str):
        if mode == "both":
            return list(MODES)
        mode = [mode]
    if not isinstance(mode, (list, tuple)) or not mode or any(m not in MODES for m in mode) or len(set(mode)) < len(mode):
        raise _bad("mode", mode, f"'both', one of {MODES}, or a list of distinct ones")
    return list(mode)


def resolve_methods(methods) -> list[str]:
    """``"all"`` or a list of names of :data:`METHODS` (EquiDiff first when present)."""
    if isinstance(methods, str) and methods == "all":
        return list(METHODS)
    if (
        not isinstance(methods, (list, tuple))
        or not methods
        or any(m not in METHODS for m in methods)
        or len(set(methods)) < len(methods)
    ):
        raise _bad("methods", methods, f"'all' or a list of distinct names among {METHODS}")
    return list(methods)


# --------------------------------------------------------------------------------------------
# Query and objectives
# --------------------------------------------------------------------------------------------


@dataclass
class Query:
    """The query x* of the chapter: one digit of the test split and the classifier's reading of it."""

    index: int  # index in the digits test split
    image: torch.Tensor  # (1, 1, H, W) in [-1, 1]
    label: int  # its true class y
    probs: torch.Tensor  # (10,) p(x*), the classifier's output distribution
    predicted: int  # argmax of p(x*)
    source: str | None = None  # paper profile: the query image's file (its label is the classifier's class)

    @property
    def p_true(self) -> float:
        """p_y(x*): the classifier's probability of the true class."""
        return float(self.probs[self.label])

    def describe(self) -> str:
        top = torch.topk(self.probs, 3)
        parts = ", ".join(f"p({int(i)}) = {float(v):.3f}" for v, i in zip(top.values, top.indices))
        if self.source is not None:
            return f"query image #{self.index} ({self.source}), ImageNet class {self.label} by the classifier: {parts}"
        return f"test digit #{self.index}, a '{self.label}': {parts}"


def _unwrap(classifier):
    """The module to call: a ZooModel's ``.model``; a paper :class:`~equidiff.worlds.imagenet.models.ImageNetInput` as it is
    (its ``.model`` would skip the ImageNet normalisation)."""
    from equidiff.worlds.imagenet.models import ImageNetInput

    return classifier if isinstance(classifier, ImageNetInput) else getattr(classifier, "model", classifier)


def load_query(classifier, index: int, split: str = "test") -> Query:
    """Query number ``index`` of the digits ``split`` and the classifier's output distribution for it."""
    from equidiff.worlds.digits.models import load_digits16

    images, labels = load_digits16(split)
    if not _is_int(index) or not (0 <= index < len(images)):
        raise _bad("query_index", index, f"an integer in [0, {len(images) - 1}] (digits {split} split)")
    clf = _unwrap(classifier)
    x = images[index : index + 1]  # (1, 1, 16, 16)
    with torch.no_grad():
        p = torch.softmax(clf(x), dim=1)[0]  # (10,)
    return Query(index, x, int(labels[index]), p, int(p.argmax()))


def make_objective(classifier, mode: str, label: int):
    """The constraint of ``mode``: p_y (B, 1) for ``"class_probability"``, p (B, 10) for ``"distribution"``."""
    from equidiff.core.objectives import class_probability, probabilities
    from equidiff.worlds.imagenet.models import ImageNetInput

    paper = isinstance(classifier, ImageNetInput)  # paper profile: the wrapper is the classifier
    clf = _unwrap(classifier)
    name = "ResNet-50" if paper else "the digits ResNet"
    if mode == "class_probability":
        return class_probability(clf, int(label), name=name)
    if mode == "distribution":
        return probabilities(clf, name=name)
    raise _bad("mode", mode, f"one of {MODES}")


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
        return self.result.x.clamp(-1, 1)  # (N, 1, H, W) the images as shown


def run_methods(
    classifier,
    ddpm,
    query: Query,
    mode: str,
    methods: Sequence[str] = METHODS,
    *,
    n_samples: int = 32,
    steps: int = 150,
    tau: float = 0.01,
    lr: float = 0.3,
    keep_norm: bool = True,
    lowpass_cutoff: float = 0.5,
    guidance_scale: float = 1.0,
    ddim_steps: int = 10,
    seed: int = 0,
    prior=None,
    batch_size: int | None = None,
) -> dict[str, MethodRun]:
    """Run every method in ``methods`` on the same objective, query, τ, seed and budget.

    EquiDiff (Algorithm 1) optimises z_T of a ``ddim_steps``-step deterministic DDIM chain over the
    zoo DDPM (``PixelDDIMPrior``, outputs clamped to [-1, 1]) with Adam (``lr``), budget ``steps``,
    threshold ``tau`` and the low-pass term at ``lowpass_cutoff``; ``equidiff_no_lowpass`` drops
    that term; the two pixel-space baselines run the same loop and loss with the image itself as
    the variable; ``guidance`` runs one DPS-style guided pass from the same starting noises with
    step ``guidance_scale`` and the same loss. ``keep_norm`` applies to the EquiDiff runs only
    (it keeps |z_T| at its drawn size, a property of Gaussian starting noise). ``prior``: another
    prior instead of the DDPM's (paper profile: the latent DiT; ``ddpm`` unused), its samples
    optimised ``batch_size`` at a time (:func:`equidiff.worlds.imagenet.models.find_invariants_batched`).
    """
    from equidiff.core.baselines import GuidanceConfig, guided_sampling, pixel_invariants
    from equidiff.core.priors import PixelDDIMPrior
    from equidiff.core.invariants import InvariantConfig, find_invariants

    methods = resolve_methods(list(methods))
    if mode not in MODES:
        raise _bad("mode", mode, f"one of {MODES}")
    if not _is_int(n_samples) or n_samples < 2:
        raise _bad("n_samples", n_samples, "an integer ≥ 2 (FID and diversity need two samples)")
    if not _is_num(lowpass_cutoff) or not (0 < lowpass_cutoff < 1):
        raise _bad("lowpass_cutoff", lowpass_cutoff, "a number in (0, 1) (fraction of Nyquist; 1 would filter nothing)")
    if not _is_int(ddim_steps) or ddim_steps < 1:
        raise _bad("ddim_steps", ddim_steps, "an integer ≥ 1")
    objective = make_objective(classifier, mode, query.label)
    if prior is None:
        # Not checkpointed: at 16×16 memory is no constraint (≈ 0.3 GiB at batch 32, T = 10) and the
        # un-checkpointed step is ≈ 1.6× faster on a CPU (book: Performance page).
        prior = PixelDDIMPrior(ddpm.model, ddpm.scheduler, num_steps=ddim_steps, checkpointing=False, clamp=True)
        find = find_invariants
    else:
        if "guidance" in methods:
            raise _bad("methods", methods, f"names among {PAPER_METHODS} with the latent prior (guidance steers a "
                                           "pixel-space DDIM chain)")
        from equidiff.worlds.imagenet.models import find_invariants_batched

        def find(objective, query, prior, config):
            return find_invariants_batched(objective, query, prior, config, batch_size)

    def cfg(cutoff, kn):
        return InvariantConfig(n_samples=n_samples, steps=steps, tau=tau, optimizer="adam", lr=lr,
                               lowpass_cutoff=cutoff, keep_norm=kn, seed=seed)

    runs: dict[str, MethodRun] = {}
    for name in methods:
        if name == "equidiff":
            res = find(objective, query.image, prior, cfg(lowpass_cutoff, keep_norm))
        elif name == "equidiff_no_lowpass":
            res = find(objective, query.image, prior, cfg(None, keep_norm))
        elif name in ("pixel", "pixel_fourier"):
            par = "pixel" if name == "pixel" else "fourier"
            res = pixel_invariants(objective, query.image, cfg(lowpass_cutoff, False), parameterization=par)
        else:  # guidance
            gcfg = GuidanceConfig(n_samples=n_samples, scale=guidance_scale, tau=tau,
                                  lowpass_cutoff=lowpass_cutoff, seed=seed)
            res = guided_sampling(objective, query.image, prior, gcfg)
        runs[name] = MethodRun(name, mode, res)
    return runs


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _probs(clf, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(clf(x), dim=1)  # (B, 10)


def method_row(run: MethodRun, classifier, query: Query, real_images: torch.Tensor, *, tau: float,
               lowpass_cutoff: float, fid=None) -> dict:
    """The comparison-table row of one method, every number computed here from its returned images.

    success_rate: share of samples with ||L(x) − L(x*)||² < τ (members of IS(x*) at tolerance τ);
    success_lowpass: share with ||L(x) − L(x*)||² + ||L(F(x)) − L(x*)||² < τ (EquiDiff's own
    stopping rule, F = low-pass at ``lowpass_cutoff``); l2_mean / l2_median: of ||L(x) − L(x*)||²;
    l2_lowpass_mean: of ||L(F(x)) − L(x*)||²; kl_mean: KL(p(x*) || p(x)) over all 10 classes;
    high_freq_share: mean share of (non-DC) spectral power above half Nyquist; fid: Fréchet
    distance in the classifier's penultimate-feature space to ``real_images``; diversity: mean
    pairwise distance of the samples in that space; same_class_rate: share the classifier assigns
    the query's predicted class; seconds: the method's own wall time. ``fid``: another FID, a
    callable ``x -> FIDResult`` (paper profile: Inception features; ``fid_reason`` says why one is None).
    """
    from equidiff.core.filters import high_frequency_share, lowpass
    from equidiff.core.metrics import classifier_features, diversity, feature_fid, kl_divergence

    clf = _unwrap(classifier)
    objective = make_objective(clf, run.mode, query.label)
    x = run.x
    with torch.no_grad():
        tgt = objective(query.image)  # (1, m)
        l2 = ((objective(x) - tgt) ** 2).sum(1)  # (N,)
        l2_lp = ((objective(lowpass(x, lowpass_cutoff)) - tgt) ** 2).sum(1)  # (N,)
    p = _probs(clf, x)
    kl = kl_divergence(query.probs, p)
    res = run.result
    done = res.steps_to_converge[res.converged].float()
    extra = {}
    if fid is not None:
        f = fid(x)
        extra = {"fid_features": f.features, "fid_reason": f.reason, "fid_note": f.note}
    row = {
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
        "fid": feature_fid(clf, x, real_images) if fid is None else None,
        "diversity": diversity(classifier_features(clf, x)),
        "same_class_rate": float((p.argmax(1) == query.predicted).float().mean()),
        "steps_median": float(done.median()) if done.numel() and res.config.steps > 0 else None,
        "seconds": float(res.seconds),
        **extra,
    }
    if fid is not None:
        row["fid"] = f.value
    return row


def reference_row(classifier, query: Query, train_images: torch.Tensor, train_labels: torch.Tensor,
                  test_images: torch.Tensor, n: int, seed: int = 0) -> dict:
    """What real digits score on the image metrics, for scale (no invariance: not a method).

    fid: n random training digits against the test digits — the floor this sample size allows;
    diversity: n training digits of the query's class; high_freq_share: all test digits.
    """
    from equidiff.core.filters import high_frequency_share
    from equidiff.core.metrics import classifier_features, diversity, feature_fid

    clf = _unwrap(classifier)
    gen = torch.Generator().manual_seed(seed)
    ref = train_images[torch.randperm(len(train_images), generator=gen)[:n]]
    same = train_images[train_labels == query.label]
    same = same[torch.randperm(len(same), generator=gen)[:n]]
    return {
        "name": "real_digits",
        "label": "real digits (reference)",
        "n": int(n),
        "high_freq_share": float(high_frequency_share(test_images).mean()),
        "fid": feature_fid(clf, ref, test_images),
        "diversity": diversity(classifier_features(clf, same)),
    }


def cutoff_curves(classifier, query: Query, runs: dict, real_same_class: torch.Tensor,
                  cutoffs: Sequence[float]) -> dict:
    """Appendix .4.2 / Figure 4.5: |p_y(F_c(x)) − p_y(x*)| for every cutoff c.

    ``query``: the query itself (x = x*); per method: mean and standard deviation over its
    samples; ``real_same_class``: real digits of the query's class, each against its *own*
    unfiltered probability |p_y(F_c(x)) − p_y(x)| (where real digits carry the signal).
    """
    from equidiff.core.filters import cutoff_sweep

    clf = _unwrap(classifier)
    y = query.label

    def p_true(x):
        return torch.softmax(clf(x), dim=1)[:, y]  # (B,)

    ref = torch.tensor(query.p_true)
    out = {"cutoffs": [float(c) for c in cutoffs],
           "query": cutoff_sweep(p_true, query.image, ref, cutoffs)[0].tolist(), "methods": {}}
    for name, run in runs.items():
        d = cutoff_sweep(p_true, run.x, ref, cutoffs)  # (N, K)
        out["methods"][name] = {"mean": d.mean(0).tolist(), "std": d.std(0).tolist()}
    with torch.no_grad():
        own = p_true(real_same_class)  # (R,)
    d = cutoff_sweep(p_true, real_same_class, own, cutoffs)
    out["real_same_class"] = {"mean": d.mean(0).tolist(), "std": d.std(0).tolist(), "n": int(len(real_same_class))}
    return out


def evaluate(runs: dict, classifier, query: Query, real_images: torch.Tensor, *, tau: float,
             lowpass_cutoff: float) -> list[dict]:
    """:func:`method_row` for every run (stored on ``run.row`` too), in the order run."""
    rows = []
    for run in runs.values():
        run.row = method_row(run, classifier, query, real_images, tau=tau, lowpass_cutoff=lowpass_cutoff)
        rows.append(run.row)
    return rows


def _member(run: MethodRun, classifier, query: Query, tau: float) -> torch.Tensor:
    objective = make_objective(classifier, run.mode, query.label)
    with torch.no_grad():
        return ((objective(run.x) - objective(query.image)) ** 2).sum(1) < tau  # (N,) bool


def spectra_block(run: MethodRun, classifier, query: Query, tau: float, title: str | None = None) -> dict:
    """A block of :func:`equidiff.report.figures.classifier_spectra_figure`: the samples, captioned with
    p_y(x) (and, for the distribution, KL(p(x*) ‖ p(x))), red-framed when outside IS(x*) at τ."""
    from equidiff.core.metrics import kl_divergence

    clf = _unwrap(classifier)
    p = _probs(clf, run.x)
    py = p[:, query.label]
    if run.mode == "distribution":
        kl = kl_divergence(query.probs, p)
        caps = [f"p={float(a):.2f} KL={float(b):.2f}" for a, b in zip(py, kl)]
    else:
        caps = [f"$p_{query.label}$={float(a):.3f}" for a in py]
    ok = _member(run, clf, query, tau)
    title = title or (f"{run.label}, {MODE_LABELS[run.mode]}: {int(ok.sum())}/{len(ok)} samples in IS(x*) "
                      f"at τ = {tau:g}; query p_{query.label}(x*) = {query.p_true:.3f}")
    return {"title": title, "x": run.x, "captions": caps, "ok": ok}


def comparison_rows(runs: dict, classifier, query: Query, tau: float) -> list[dict]:
    """Rows of :func:`equidiff.report.figures.method_comparison_figure`, one per method."""
    out = []
    for run in runs.values():
        ok = _member(run, classifier, query, tau)
        hf = run.row.get("high_freq_share")
        note = f"{int(ok.sum())}/{len(ok)} in IS" + (f", HF {hf:.2f}" if hf is not None else "")
        out.append({"label": run.label, "x": run.x, "ok": ok, "note": note})
    return out


def chapter_metrics(runs_by_mode: dict, curves_by_mode: dict, reference: dict, query: Query, **params) -> dict:
    """The chapter's metrics.json: ``methods`` (one row per method and constraint, each with its
    ``mode``), ``cutoff_curve`` (Figure 4.5: ``query``, ``samples`` = EquiDiff's mean and sd in the
    first constraint run, and every method under ``by_mode``), ``reference`` (real digits), the
    query and the parameters."""
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
# Table
# --------------------------------------------------------------------------------------------


def _f(v, fmt):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def table_html(rows: Sequence[dict], reference: dict | None, tau: float, lowpass_cutoff: float) -> str:
    """The comparison table of one constraint as HTML: one row per method, then real digits."""
    header = ("Method", "success at τ", "… with low-pass term", "L2 mean (median)", "KL(p(x*) ‖ p(x))",
              "power above ½ Nyquist", "FID, classifier features", "diversity", "same class as x*", "seconds")
    body = []
    for r in rows:
        body.append((r["label"], _f(r["success_rate"], ".2f"), _f(r["success_lowpass"], ".2f"),
                     f"{_f(r['l2_mean'], '.2g')} ({_f(r['l2_median'], '.2g')})", _f(r["kl_mean"], ".3g"),
                     _f(r["high_freq_share"], ".3f"), _f(r["fid"], ".1f"), _f(r["diversity"], ".2f"),
                     _f(r["same_class_rate"], ".2f"), _f(r["seconds"], ".1f")))
    if reference:
        body.append((reference["label"], "–", "–", "–", "–", _f(reference["high_freq_share"], ".3f"),
                     _f(reference["fid"], ".1f"), _f(reference["diversity"], ".2f"), "–", "–"))
    esc = _html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>" for row in body)
    note = (f"Success: share of samples with ||L(x) − L(x*)||² < τ = {tau:g}; “… with low-pass term”: the same "
            f"for ||L(x) − L(x*)||² + ||L(F(x)) − L(x*)||² (F: ideal low-pass at {lowpass_cutoff:g} × Nyquist), "
            "EquiDiff's stopping rule. L2 = ||L(x) − L(x*)||² per sample. KL over all ten classes. FID and "
            "diversity in the digits classifier's penultimate-feature space (not Inception), FID against the "
            "360 test digits. Real digits: FID of as many random training digits (the floor for this sample "
            "size), diversity of as many training digits of the query's class, spectral share of the test digits.")
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>"
            f"<p><small>{esc(note)}</small></p>")


# --------------------------------------------------------------------------------------------
# One notebook, two worlds: the digits (cpu, smoke) and ResNet-50 + latent DiT (paper)
# --------------------------------------------------------------------------------------------


class ClassifierWorld:
    """The chapter's classifier, prior, query and real images behind one interface, so the notebook
    runs the same cells in every profile. cpu/smoke: the digits ResNet and DDPM, query
    ``query_index`` of the test split, real digits for reference (the chapter's calls as they always
    were); paper: ResNet-50 (ImageNet normalisation included), the latent DiT, query ``query_index``
    of the user's images (:func:`equidiff.worlds.imagenet.models.load_paper_inputs`), Inception FID."""

    def __init__(self, profile: str, query: Query, classifier, *, ddpm=None, train=None, test_images=None,
                 paper=None):
        self.profile, self.query, self.classifier, self.ddpm = profile, query, classifier, ddpm
        self.train, self.test_images, self.paper = train, test_images, paper

    @property
    def is_paper(self) -> bool:
        return self.paper is not None

    def methods(self, methods) -> list[str]:
        """:func:`resolve_methods`; paper: ``"all"`` is :data:`PAPER_METHODS` (no guidance: it needs a pixel prior)."""
        if self.is_paper and isinstance(methods, str) and methods == "all":
            return list(PAPER_METHODS)
        names = resolve_methods(methods)
        if self.is_paper and "guidance" in names:
            raise _bad("methods", methods, f"'all' or names among {PAPER_METHODS} with profile 'paper' "
                                           "(guidance steers a pixel-space DDIM chain; the latent DiT has none)")
        return names

    def run_methods(self, mode: str, methods, **kwargs) -> dict[str, MethodRun]:
        if not self.is_paper:
            return run_methods(self.classifier, self.ddpm, self.query, mode, methods, **kwargs)
        cfg = self.paper.config
        if kwargs.get("ddim_steps", cfg.ddim_steps) != cfg.ddim_steps:
            raise _bad("ddim_steps", kwargs["ddim_steps"], f"the prior's T ({cfg.ddim_steps}): pass it to load_world")
        return run_methods(self.classifier, None, self.query, mode, methods, prior=self.paper.models.prior,
                           batch_size=cfg.batch_size, **kwargs)

    def evaluate(self, runs: dict, *, tau: float, lowpass_cutoff: float) -> list[dict]:
        """:func:`evaluate`; paper: FID in Inception features (None with ``fid_reason`` without its weights)."""
        if not self.is_paper:
            return evaluate(runs, self.classifier, self.query, self.test_images, tau=tau, lowpass_cutoff=lowpass_cutoff)
        from equidiff.worlds.imagenet.models import fid_against_reference

        rows = []
        for run in runs.values():
            fid = lambda x, run=run: fid_against_reference(  # noqa: E731
                self.paper.models, x, self.paper.images, f"FID, {run.label}, {run.mode}")
            run.row = method_row(run, self.classifier, self.query, self.paper.images, tau=tau,
                                 lowpass_cutoff=lowpass_cutoff, fid=fid)
            rows.append(run.row)
        return rows

    def reference_row(self, n: int, seed: int = 0) -> dict:
        """:func:`reference_row`; paper: the query images (spectral share of all, diversity of those the
        classifier puts in the query's class; no FID floor: there are no held-out real images)."""
        if not self.is_paper:
            return reference_row(self.classifier, self.query, *self.train, self.test_images, n, seed)
        from equidiff.core.filters import high_frequency_share
        from equidiff.core.metrics import classifier_features, diversity

        same = self.real_same_class()
        return {"name": "real_images", "label": "query images (reference)", "n": int(len(self.paper.images)),
                "high_freq_share": float(high_frequency_share(self.paper.images).mean()), "fid": None,
                "fid_reason": "no held-out real images at paper scale (the digits world's real-image floor)",
                "diversity": diversity(classifier_features(self.classifier, same)) if len(same) > 1 else None}

    def real_same_class(self) -> torch.Tensor:
        """Real images of the query's class: training digits (cpu), or the query images the classifier
        puts in the query's class (paper)."""
        if not self.is_paper:
            train_x, train_y = self.train
            return train_x[train_y == self.query.label]
        keep = self.paper.predicted == self.query.label
        return self.paper.images[keep].to(self.paper.models.device)

    def paper_metrics(self) -> dict:
        """Extra metrics.json fields of the paper profile (the config, the query files); {} otherwise."""
        if not self.is_paper:
            return {}
        return {"paper_config": self.paper.config.to_dict(), "device": str(self.paper.models.device),
                "query_images": [str(f) for f in self.paper.files]}


def load_world(profile: str = "cpu", query_index: int = 0, *, paper_config=None, query_images=None,
               batch_size=None, bf16=None, device=None, ddim_steps=None) -> ClassifierWorld:
    """The chapter's world for ``profile``: cpu/smoke: the zoo's digits models and query ``query_index`` of
    the test split (the paper parameters must stay None); paper: :func:`equidiff.worlds.imagenet.models.load_paper_inputs`,
    query ``query_index`` of the user's images (sorted by file name)."""
    resolve_profile(profile)
    if profile != "paper":
        from equidiff.worlds.imagenet.models import digits_chapter_inputs

        clf, ddpm, train, test_x = digits_chapter_inputs(profile, paper_config=paper_config, query_images=query_images,
                                                         batch_size=batch_size, bf16=bf16, device=device)
        return ClassifierWorld(profile, load_query(clf, query_index), clf, ddpm=ddpm, train=train, test_images=test_x)
    from equidiff.worlds.imagenet.models import load_paper_inputs, predict_classes

    inputs = load_paper_inputs(paper_config, query_images, batch_size=batch_size, bf16=bf16, device=device,
                               ddim_steps=ddim_steps)
    n = len(inputs.images)
    if not _is_int(query_index) or not (0 <= query_index < n):
        raise _bad("query_index", query_index, f"an integer in [0, {n - 1}] (the {n} query_images, sorted by name)")
    clf = inputs.models.classifier
    x = inputs.images[query_index: query_index + 1].to(inputs.models.device)  # (1, 3, S, S)
    p = predict_classes(clf, x, probabilities=True)[0].to(inputs.models.device)  # (1000,)
    label = int(p.argmax())  # no true labels: the classifier's class is the query's class
    query = Query(query_index, x, label, p, label, source=str(inputs.files[query_index]))
    return ClassifierWorld(profile, query, clf, paper=inputs)


def row_line(mode: str, row: dict) -> str:
    """One printed line per method row (a figure that was not computed prints as –)."""
    return (f"{mode:>17} | {row['label']:<27} success {row['success_rate']:.2f}  L2 {row['l2_mean']:.2g}  "
            f"KL {row['kl_mean']:.3g}  HF {row['high_freq_share']:.3f}  FID {_f(row['fid'], '.1f')}  "
            f"{row['seconds']:.1f} s")
