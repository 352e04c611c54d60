"""Chapter 0 (notebook 00_world): the embedded world — real handwriting and a prior worth the name.

Before any invariant set, a reader should see what the world is made of and how good its prior is:
real MNIST digits (:mod:`equidiff.worlds.digits.data`), the judge classifier's accuracy, and
unoptimised samples of the diffusion prior measured against the gate of
:mod:`equidiff.worlds.digits.ship` (judge confidence, FID in the judge's features, nearest-neighbour
distances that show the samples are not copies of training digits). :func:`overview` computes it all
from the world's own models; :func:`prose_values` is what the chapter's text states (glued).
"""

from __future__ import annotations

import math
import time
from typing import Optional

import torch

from equidiff._validate import bad, check_folder, check_int
from equidiff.core.filters import high_frequency_share
from equidiff.report.glue import Text, as_is
from equidiff.worlds.digits.models import quality_gate
from equidiff.worlds.digits.ship import CONFIDENT, COPY_QUANTILE, GATE_COPIES, GATE_SHARE, prior_quality

__all__ = ["check_parameters", "overview", "prose_values", "PROFILES"]

PROFILES = ("cpu", "smoke")


def check_parameters(p: dict) -> None:
    """The notebook's parameters, each checked by its own name before any model is loaded."""
    check_int("seed", p["seed"], 0)
    check_int("n_samples", p["n_samples"], 10, why="unoptimised prior samples to measure")
    check_int("ddim_steps", p["ddim_steps"], 1, why="DDIM steps of the prior")
    check_int("compare_steps", p["compare_steps"], 0, why="DDIM steps of a longer chain to compare with; 0: none")
    check_int("stochastic_steps", p["stochastic_steps"], 0, why="steps of the stochastic (η = 1) chain; 0: none")
    check_int("stochastic_samples", p["stochastic_samples"], 10, why="samples of the stochastic chain")
    if p["profile"] not in PROFILES:
        raise bad("profile", p["profile"], f"one of {PROFILES} (the embedded world; the paper world has no page here)")
    check_folder("output_dir", p["output_dir"])


def overview(world, n_samples: int = 1000, seed: int = 0, ddim_steps: int = 10, compare_steps: int = 50,
             stochastic_steps: int = 100, stochastic_samples: int = 500) -> dict:
    """Everything the chapter shows about ``world`` (a digits world with a ``"zoo"`` part).

    ``compare_steps`` > 0: the same starting noises also run through a ``compare_steps``-step DDIM
    chain (``"compare_chain"``: its judge-confident share and class counts), to tell what the short
    chain the chapters optimise through does to the samples from what the trained model does.
    ``stochastic_steps`` > 0: ``stochastic_samples`` samples of the same model through a
    ``stochastic_steps``-step chain with η = 1 (fresh seeded noise at every step, DDPM-like;
    ``"stochastic_chain"``, with the binomial standard error of its share): how good the model is
    when no deterministic chain is asked of it."""
    t0 = time.perf_counter()
    zoo = world.part("zoo")
    ddpm, clf = zoo["ddpm"], zoo["classifier"]
    quality, d = prior_quality(ddpm.model, ddpm.scheduler, world.judge, n=n_samples, seed=seed,
                               train=world.images, test=world.test_images, num_inference_steps=ddim_steps)
    samples = d["samples"]
    compare = None
    if compare_steps:  # quality_gate seeds its noise as prior_quality's call did: the same starting noises
        r = quality_gate(ddpm.model, ddpm.scheduler, world.judge, n=n_samples, num_inference_steps=compare_steps,
                         threshold=CONFIDENT, seed=seed)
        compare = {"ddim_steps": compare_steps, "share_confident": r.share,
                   "class_counts": r.class_counts()}
    stochastic = None
    if stochastic_steps:
        r = quality_gate(ddpm.model, ddpm.scheduler, world.judge, n=stochastic_samples,
                         num_inference_steps=stochastic_steps, threshold=CONFIDENT, seed=seed, eta=1.0)
        stochastic = {"steps": stochastic_steps, "eta": 1.0, "n": stochastic_samples, "share_confident": r.share,
                      "share_se": math.sqrt(r.share * (1 - r.share) / stochastic_samples),
                      "class_counts": r.class_counts()}
    return {
        "n_train": len(world.images), "n_test": len(world.test_images),
        "train_per_class": torch.bincount(world.labels, minlength=10).tolist(),
        "classifier_test_accuracy": float(clf.info["test_accuracy"]),
        "ddpm_train_steps": int(ddpm.config.train_steps), "ddpm_params": int(ddpm.info["n_params"]),
        "ddpm_train_seconds": float(ddpm.info["train_seconds"]), "ddim_steps": ddim_steps,
        "quality": quality.summary(), "compare_chain": compare, "stochastic_chain": stochastic,
        "hf_share_real": float(high_frequency_share(world.images).mean()),
        "hf_share_samples": float(high_frequency_share(samples).mean()),
        "samples": samples, "sample_labels": d["labels"], "sample_confidence": d["confidence"],
        "nearest_train": world.images[d["nn_index"]], "nn_sample": d["nn_sample"], "nn_test": d["nn_test"],
        "confidence_threshold": CONFIDENT, "gate_share": GATE_SHARE, "gate_copies": GATE_COPIES, "copy_quantile": COPY_QUANTILE,
        "seconds": time.perf_counter() - t0,
    }


