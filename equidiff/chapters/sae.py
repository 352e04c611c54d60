"""Thesis Section 4.3: invariant sets of sparse-autoencoder (SAE) features of a ViT, in any world.

The thesis takes feature #6547 of a Prisma SAE on a CLIP ViT, whose top-activating training images
are all birds, and samples IS(x*) = {x : f(x) = f(x*)} with EquiDiff (Figure 4.3: L2 ≈ 0.01; the
samples "extend far beyond the visual patterns present in the original training examples"). Every
function here takes a :class:`~equidiff.worlds.base.World` and runs the same code for every world;
what a world lacks (labels, a judge classifier, ...) makes the figures that need it None with a
``<field>_reason`` (:meth:`World.with_reasons`):

* :func:`load_vit_sae` — the world's ``"sae"`` part (:class:`equidiff.sae.ViTSAE`): in the digits
  world the digits ViT and an SAE trained here on its residual stream
  (:mod:`equidiff.worlds.digits.sae`); at paper scale a timm ViT and the SAE of
  ``PaperConfig.sae_path`` (SAELens / Prisma layout, :func:`equidiff.sae.load_sae`).
* :func:`measure_quality`, :func:`measure_features` — the SAE's variance explained, L0 and dead
  features; every feature's activation, firing rate and, where the world labels concepts
  (``world.has("unit_concepts")``), its selectivity (:mod:`equidiff.sae.features`).
* :func:`choose` — ``"auto"``: monosemantic features for distinct concepts (Section 4.3.1), or, on
  images without concept labels, the features most active on them; or the user's features.
* :func:`run_feature` — Section 4.3's experiment for one feature: the query x* is the world's image
  that activates it most; ``n_samples`` members of IS(x*) come from Algorithm 1 through the world's
  deterministic DDIM prior; where the world has a judge (the digits classifier) it labels the samples
  and the top-activating real images, to measure whether the samples "extend beyond the training
  examples' concept" as the thesis reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from equidiff._validate import bad, check_choice, check_folder, check_index_list, check_int, check_num, is_int
from equidiff.core.batched import find_invariants_batched
from equidiff.core.invariants import InvariantConfig
from equidiff.core.metrics import FIDResult, l1_l2
from equidiff.report.tables import html_table
from equidiff.sae import (SAE_KINDS, FeatureTable, SelectedFeature, ViTSAE, check_reduce, choose_features,
                          feature_table, quality_report, sae_code, sae_feature)
from equidiff.worlds import world_names
from equidiff.worlds.digits.ship import CONFIDENT  # judge confidence that counts as "looks like a digit"

__all__ = [
    "CHAPTER", "CONFIDENT", "OPTIMIZERS", "check_parameters", "load_vit_sae", "measure_quality", "summary",
    "measure_features", "choose",
    "features_html", "run_settings", "label_histogram", "FeatureRun", "run_feature", "run_line", "runs_html",
    "label_lines", "realism_lines", "chapter_metrics", "concept_class",
]

CHAPTER = "sae"  # this chapter's key in the worlds' defaults (equidiff.worlds.settings.SETTINGS)
NO_FILES = "the world's images are built in, not read from files"
NO_CONVERGED = "no sample reached τ within the step budget"
OPTIMIZERS = ("newton", "adam", "sgd")


def check_parameters(p: dict) -> None:
    """The notebook's parameters (``notebooks/03_sae.ipynb``), each checked by its own name before any world
    is loaded or SAE trained. What depends on the world (a layer's or feature's range, the concept sets,
    the paper parameters) is checked where the world is known: :func:`load_world`, :func:`choose`."""
    check_choice("profile", p["profile"], tuple(world_names()))
    check_int("seed", p["seed"], 0)
    check_int("layer", p["layer"], 0, none=True, why="a ViT block")
    check_choice("sae_kind", p["sae_kind"], SAE_KINDS, none=True)
    check_int("expansion", p["expansion"], 1, none=True, why="d_sae = expansion × d_in")
    check_int("sae_steps", p["sae_steps"], 1, none=True, why="SAE training steps")
    check_reduce(p["readout"], "readout", per_image=True)
    check_index_list("features", p["features"], allowed="a non-empty list of distinct feature integers ≥ 0")
    check_int("n_features", p["n_features"], 1, why="features 'auto' picks")
    if p["concept_set"] is not None and not isinstance(p["concept_set"], str):
        raise bad("concept_set", p["concept_set"], "None or a concept set's name: 'digits', 'strokes' or 'all'")
    check_num("min_rate", p["min_rate"], 0, 1, hi_open=True, why="a share of the images")
    check_num("max_rate", p["max_rate"], 0, 1, lo_open=True, why="a share of the images")
    if p["min_rate"] > p["max_rate"]:
        raise bad("min_rate", p["min_rate"], f"at most max_rate = {p['max_rate']!r}")
    check_choice("objective", p["objective"], ("feature", "code"))
    check_int("n_samples", p["n_samples"], 1, none=True, why="invariant samples per feature")
    check_int("steps", p["steps"], 0, none=True, why="the step budget B")
    check_num("tau", p["tau"], 0, lo_open=True, why="the loss threshold τ")
    check_choice("optimizer", p["optimizer"], OPTIMIZERS)
    if p["optimizer"] == "newton" and p["objective"] == "code":
        raise bad("optimizer", "newton", "'adam' or 'sgd' for objective 'code' (newton needs one value, "
                                         "objective 'feature')")
    check_num("lr", p["lr"], 0, lo_open=True)
    check_num("lowpass_cutoff", p["lowpass_cutoff"], 0, 1, lo_open=True, none=True, why="a fraction of Nyquist")
    if p["optimizer"] == "newton" and p["lowpass_cutoff"] is not None:
        raise bad("optimizer", "newton", "'adam' or 'sgd' when lowpass_cutoff is set (newton takes no filtered term)")
    check_int("ddim_steps", p["ddim_steps"], 1, none=True, why="DDIM steps T of the prior")
    if p["vit_preset"] is not None and (not isinstance(p["vit_preset"], str) or not p["vit_preset"]):
        raise bad("vit_preset", p["vit_preset"], "None or the name of a zoo ViT preset")
    check_folder("output_dir", p["output_dir"])

# the capability each per-feature figure needs (World.with_reasons: None + <field>_reason where it is lacking)
FEATURE_NEEDS = {
    "concept": "unit_concepts", "selectivity": "unit_concepts", "query_label": "labels",
    "real_true_label_histogram": "labels", "sample_label_histogram": "judge", "real_label_histogram": "judge",
    "sample_label_histogram_converged": "judge", "confidence_threshold": "judge",
    "sample_label_histogram_confident": "judge", "sample_confident_rate": "judge", "real_confident_rate": "judge",
    "start_confident_rate": "judge", "sample_vit_label_histogram": "vit_classes",
    "sample_vit_concept_rate": "vit_classes", "sample_concept_rate": "judge", "real_concept_rate": "judge",
    "sample_classes": "judge", "real_classes": "judge",
}
MODEL_NEEDS = {"classifier": "judge", "vit_test_accuracy": "test_images"}


# --------------------------------------------------------------------------------------------
# The ViT, its SAE and the SAE's quality
# --------------------------------------------------------------------------------------------


def load_vit_sae(world, layer: Optional[int] = None, sae_kind: Optional[str] = None, expansion: Optional[int] = None,
                 sae_steps: Optional[int] = None, vit_preset: Optional[str] = None, seed: int = 0) -> ViTSAE:
    """The world's ViT and SAE (its ``"sae"`` part). The digits worlds train the SAE (cached) for
    ``layer``, ``sae_kind``, ``expansion``, ``sae_steps`` and ``seed`` on ``vit_preset`` (None: the world's
    value); the paper world loads ``PaperConfig.sae_path`` and refuses any of those that is not None
    (its SAE's config decides them)."""
    if sae_kind is not None and sae_kind not in SAE_KINDS:
        raise bad("sae_kind", sae_kind, f"None (the world's) or one of {SAE_KINDS}")
    for name, value in (("layer", layer), ("expansion", expansion), ("sae_steps", sae_steps)):
        if value is not None and (not is_int(value) or value < (0 if name == "layer" else 1)):
            raise bad(name, value, f"None (the world's) or an integer ≥ {0 if name == 'layer' else 1}")
    if not is_int(seed) or seed < 0:
        raise bad("seed", seed, "an integer ≥ 0")
    return world.part("sae", layer=layer, sae_kind=sae_kind, expansion=expansion, sae_steps=sae_steps,
                      vit_preset=vit_preset, seed=seed)


def measure_quality(world, part: ViTSAE) -> dict:
    """:func:`equidiff.sae.quality_report`: variance explained and L0 on every token of the world's held-out
    images (none: its own images), dead features over every token of its images."""
    held_out = world.test_images if world.has("test_images") else world.images
    q = quality_report(part.vit, part.layer, part.sae, held_out, world.images, batch=world.batch_size or 256)
    noun = world.image_noun
    if world.has("test_images"):
        q["evaluated_on"] = (f"every token of the {len(held_out)} held-out test {noun}; dead_fraction: features "
                             f"silent on every token of the {len(world.images)} {noun} the features are chosen from")
    else:
        q["evaluated_on"] = (f"every token of the {len(held_out)} {noun} the query images are chosen from, as "
                             f"{world.reason('test_images')}; dead_fraction counts features silent on these "
                             "tokens only")
    return q


def summary(part: ViTSAE, quality: dict) -> str:
    """The chapter's two lines about the models and the SAE's quality."""
    q, s = quality, part.sae
    return part.description + (f"\nSAE ({s.kind}, d_sae = {s.d_sae}, block {part.layer}): variance explained "
                               f"{q['variance_explained']:.3f}, L0 {q['l0']:.1f} of {s.d_sae}, "
                               f"dead {q['dead_fraction']:.3f}")


# --------------------------------------------------------------------------------------------
# Feature selection (Section 4.3.1)
# --------------------------------------------------------------------------------------------


def measure_features(world, part: ViTSAE, readout: str = "cls") -> FeatureTable:
    """Every feature's image-level activation (``readout``: its class-token value, or the mean / max over
    the tokens) on the world's images, its firing rate and, with the world's concept labels, its selectivity."""
    check_reduce(readout, "readout", per_image=True)
    concepts = world.concept_labels(world.images, world.labels) if world.has("unit_concepts") else None
    return feature_table(part.vit, part.layer, part.sae, world.images, world.labels, concepts, readout,
                         world.batch_size or 256, world.image_files)


def choose(world, part: ViTSAE, table: FeatureTable, features="auto", concept_set: Optional[str] = None,
           n_features: int = 3, min_rate: float = 0.05, max_rate: float = 0.5) -> list[SelectedFeature]:
    """The notebook's choice (:func:`equidiff.sae.choose_features`): ``"auto"`` = ``n_features`` features with a
    firing rate in [``min_rate``, ``max_rate``], the most selective for distinct concepts of ``concept_set``
    (None: the world's) — or, where the world labels no concepts, ``part.features`` (the SAE's configured
    ones) or the most active; or a list of feature indices."""
    if not is_int(n_features) or n_features < 1:
        raise bad("n_features", n_features, "an integer ≥ 1")
    allowed = None
    if concept_set is not None:
        world.require("unit_concepts", "concept_set")
    if world.has("unit_concepts"):
        concept_set = world.setting(CHAPTER, "concept_set", concept_set)
        if concept_set not in world.concept_sets:
            raise bad("concept_set", concept_set, f"one of {tuple(world.concept_sets)}")
        allowed = list(world.concept_sets[concept_set])
        if isinstance(features, str) and features == "auto" and n_features > len(allowed):
            raise bad("n_features", n_features, f"an integer in [1, {len(allowed)}] (one feature per distinct "
                                                f"concept of concept_set {concept_set!r})")
    return choose_features(table, features, allowed, n_features, min_rate, max_rate, part.features)


def features_html(table: FeatureTable, chosen: Sequence[SelectedFeature]) -> str:
    """The chosen features as an HTML table: concept and selectivity (with concept labels) or mean activation,
    firing rate, top activation (and the top image's file, when the images come from files)."""
    rows = []
    for s in chosen:
        idx, vals = table.top_activating(s.feature, 1)
        row = [f"#{s.feature}"]
        row += ([s.concept, f"{s.selectivity:.2f}"] if table.has_concepts
                else [f"{float(table.activations[:, s.feature].mean()):.3f}"])
        row += [f"{s.firing_rate:.3f}", f"{float(vals[0]):.3f}"]
        rows.append(row + ([Path(table.image_names[int(idx[0])]).name] if table.image_names else []))
    n = len(table.images)
    if table.has_concepts:
        header = ["Feature", "concept", "selectivity"]
        note = ("selectivity: share of the feature's activation mass (summed over the training images) on images "
                "with the concept; firing rate: share of training images on which the feature is active.")
    else:
        header = ["Feature", "mean activation"]
        note = (f"mean activation and firing rate (share of images on which the feature is active) over the {n} "
                "images; no concept or selectivity: the images carry no concept labels.")
    header += ["firing rate", "top activation"] + (["top image"] if table.image_names else [])
    return html_table(header, rows, note)


# --------------------------------------------------------------------------------------------
# Section 4.3 experiment for one feature (Figure 4.3)
# --------------------------------------------------------------------------------------------


def run_settings(world, n_samples: Optional[int] = None, steps: Optional[int] = None,
                 ddim_steps: Optional[int] = None) -> dict:
    """``n_samples``, ``steps`` (the budget B) and ``ddim_steps`` (T), each None taking the world's value."""
    return {k: world.setting(CHAPTER, k, v) for k, v in (("n_samples", n_samples), ("steps", steps),
                                                          ("ddim_steps", ddim_steps))}


def label_histogram(labels, n_classes: int = 10) -> list[int]:
    """Counts of each class 0..n_classes-1 among ``labels``."""
    t = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    return torch.bincount(t, minlength=n_classes)[:n_classes].tolist()


@dataclass
class FeatureRun:
    """One feature's invariant set (Section 4.3) and its metrics."""

    feature: int
    concept: Optional[str]  # None: the world labels no concepts
    selectivity: Optional[float]
    firing_rate: float
    objective: str  # "feature" (the feature's activation) or "code" (the full SAE code)
    query: torch.Tensor  # (1, C, H, W) the top-activating image x*
    query_index: int
    top_images: torch.Tensor  # (n_top, C, H, W) the top-activating images, x* first
    top_values: torch.Tensor  # (n_top,) their activations
    top_predicted: Optional[torch.Tensor]  # (n_top,) the judge's labels of them (None: no judge)
    result: object  # InvariantResult
    predicted: Optional[torch.Tensor]  # (n_samples,) the judge's label of each sample (None: no judge)
    confidence: Optional[torch.Tensor]  # (n_samples,) the judge's probability for that label (None: no judge)
    sample_values: torch.Tensor  # (n_samples,) the feature's activation on each sample
    metrics: dict = field(default_factory=dict)


def concept_class(world, concept: Optional[str]) -> Optional[int]:
    """The class a concept stands for (the digits world's concept labels name them "digit <class>"), or None."""
    if concept is None or not concept.startswith("digit ") or not world.class_names:
        return None
    name = concept.split()[-1]
    return world.class_names.index(name) if name in world.class_names else None


def run_feature(world, part: ViTSAE, table: FeatureTable, selected: SelectedFeature, *, objective: str = "feature",
                reduce: Optional[str] = None, surrogate_gradient: bool = True, n_samples: Optional[int] = None,
                steps: Optional[int] = None, ddim_steps: Optional[int] = None, tau: float = 0.01, lr: float = 0.1,
                optimizer: str = "adam", lowpass_cutoff: Optional[float] = None, n_top: int = 32,
                seed: int = 0) -> FeatureRun:
    """Thesis Section 4.3 / Figure 4.3 for one SAE feature (``selected``, from :func:`choose`).

    1. query x* = the image of ``table.images`` with the highest activation of the feature;
    2. objective: the feature's activation (``objective="feature"``, one value) or the full SAE code
       (``objective="code"``, ``d_sae`` values), both reduced over tokens by ``reduce`` (default: the
       readout ``table`` was measured with), as the world evaluates objectives (``world.wrap_objective``);
    3. ``n_samples`` invariant samples from Algorithm 1 through the world's DDIM prior (``ddim_steps``
       steps, predicted x0 clamped, checkpointed; ``optimizer`` with ``lr``; threshold ``tau``; budget
       ``steps``; with ``lowpass_cutoff`` the dual loss of Algorithm 1), ``world.batch_size`` at a time;
    4. metrics: per-sample L2 = Σ(L(x) − L(x*))² (the Algorithm 1 loss), success rate, the feature's
       activation on the samples, the world's FID; with a judge its labels of the samples and of the
       ``n_top`` top-activating real images.

    ``n_samples``, ``steps``, ``ddim_steps`` left None take the world's value. ``surrogate_gradient``:
    pass the gradient straight through the SAE's activation function, so a sample on which the feature
    is silent still moves (:func:`equidiff.sae.encode_images`); every loss is measured on the exact activations.
    """
    s = run_settings(world, n_samples, steps, ddim_steps)
    n_samples, steps, ddim_steps = s["n_samples"], s["steps"], s["ddim_steps"]
    if objective not in ("feature", "code"):
        raise bad("objective", objective, "'feature' (the feature's activation) or 'code' (the full SAE code)")
    if not is_int(n_samples) or n_samples < 1:
        raise bad("n_samples", n_samples, "an integer ≥ 1")
    if not is_int(ddim_steps) or ddim_steps < 1:
        raise bad("ddim_steps", ddim_steps, "an integer ≥ 1")
    feature = table.check_feature(selected.feature)
    concept, sel = None, None
    if table.has_concepts:
        concept = selected.concept if selected.concept is not None else table.best_concept(feature)[0]
        if concept not in table.concepts:
            raise bad("concept", concept, f"one of {table.concepts}")
        sel = float(table.selectivity[feature, table.concepts.index(concept)])
    vit, layer, sae = part.vit, part.layer, part.sae

    # Step 1: the query and the real images that activate the feature most (the left panel of Fig. 4.3).
    top_idx, top_vals = table.top_activating(feature, min(n_top, len(table.images)))
    qi = int(top_idx[0])
    query = table.images[qi : qi + 1]  # (1, C, H, W)
    # Step 2: the objective.
    reduce = table.reduce if reduce is None else reduce  # by default, the readout the features were chosen by
    if objective == "feature":
        obj = sae_feature(vit, layer, sae, feature, reduce, part.vit_name, surrogate_gradient)
    else:
        obj = sae_code(vit, layer, sae, reduce, part.vit_name, surrogate_gradient)
    obj = world.wrap_objective(obj)
    # Step 3: EquiDiff (Algorithm 1) through the world's deterministic DDIM prior.
    prior = world.make_prior(ddim_steps, checkpointing=True, clamp=True)
    cfg = InvariantConfig(n_samples=n_samples, steps=steps, tau=tau, optimizer=optimizer, lr=lr, seed=seed,
                          lowpass_cutoff=lowpass_cutoff)
    result = find_invariants_batched(obj, query.to(world.device), prior, cfg, world.batch_size)

    # Step 4: metrics.
    _, l2 = l1_l2(result.measurements.float().cpu(), result.target.float().cpu())  # (N,)
    target = result.target.float().cpu()
    x = result.x.detach().clamp(-1, 1).float()
    dev, b = world.device, world.batch_size or len(x)
    judge = world.has("judge")
    conf = predicted = top_conf = top_pred = vit_pred = start_conf = None
    with torch.no_grad():
        if judge:
            clf = world.judge
            conf, predicted = torch.softmax(clf(x.to(dev)), 1).max(1)  # (N,), (N,)
            top_conf, top_pred = torch.softmax(clf(table.images[top_idx].to(dev)), 1).max(1)
            conf, predicted, top_conf, top_pred = conf.cpu(), predicted.cpu(), top_conf.cpu(), top_pred.cpu()
        if world.has("vit_classes"):
            vit_pred = vit(x.to(dev)).argmax(1).cpu()  # what the ViT itself calls the samples
        if judge:  # the unoptimised starting samples prior(z_T): how digit-like the prior is before Algorithm 1
            start_conf = torch.softmax(clf(prior(result.z_init).clamp(-1, 1)), 1).max(1).values.cpu()
        single = sae_feature(vit, layer, sae, feature, reduce=reduce)
        sample_values = torch.cat([single(x[i : i + b].to(dev))[:, 0].float().cpu() for i in range(0, len(x), b)])
    name = f"FID, SAE feature #{feature}"
    fid = (world.fid(x.cpu(), world.images, name) if len(x) > 1 else
           FIDResult(name, None, "an FID needs at least 2 samples", n_samples=len(x)))
    done = result.steps_to_converge[result.converged].float()
    digit = concept_class(world, concept)
    rate = lambda v: float((v == digit).float().mean()) if v is not None and digit is not None else None  # noqa: E731
    hist = lambda v: label_histogram(v) if v is not None else None  # noqa: E731
    share = lambda c: float((c >= CONFIDENT).float().mean()) if c is not None else None  # noqa: E731
    sample_hist, real_hist = hist(predicted), hist(top_pred)
    metrics = {
        "feature": feature,
        "concept": concept,
        "selectivity": sel,
        "firing_rate": float(table.firing_rate[feature]),
        "objective": objective,
        "reduce": reduce,
        "m": int(target.numel()),
        "query_index": qi,
        "query_label": int(table.labels[qi]) if table.labels is not None else None,
        "target_activation": float(top_vals[0]),
        "n_samples": n_samples,
        "l2_mean": float(l2.mean()),
        "l2_std": float(l2.std()) if n_samples > 1 else 0.0,
        "l2_median": float(l2.median()),
        "l2_max": float(l2.max()),
        "l2_relative": float(l2.mean() / (target**2).sum().clamp(min=1e-12)),
        "success_rate": result.success_rate,
        "steps": float(done.median()) if done.numel() else None,
        "seconds": result.seconds,
        # the judge's labels of all samples, and of the n_top most-activating real images
        "sample_label_histogram": sample_hist,
        "real_label_histogram": real_hist,
        "real_true_label_histogram": hist(table.labels[top_idx]) if table.labels is not None else None,
        "sample_label_histogram_converged": hist(predicted[result.converged]) if judge else None,
        # the digits judge is trained to be unsure on non-digits (outlier exposure): confidence ≥ 0.9 is the
        # quality gate's "looks like a digit"; the histogram of the confidently labelled samples only
        "confidence_threshold": CONFIDENT if judge else None,
        "sample_label_histogram_confident": hist(predicted[conf >= CONFIDENT]) if judge else None,
        "sample_confident_rate": share(conf),
        "real_confident_rate": share(top_conf),
        "start_confident_rate": share(start_conf),
        "sample_vit_label_histogram": hist(vit_pred),
        "sample_vit_concept_rate": rate(vit_pred),
        "n_top": int(len(top_idx)),
        # share of the samples / top real images the judge puts in the feature's class
        "sample_concept_rate": rate(predicted),
        "real_concept_rate": rate(top_pred),
        "sample_classes": int(sum(1 for c in sample_hist if c > 0)) if judge else None,
        "real_classes": int(sum(1 for c in real_hist if c > 0)) if judge else None,
        "sample_activation_mean": float(sample_values.mean()),
        # where the numbers come from
        "query_file": table.image_names[qi] if table.image_names else None,
        "firing_rate_images": f"the {len(table.images)} {world.image_noun}",
        "fid": fid.value, "fid_reason": fid.reason, "fid_features": fid.features, "fid_note": fid.note,
        "fid_n_reference": fid.n_reference,
    }
    metrics = world.with_reasons(metrics, FEATURE_NEEDS)
    if metrics["steps"] is None:
        metrics["steps_reason"] = NO_CONVERGED
    if metrics["query_file"] is None:
        metrics["query_file_reason"] = NO_FILES
    return FeatureRun(feature, concept, sel, float(table.firing_rate[feature]), objective, query, qi,
                      table.images[top_idx], top_vals, top_pred, result, predicted, conf, sample_values, metrics)


# --------------------------------------------------------------------------------------------
# Lines and tables of the runs
# --------------------------------------------------------------------------------------------


def run_line(run: FeatureRun) -> str:
    m = run.metrics
    what = f" ({run.concept})" if run.concept is not None else ""
    return (f"#{run.feature}{what}: {m['success_rate']:.2f} below τ, L2 {m['l2_mean']:.2g} ± {m['l2_std']:.2g} "
            f"(target f(x*) = {m['target_activation']:.3g}), {m['seconds']:.0f} s")


def _f(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def runs_html(world, runs: Sequence[FeatureRun], tau: float) -> str:
    """One row per feature: (selectivity,) L2 (mean ± std), relative L2, success, (the judge's labels of real
    images vs samples,) the samples' activation and the FID; the columns a world lacks are left out."""
    labelled, judge = world.has("unit_concepts"), world.has("judge")
    cols = [("Feature", lambda r, m: f"#{r.feature}")]
    if labelled:
        cols += [("concept", lambda r, m: r.concept), ("selectivity", lambda r, m: _f(m["selectivity"], ".2f"))]
    cols += [("target f(x*)", lambda r, m: f"{m['target_activation']:.3g}"),
             ("L2", lambda r, m: f"{m['l2_mean']:.2g} ± {m['l2_std']:.2g}"),
             ("L2 relative", lambda r, m: f"{m['l2_relative']:.2g}"),
             ("below τ", lambda r, m: f"{m['success_rate']:.2f}")]
    if judge:
        cols += [("concept rate, real", lambda r, m: _f(m["real_concept_rate"], ".2f")),
                 ("concept rate, samples", lambda r, m: _f(m["sample_concept_rate"], ".2f")),
                 ("classes real / samples", lambda r, m: f"{m['real_classes']} / {m['sample_classes']}"),
                 ("samples confident", lambda r, m: f"{m['sample_confident_rate']:.2f}")]
    cols += [("sample activation (mean)", lambda r, m: f"{m['sample_activation_mean']:.3g}"),
             ("FID", lambda r, m: _f(m["fid"], ".1f"))]
    rows = [[fn(r, r.metrics) for _, fn in cols] for r in runs]
    note = ("L2 = Σ(L(x) − L(x*))² per sample (the Algorithm 1 loss), mean ± standard deviation over the "
            "samples; "
            f"relative: mean L2 / Σ L(x*)²; τ = {tau:g}. ")
    if judge:
        note += ("Concept rate: share the judge classifier puts in the feature's class, for the top real images and "
                 "for the invariant samples; classes: how many of the classes occur among them (real / samples); "
                 f"confident: share of the samples the judge labels with probability ≥ {CONFIDENT:g} (it was trained "
                 "to be unsure on non-digits). ")
    else:
        note += f"No concept rates: {world.reason('judge')}. "
    fids = {r.metrics["fid_features"] for r in runs if r.metrics.get("fid_features")}
    reasons = sorted({r.metrics["fid_reason"] for r in runs if r.metrics.get("fid_reason")})
    note += (f"FID ({', '.join(sorted(fids)) or 'the world’s features'}) of the samples against the world's "
             f"{world.image_noun}" + (". FID not computed: " + " ".join(reasons) if reasons else "."))
    return html_table([h for h, _ in cols], rows, note)


def label_lines(world, runs: Sequence[FeatureRun]) -> str:
    """Per feature, the judge's label histograms of the top real images and of the samples (or why there are none)."""
    if not world.has("judge"):
        return f"no label histograms: {world.reason('judge')}."
    return "\n".join(f"#{r.feature} ({r.concept}): real top {r.metrics['n_top']} "
                     f"{r.metrics['real_label_histogram']}, samples {r.metrics['sample_label_histogram']}"
                     for r in runs)


def realism_lines(world, runs: Sequence[FeatureRun]) -> str:
    """One line per run: how digit-like the starting and invariant samples are (judge confidence ≥ 0.9), and
    how often the judge and the ViT itself put the samples in the feature's class; without a judge, the
    samples' activation against the query's."""
    lines = []
    for r in runs:
        m = r.metrics
        if not world.has("judge"):
            lines.append(f"#{r.feature}: the samples' activation {m['sample_activation_mean']:.3g} (mean) against the "
                         f"query's {m['target_activation']:.3g}; {world.reason('judge')}")
            continue
        line = (f"#{r.feature} ({r.concept}): confident digits: starting samples {m['start_confident_rate']:.2f}, "
                f"invariant samples {m['sample_confident_rate']:.2f}, top real images {m['real_confident_rate']:.2f}")
        d = concept_class(world, r.concept)
        if d is not None:
            line += (f"; samples called '{world.class_names[d]}' by the classifier "
                     f"{_f(m['sample_concept_rate'], '.2f')}, "
                     f"by the ViT {_f(m['sample_vit_concept_rate'], '.2f')}")
        lines.append(line)
    return "\n".join(lines)


def chapter_metrics(world, part: ViTSAE, quality: dict, runs: Sequence[FeatureRun], settings: dict,
                    parameters: dict, seconds: float) -> dict:
    """The chapter's metrics.json: the settings it ran with (``settings``: :func:`run_settings`), the models, the
    SAE's quality, every feature's metrics, the world's record and the notebook's ``parameters``."""
    p = parameters
    return {
        "profile": world.name, "seed": p["seed"], "layer": part.layer, "sae_kind": part.sae.kind,
        "expansion": part.expansion, "readout": p["readout"], "objective": p["objective"], "tau": p["tau"],
        "steps_budget": settings["steps"], "n_samples": settings["n_samples"], "optimizer": p["optimizer"],
        "lr": p["lr"], "lowpass_cutoff": p["lowpass_cutoff"], "ddim_steps": settings["ddim_steps"],
        "models": world.with_reasons(part.record, MODEL_NEEDS),
        "sae": quality,
        "features": [r.metrics for r in runs],
        "seconds": seconds,
        **world.record,
        "parameters": parameters,
    }
