"""What the applications chapter's prose says about its run: every number, count and verdict, computed.

The chapter (``notebooks/05_applications.ipynb``) computes its results with
:mod:`equidiff.chapters.applications`; :func:`prose_values` turns them into the dict the notebook glues
(:func:`equidiff.report.glue.glue_all`) and its markdown quotes as ``{glue:text}`key```. Nothing in the
page's text is typed by hand, and what the text *concludes* is computed here too:

* :func:`reliance_reading` — does the direct test (marked digits of other classes called the shortcut
  class) separate the shortcut classifier from the control, by more than twice the standard error?
* :func:`selection_reading` — is the selection's precision at k above the range of random choices?
* :func:`comparison` — "larger than" / "smaller than" / "the same as", for two shares;
* :func:`corner_ink` — how empty the marker's corner is in the real digits;
* :func:`class_counts` — the classes among some images, most common first, with their counts.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from equidiff.chapters.applications import READINGS, interval_reading
from equidiff.core.members import member_pool
from equidiff.report.glue import Text, words
from equidiff.worlds.digits.data import load_digits16
from equidiff.worlds.digits.shortcut import marked_split

__all__ = ["prose_values", "reliance_reading", "selection_reading", "comparison", "corner_ink", "class_counts",
           "SPACE_NAMES", "RANDOM_LEVEL"]

SPACE_NAMES = {"pixels": "pixel space", "classifier": "judge's feature space"}  # select_space -> words
RANDOM_LEVEL = 95  # % of single random choices inside equidiff.core.members.random_precision's range


def reliance_reading(shortcut: dict, control: dict, n_other: int, shortcut_class: int) -> str:
    """What the direct test shows: the share of marked other-class test images (``n_other`` of them)
    that each classifier calls the shortcut class (``marked_to_shortcut`` of
    :func:`equidiff.worlds.digits.shortcut.reliance`), compared at twice the standard error of the difference."""
    p, q = shortcut["marked_to_shortcut"], control["marked_to_shortcut"]
    se = math.sqrt(p * (1 - p) / n_other + q * (1 - q) / n_other)
    c = f'"{shortcut_class}"'
    if p - q > 2 * se:
        return (f"shows the shortcut: the shortcut classifier calls more of the marked other-class digits a {c} "
                "than the control does, by more than twice the standard error of the difference")
    if q - p > 2 * se:
        return (f"points the other way: the control calls more of the marked other-class digits a {c} than the "
                "shortcut classifier does, by more than twice the standard error of the difference")
    return (f"does not show the shortcut: the two classifiers call about as many of the marked other-class digits "
            f"a {c} (the difference is within twice its standard error)")


def selection_reading(main: dict) -> str:
    """Where the selection's precision at k (:func:`equidiff.core.members.evaluate_selection`) stands
    against random choices of k: their mean and the range of single random choices."""
    sel, mean, hi = main["precision_at_k_selected"], main["precision_at_k_random"], main["random_range"][1]
    if sel > hi:
        return "above the range of single random choices"
    if sel > mean:
        return "above the random mean but within the range of single random choices"
    return "no better than a random choice on average"


def comparison(a: float, b: float, tol: float = 1e-9) -> str:
    """``a`` against ``b`` in words: "larger than", "smaller than", "the same as" (NaN: "not comparable with")."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return "not comparable with"
    return "larger than" if a > b + tol else "smaller than" if a < b - tol else "the same as"


def corner_ink(size: int) -> dict:
    """The marker's corner (``size`` × ``size``, top left) in the real digits (all splits), as ink in [0, 1]:
    ``mean`` ink there, ``n_stroke`` digits with a pixel there more than half inked, of ``n_all``."""
    x, _ = load_digits16("all")
    ink = (x[:, 0, :size, :size] + 1) / 2  # (N, size, size)
    n_stroke = int((ink.amax((1, 2)) > 0.5).sum())
    return {"mean": float(ink.mean()), "n_stroke": n_stroke, "n_all": len(x), "share": n_stroke / len(x)}


