"""What the neuron chapter's text says about its run (notebook ``02_neurons``), for the book's glue.

Every number, unit id and count the chapter's prose states comes from :func:`prose_values`, which
reads it off the world, the alignment table, the chosen neurons and their runs
(:mod:`equidiff.chapters.neurons`); the notebook glues the dict (:func:`equidiff.report.glue.glue_all`)
and its markdown names the keys. Interpretive remarks are computed facts here: the share of samples
the classifier labels as the query's class, the most common label, whether the samples' diversity is
above or below that of real images of the query's class. A figure the world cannot compute (the
paper world has no concept labels and no held-out images) is the word ``"–"`` (or ``"not measured"``),
so the same prose renders for every world. Thesis Table 4.1's own figures, quoted beside ours, are
:data:`THESIS_TABLE_4_1`.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Optional

import numpy as np
import torch

from equidiff.chapters.neurons import pool_size
from equidiff.core.metrics import classifier_features
from equidiff.report.glue import Text, as_is, words
from equidiff.worlds.digits.concepts import BAR_RUN, DIGIT_CONCEPTS, STROKE_CONCEPTS, STROKE_RUN
from equidiff.worlds.digits.ship import CONFIDENT

__all__ = ["THESIS_TABLE_4_1", "prose_values", "classifier_accuracy"]

# Thesis Table 4.1, average row: L2 = Σ over the 7×7 map of ResNet-50's neurons, 32 samples, 1,024 steps
THESIS_TABLE_4_1 = {"l2_mean": 0.59, "l2_std": 0.11, "n_values": 49, "fid": 8.06, "steps": 1024}


def _fmt(v, spec: str, missing: str = "–") -> Text:
    """``v`` formatted, or ``missing`` for a figure that could not be computed (None or NaN)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return Text(missing)
    return Text(format(v, spec))


