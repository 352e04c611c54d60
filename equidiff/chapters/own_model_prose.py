"""The values the prose of ``notebooks/06_own_classifier.ipynb`` glues, from its run only.

=======================  ==========================================================================
run                      profile, seed, n_samples, steps, ddim_steps, tau, tau_radius, lowpass_cutoff
model and conversion     model_name, image_size (the world's, e.g. 16×16), pad_px, conversion (the
                         wrapper's one-line description), fit, interpolation, n_heldout,
                         heldout_what, acc_used, acc_pad, acc_stretch (with this run's
                         interpolation), acc_best (the best fit × interpolation, words),
                         acc_other_interp
query                    query_index, query_class, query_model_p, query_judge_class
class run (``cls_``)     cls_objective, cls_success, cls_members, cls_l2, cls_judge, cls_model,
                         cls_pmin, cls_other (members the judge reads as another class),
                         cls_other_unsure (those it labels below the confidence ``confident``),
                         cls_unsure, cls_classes, cls_n_classes, cls_start_judge, cls_vs_start
                         ("above" / "below" / "equal to"), cls_measure
channel run (``ch_``)    ch_layer, ch_channel, ch_how, ch_z, ch_spread, ch_success, ch_members,
                         ch_l2, ch_judge, ch_model, ch_classes, ch_n_classes, ch_start_judge,
                         ch_other, ch_other_unsure, ch_unsure
judge                    confident (the judge's threshold for a recognisable digit)
=======================  ==========================================================================

A number the run could not compute (a run without members) is glued as NaN ("nan" in the text).
"""

from __future__ import annotations

import math

from equidiff.chapters.own_model import CCEXAM, FITS
from equidiff.report.glue import Text, words

__all__ = ["NA", "prose_values"]

NA = Text("–")


def _f(v) -> float:
    """``v`` as a float; NaN when the run did not compute it (the prose formats it: "nan" under any format spec)."""
    return math.nan if v is None else float(v)


def _cmp(a, b) -> Text:
    if any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in (a, b)):
        return NA
    return Text("above" if a > b else "below" if a < b else "equal to")


def _classes(labels) -> Text:
    return words([f"'{k}'" for k in labels]) if labels else Text("none")


def _run(prefix: str, row: dict) -> dict:
    classes = [k for k, c in enumerate(row["judge_label_counts"]) if c]
    return {
        f"{prefix}_objective": Text(row["objective"]),
        f"{prefix}_success": _f(row["success_rate"]),
        f"{prefix}_members": int(row["n_members"]),
        f"{prefix}_l2": _f(row["l2_mean"]),
        f"{prefix}_judge": _f(row["judge_agreement"]),
        f"{prefix}_model": _f(row["model_agreement"]),
        f"{prefix}_classes": _classes(classes),
        f"{prefix}_n_classes": len(classes),
        f"{prefix}_start_judge": _f(row["start_judge_agreement"]),
        f"{prefix}_other": int(row["judge_other_counts"]),
        f"{prefix}_other_unsure": int(row["judge_other_unsure_counts"]),
        f"{prefix}_unsure": int(row["judge_unsure_counts"]),
    }


def prose_values(world, query, choice, rows: dict, accuracy: dict, settings, *, fit: str, interpolation: str,
                 measure: str, conversion: str, model_name: str) -> dict:
    """Every value the chapter's prose glues (keys: the module's table).

    ``rows``: ``{"class": judge_members(...), "channel": judge_members(...)}``; ``accuracy``:
    :func:`~equidiff.chapters.own_model.conversion_accuracy` on the held-out digits; ``choice``: the
    :class:`~equidiff.chapters.own_model.ChannelChoice`; ``settings``: the run's Settings.
    """
    cls, ch = rows["class"], rows["channel"]
    best = max(((a, f, i) for f, d in accuracy.items() for i, a in d.items()))
    other = [i for i in accuracy[fit] if i != interpolation]
    y = query.label
    v = {
        "profile": Text(world.name), "seed": settings.seed, "n_samples": settings.n_samples, "steps": settings.steps,
        "ddim_steps": settings.ddim_steps, "tau": float(settings.tau), "tau_radius": math.sqrt(settings.tau),
        "lowpass_cutoff": NA if settings.lowpass_cutoff is None else float(settings.lowpass_cutoff),
        "model_name": Text(model_name), "conversion": Text(conversion), "fit": Text(fit),
        "interpolation": Text(interpolation),
        "image_size": Text("×".join(map(str, query.image.shape[-2:]))),
        "model_mean": CCEXAM["mean"], "model_std": CCEXAM["std"],  # the model's own normalisation
        "n_heldout": len(world.test_images), "heldout_what": Text(f"held-out {world.image_noun}"),
        "acc_used": accuracy[fit][interpolation],
        "acc_pad": accuracy["pad"][interpolation], "acc_stretch": accuracy["stretch"][interpolation],
        "acc_best": Text(f"{best[1]} with {best[2]} resampling ({best[0]:.3f})"),
        "acc_other_interp": Text(words([f"{accuracy[fit][i]:.3f} with {i}" for i in other]) if other else "–"),
        "pad_px": FITS["pad"]["pad"],
        "query_index": query.index, "query_class": Text(str(y)), "query_model_p": query.model_p,
        "query_judge_class": Text(str(int(query.judge_probs.argmax()))),
        "cls_measure": Text("log p_y" if measure == "log" else "p_y"),
        "confident": float(cls["confident"]),
        "cls_pmin": _f(cls["model_p_members_min"]),
        "cls_vs_start": _cmp(cls["judge_agreement"], cls["start_judge_agreement"]),
        "ch_layer": Text(choice.layer), "ch_channel": choice.channel,
        "ch_how": Text("the channel of the layer that the query excites most, relative to real digits" if choice.picked
                       else "the channel given by the parameter channel"),
        "ch_z": choice.zscore, "ch_spread": choice.spread,
    }
    v.update(_run("cls", cls))
    v.update(_run("ch", ch))
    return v