def class_counts(classes, none: str = "none in this run") -> Text:
    """``[1, 5, 1]`` -> ``'"1" (2) and "5" (1)'``: the classes, most common first (ties: lower class)."""
    counts = Counter(int(c) for c in np.asarray(classes).ravel())
    if not counts:
        return Text(none)
    return words(f'"{c}" ({n})' for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _world_values(params: dict, models) -> dict:
    plant = models.world
    _, labels, marked = marked_split(plant, "train", "shortcut")
    is_c = labels == plant.shortcut_class
    _, test_labels = load_digits16("test")
    corner = corner_ink(plant.marker_size)
    trained = sum(getattr(models, m).info["train_seconds"] for m in ("prior", "shortcut", "control"))
    return {
        "shortcut_class": plant.shortcut_class, "marker_size": plant.marker_size,
        "marker_rate": plant.marker_rate, "other_rate": plant.other_rate,
        "n_train": len(labels), "n_test": len(test_labels), "n_all": corner["n_all"],
        "n_other_test": int((test_labels != plant.shortcut_class).sum()),
        "marked_class_share": float(marked[is_c].float().mean()),
        "marked_other_share": float(marked[~is_c].float().mean()),
        "n_marked_train": int(marked.sum()),
        "corner_ink": corner["mean"], "corner_stroke_n": corner["n_stroke"], "corner_stroke_share": corner["share"],
        "judge_test_accuracy": float(models.judge.info["test_accuracy"]),
        "train_minutes": trained / 60, "profile": params["profile"],
    }


def _reliance_values(reliance: dict, n_other: int, shortcut_class: int) -> dict:
    out = {}
    for name, r in reliance.items():
        out.update({f"{name}_clean": r["clean"], f"{name}_as_trained": r["in_distribution"],
                    f"{name}_swapped": r["swapped"], f"{name}_to_class": r["marked_to_shortcut"],
                    f"{name}_clean_to_class": r["clean_to_shortcut"]})
    out["reliance_verdict"] = reliance_reading(reliance["shortcut"], reliance["control"], n_other, shortcut_class)
    return out


def _detection_values(params: dict, detections: dict, summaries: dict, query_p: dict, direct: float) -> dict:
    s = summaries["shortcut"]
    out = {"n_queries": len(query_p["shortcut"]), "n_samples": params["n_samples"], "n_per_classifier": s["n_samples"],
           "steps": params["steps"], "tau": params["tau"], "ddim_steps": params["ddim_steps"],
           "interval_level": round(100 * s["level"]), "n_boot": s["n_boot"],
           "detection_verdict": READINGS[interval_reading(summaries)],
           "hit_classes": class_counts(detections["shortcut"].judged[detections["shortcut"].hits]),
           "search_vs_direct": comparison(s["share"], direct)}
    for name in ("shortcut", "control"):
        sm = summaries[name]
        out.update({f"query_p_{name}": float(query_p[name].min()), f"{name}_members": sm["n_members"],
                    f"{name}_success": sm["success_rate"], f"{name}_marked_share": sm["marked_share"],
                    f"{name}_judged_share": sm["judged_class_share"], f"{name}_share": sm["share"],
                    f"{name}_lo": sm["interval"][0], f"{name}_hi": sm["interval"][1], f"{name}_hits": sm["n_hits"]})
    return out


def _selection_values(detection, study: dict) -> dict:
    main, ab = study["main"], study["ablation"]
    pool, _ = member_pool(detection.converged, main["k"])
    pool = torch.as_tensor(pool)
    judged = detection.judged[pool]
    curve = study["curve"] or [main]
    return {
        "k": main["k"], "novelty_weight": main["novelty_weight"], "select_space": SPACE_NAMES[main["space"]],
        "pool_size": len(pool), "pool_kind": "its members" if detection.converged.sum() >= main["k"]
        else "all its samples, members or not (fewer than k converged)",
        "n_relevant_pool": int(detection.hits[pool].sum()), "base_rate": main["base_rate"],
        "prec_selected": main["precision_at_k_selected"], "prec_random": main["precision_at_k_random"],
        "random_lo": main["random_range"][0], "random_hi": main["random_range"][1], "random_level": RANDOM_LEVEL,
        "n_random_draws": study["n_draws"], "selection_verdict": selection_reading(main),
        "curve_k": words(c["k"] for c in curve),
        "curve_selected": words(f"{c['precision_at_k_selected']:.2f}" for c in curve),
        "curve_random": words(f"{c['precision_at_k_random']:.2f}" for c in curve),
        "picked_judged": class_counts(judged[torch.as_tensor(main["indices"])]),
        "ablation_diversity": ab["diversity"], "ablation_novelty": ab["novelty"],
        "other_space": SPACE_NAMES[ab["other_space_name"]], "ablation_space": ab["other_space"],
    }


def _demo_values(circles: dict, demo: dict) -> dict:
    c_sel, n_sel = circles["selection"], demo["selection"]
    predicted = Counter(int(c) for c in demo["predicted"])
    top, n_top = min(predicted.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "circle_n": len(circles["points"]), "circle_novelty_picks": float(np.mean(c_sel.novelty[c_sel.indices])),
        "circle_novelty_all": float(np.mean(c_sel.novelty)),
        "neuron": demo["neuron"], "neuron_concept": demo["concept"], "neuron_alignment": demo["alignment"],
        "neuron_query_label": demo["query_label"], "neuron_top_class": top, "neuron_top_share": n_top / len(demo["x"]),
        "neuron_pool_size": len(demo["x"]), "neuron_members": demo["n_members"], "neuron_samples": demo["n_samples"],
        "neuron_novelty_picks": float(np.mean(n_sel.novelty[n_sel.indices])),
        "neuron_novelty_all": float(np.mean(n_sel.novelty)),
    }


def prose_values(params: dict, models, reliance: dict, detections: dict, summaries: dict, query_p: dict,
                 study: dict, circles: dict, demo: dict) -> dict:
    """Everything the chapter's prose states, from this run: ``params`` (the notebook's parameters), the
    world's ``models``, ``reliance`` (per classifier, :func:`equidiff.worlds.digits.shortcut.reliance`),
    ``detections`` / ``summaries`` (:func:`~equidiff.chapters.applications.detect`, per classifier),
    ``query_p`` (:func:`~equidiff.chapters.applications.query_probabilities`), ``study``
    (:func:`~equidiff.chapters.applications.selection_study` on the shortcut classifier's pool), ``circles`` and
    ``demo`` (the circles and neuron selections). Returns ``{glue key: number or words}``."""
    world = _world_values(params, models)
    return {**world,
            **_reliance_values(reliance, world["n_other_test"], world["shortcut_class"]),
            **_detection_values(params, detections, summaries, query_p, reliance["shortcut"]["marked_to_shortcut"]),
            **_selection_values(detections["shortcut"], study),
            **_demo_values(circles, demo)}