def _side(a: Optional[float], b: Optional[float], above: str = "above", below: str = "below",
          same: str = "equal to", missing: str = "not compared") -> Text:
    """Where ``a`` lies against ``b``, in words (``missing`` when either is unknown)."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return Text(missing)
    return Text(same if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else (above if a > b else below))


@torch.no_grad()
def classifier_accuracy(world) -> Optional[float]:
    """Top-1 accuracy of ``world.classifier`` on its held-out images (None: the world has none)."""
    if not world.has("test_images") or world.test_images is None or world.test_labels is None:
        return None
    bs = world.batch_size or 512
    pred = torch.cat([world.classifier(world.test_images[i : i + bs].to(world.device)).float().argmax(1).cpu()
                      for i in range(0, len(world.test_images), bs)])
    return float((pred == torch.as_tensor(world.test_labels).cpu()).float().mean())


def _group_r(table, names) -> tuple[Optional[float], Optional[float]]:
    """Mean and highest r of the best channels of the concepts ``names`` (None, None: none in the table)."""
    r = [row["r"] for row in table.rows() if row["concept"] in set(names)]
    return (float(np.mean(r)), float(np.max(r))) if r else (None, None)


def _mode(labels) -> tuple[int, int]:
    """The most common of ``labels`` and how often it occurs (ties: the smallest label)."""
    counts = Counter(int(v) for v in labels)
    label = min(counts, key=lambda k: (-counts[k], k))
    return label, counts[label]


def _alignment_values(world, table, chosen, top_rows) -> dict:
    digit_mean, digit_max = _group_r(table, DIGIT_CONCEPTS)
    stroke_mean, stroke_max = _group_r(table, STROKE_CONCEPTS)
    modes = [_mode(row["labels"]) for row in top_rows]
    return {
        "n_images": len(world.images), "n_digit_concepts": len(DIGIT_CONCEPTS),
        "n_stroke_concepts": len(STROKE_CONCEPTS), "bar_run": BAR_RUN, "stroke_run": STROKE_RUN,
        "digit_r_mean": _fmt(digit_mean, ".2f"), "digit_r_max": _fmt(digit_max, ".2f"),
        "stroke_r_mean": _fmt(stroke_mean, ".2f"), "stroke_r_max": _fmt(stroke_max, ".2f"),
        "digits_vs_strokes": _side(digit_mean, stroke_mean, "better aligned than", "less well aligned than",
                                   "as well aligned as", "not compared with"),
        "n_chosen": len(chosen),
        "chosen_list": words(f"#{s.channel} ({s.concept}, r = {_fmt(s.alignment, '.2f', 'not known')})"
                             for s in chosen),
        "n_top": max((len(row["labels"]) for row in top_rows), default=0),
        "top_labels": words(f"'{lab}'" for lab, _ in modes),
        "top_label_counts": words(n for _, n in modes),
    }


def _sample_values(runs) -> dict:
    same = [int((r.predicted == r.query_label).sum()) for r in runs]
    modes = [_mode(r.predicted.tolist()) for r in runs]
    div = [r.metrics["diversity"] for r in runs]
    ref = [r.metrics["diversity_same_class_reference"] for r in runs]
    return {
        "query_labels": words(f"'{r.query_label}'" for r in runs),
        "same_class_counts": words(same),
        "confident_bar": CONFIDENT,
        "confident_class_counts": words(_fmt(None if r.metrics["confident_class_rate"] is None else
                                             round(r.metrics["confident_class_rate"] * r.metrics["n_samples"]), "d")
                                        for r in runs),
        "sample_label_modes": words(f"'{lab}' ({n})" for lab, n in modes),
        "diversity_list": words(f"{d:.3f}" for d in div),
        "diversity_ref_list": words(_fmt(d, ".3f") for d in ref),
        "diversity_ref_from": Text(next((r.metrics.get("diversity_reference_images") for r in runs
                                         if r.metrics.get("diversity_reference_images")), "–")),
        "diversity_words": words(_side(d, e) for d, e in zip(div, ref)),
        "diversity_near_list": words(f"{r.metrics['diversity_near_map_reference']:.3f}" for r in runs),
        "near_map_l2_list": words(f"{r.metrics['near_map_l2_median']:.3g}" for r in runs),
        "diversity_near_words": words(_side(d, r.metrics["diversity_near_map_reference"]) for d, r in zip(div, runs)),
        "near_vs_class_words": words(_side(r.metrics["diversity_near_map_reference"], e, missing="not compared with")
                                     for r, e in zip(runs, ref)),
        "near_tau_words": words(_side(r.metrics["near_map_l2_median"], r.result.config.tau) for r in runs),
    }


def _optimisation_values(runs) -> dict:
    res = [r.result for r in runs]
    start = [h["loss_mean"][0] for h in (x.history for x in res) if h["loss_mean"]]
    growth = torch.cat([x.z.flatten(1).norm(dim=1) / x.z_init.flatten(1).norm(dim=1).clamp(min=1e-12)
                        for x in res]).float()  # (N,) final |z_T| over its (last) drawn |z_T|
    medians = [r.metrics["steps"] for r in runs]
    return {
        "n_total": sum(x.converged.numel() for x in res), "n_converged": sum(int(x.converged.sum()) for x in res),
        "n_unconverged": sum(int((~x.converged).sum()) for x in res),
        "success_list": words(f"{r.metrics['success_rate']:.2f}" for r in runs),
        "l2_list": words(f"{r.metrics['l2_mean']:.3g}" for r in runs),
        "steps_list": words(_fmt(m, ".0f") for m in medians),
        "last_steps": words(max(len(x.history["loss_mean"]) - 1, 0) for x in res),  # optimiser steps taken
        "restart_list": words(r.metrics["n_restarted"] for r in runs),
        "n_restarted_total": sum(r.metrics["n_restarted"] for r in runs),
        "start_loss": _fmt(float(np.mean(start)) if start else None, ".3g"),
        "z_growth_max": float(growth.max()), "z_growth_median": float(growth.median()),
        "restart_factor": Text(f"{res[0].config.restart_factor:g}"),
        "lbfgs_memory": res[0].config.lbfgs_memory,
    }


def _comparison_values(runs, n_values: int) -> dict:
    l2_avg = float(np.mean([r.metrics["l2_mean"] for r in runs]))
    thesis = THESIS_TABLE_4_1["l2_mean"] / THESIS_TABLE_4_1["n_values"]
    ratio = (l2_avg / n_values) / thesis
    fids = [r.metrics["fid"] for r in runs]
    floors = [r.metrics["fid_real_reference"] for r in runs]
    fid_avg = None if any(v is None for v in fids) else float(np.mean(fids))
    floor_avg = None if any(v is None for v in floors) else float(np.mean(floors))
    return {
        "l2_avg": l2_avg, "l2_per_value_ratio": ratio,
        "l2_per_value_word": Text("tighter" if ratio < 1 else "looser"),
        "fid_avg": _fmt(fid_avg, ".3g"), "fid_floor_avg": _fmt(floor_avg, ".3g"),
        "fid_vs_floor": _side(fid_avg, floor_avg),
        "n_fid_reference": _fmt(runs[0].metrics.get("fid_n_reference"), ",d"),
    }


def prose_values(world, table, chosen, runs, settings: dict, top_rows, *, workers: Optional[int] = None,
                 runs_seconds: Optional[float] = None, chapter_seconds: Optional[float] = None) -> dict:
    """Every figure the chapter's prose states, from this run: ``{glue key: value}``.

    ``table``, ``chosen``, ``runs``: :func:`~equidiff.chapters.neurons.neuron_table`,
    :func:`~equidiff.chapters.neurons.choose_neurons` and :func:`~equidiff.chapters.neurons.run_all`;
    ``settings``: :func:`~equidiff.chapters.neurons.neuron_settings`; ``top_rows``:
    :func:`~equidiff.chapters.neurons.top_image_rows`; ``workers``: the notebook's parameter;
    ``runs_seconds`` / ``chapter_seconds``: wall time of ``run_all`` and of the chapter so far.
    """
    if not runs:
        raise ValueError("prose_values needs at least one neuron's run, got none")
    first = runs[0]
    qmap = first.query_map
    n_values = int(first.result.target.numel())
    feats = classifier_features(world.classifier, world.images[:1].to(world.device))
    acc = classifier_accuracy(world)
    values = {
        # the world
        "world_name": world.name, "image_noun": world.image_noun, "image_side": int(world.images.shape[-1]),
        "test_accuracy": _fmt(acc, ".3f", "not measured"),
        "n_test": len(world.test_images) if world.has("test_images") and world.test_images is not None else 0,
        "n_channels": table.n_channels, "map_shape": Text("×".join(str(s) for s in qmap.shape)),
        "n_map_values": n_values, "feature_dim": int(feats.shape[1]), "latent_dim": int(first.result.z[0].numel()),
        **_alignment_values(world, table, chosen, top_rows),
        # the run's settings
        "neuron_ids": words(f"#{r.channel}" for r in runs), "n_samples": settings["n_samples"],
        "steps_budget": settings["steps"], "ddim_steps": settings["ddim_steps"], "tau": settings["tau"],
        "optimizer": settings["optimizer"], "seed": settings["seed"],
        "restart_after": Text(str(settings["restart_after"])), "restart_limit": Text(str(settings["restart_limit"])),
        "workers": Text(str(workers)),
        "n_workers": pool_size(world, len(runs), workers), "n_cpus": os.cpu_count() or 1,
        "value_tol": math.sqrt(settings["tau"] / n_values),  # RMS error per map value of a sample at L2 = τ
        **_optimisation_values(runs), **_sample_values(runs), **_comparison_values(runs, n_values),
        "runs_seconds": _fmt(runs_seconds, ".0f"), "chapter_seconds": _fmt(chapter_seconds, ".0f"),
    }
    return {k: as_is(v) if isinstance(v, str) else v for k, v in values.items()}