def prose_values(ov: dict) -> dict:
    """The figures the chapter's text states, from :func:`overview` (glued into the prose)."""
    q = ov["quality"]
    counts = q["class_counts"]
    return {
        "n_train": ov["n_train"], "n_test": ov["n_test"], "n_total": ov["n_train"] + ov["n_test"],
        "per_class": int(min(ov["train_per_class"])),
        "classifier_acc": ov["classifier_test_accuracy"],
        "ddpm_steps": ov["ddpm_train_steps"], "ddpm_params": ov["ddpm_params"],
        "ddpm_minutes": ov["ddpm_train_seconds"] / 60, "ddim_steps": ov["ddim_steps"],
        "n_samples": q["n"], "share_confident": q["share_confident"],
        "share_confident_real": q["share_confident_real"], "mean_confidence": q["mean_confidence"],
        "confidence_threshold": ov["confidence_threshold"], "gate_share": ov["gate_share"], "gate_copies": ov["gate_copies"],
        "copy_quantile_pct": 100 * ov["copy_quantile"],
        "fid": q["fid"], "fid_floor": q["fid_real_floor"],
        "nn_sample_median": q["nn_sample_median"], "nn_test_median": q["nn_test_median"],
        "share_closer": q["share_closer_than_real"],
        "gate_verdict": Text("passes" if q["passed"] else "fails"),
        **_extremes("", counts),
        "class_coverage": Text("every class appears among the samples" if min(counts) > 0 else
                               "class " + ", ".join(str(c) for c in range(10) if counts[c] == 0)
                               + " never appears among the samples"),
        "hf_real": ov["hf_share_real"], "hf_samples": ov["hf_share_samples"],
        **_compare_values(ov["compare_chain"]),
        **_stochastic_values(ov["stochastic_chain"], q["share_confident"], ov["gate_share"],
                             None if ov["compare_chain"] is None else ov["compare_chain"]["share_confident"] >= ov["gate_share"]),
    }


def _compare_values(c) -> dict:
    """The longer chain's figures for the prose ("–" where the chapter ran none)."""
    if c is None:
        return {k: Text("–") for k in ("compare_steps", "compare_share", "compare_rarest_class", "compare_rarest_count",
                                       "compare_commonest_class", "compare_commonest_count")}
    return {"compare_steps": c["ddim_steps"], "compare_share": as_is(f"{c['share_confident']:.3f}"),
            **_extremes("compare_", c["class_counts"])}


def _stochastic_values(c, share: float, gate: float, longer: Optional[bool]) -> dict:
    """The stochastic chain's figures and reading for the prose ("–" where the chapter ran none)."""
    keys = ("stochastic_steps", "stochastic_n", "stochastic_share", "stochastic_se", "stochastic_gap_words",
            "stochastic_verdict", "stochastic_reading")
    if c is None:
        return {k: Text("–") for k in keys}
    gap, passes = 100 * (c["share_confident"] - share), c["share_confident"] >= gate
    return {"stochastic_steps": c["steps"], "stochastic_n": c["n"],
            "stochastic_share": as_is(f"{c['share_confident']:.3f}"), "stochastic_se": as_is(f"{c['share_se']:.3f}"),
            "stochastic_gap_words": Text(f"{abs(gap):.1f} percentage points {'above' if gap >= 0 else 'below'}"),
            "stochastic_verdict": Text("at or above" if passes else "below"),
            "stochastic_reading": Text(_reading(passes, longer))}


def _reading(passes: bool, longer: Optional[bool]) -> str:
    """What the stochastic chain's verdict says about the shortfall; ``longer``: whether the longer
    deterministic chain passes the gate (None: the chapter ran none)."""
    if not passes:
        return ("Even with fresh noise at every step the model stays below the gate, so part of the shortfall "
                "is the model's own")
    if longer is None:
        return ("With fresh noise at every step the model reaches the gate, so a shortfall of the short "
                "deterministic chain is the chain's rather than the model's")
    if longer:
        return "The model reaches the gate with fresh noise and through the longer deterministic chain: the shortfall is the short chain's"
    return ("The model reaches the gate only with fresh noise: both deterministic chains fall short, the longer one "
            "too, so what the chapters' samples lack is what determinism costs this model, not what it failed to learn")


def _extremes(prefix: str, counts: list) -> dict:
    """The rarest and the commonest class of 10 class counts, and their counts (first class on ties)."""
    rarest, commonest = min(range(10), key=counts.__getitem__), max(range(10), key=counts.__getitem__)
    return {f"{prefix}rarest_class": rarest, f"{prefix}rarest_count": int(counts[rarest]),
            f"{prefix}commonest_class": commonest, f"{prefix}commonest_count": int(counts[commonest])}
