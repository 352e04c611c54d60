"""What the classifier chapter's prose states, computed from its run (the myst-nb glue keys of ``04_classifier``).

The chapter's markdown types no number: :func:`prose_values` computes every number, count, class
name and comparison word its text uses from the run's rows (:func:`~equidiff.chapters.classifier.evaluate`),
cutoff curves, reference row, query and world, and the notebook glues them
(:func:`equidiff.report.glue.glue_all`). Every key is always present: what the run did not
compute (a constraint or method not run, an FID the world cannot compute) reads "–", or "nan" for a
single number (glued as a float, NaN when missing, so the prose formats it). myst-nb reads a glued
text back as a Python literal when it is one ("0.100" -> 0.1, "1, 2" -> a tuple), so a text here is
never one: lists are written with :func:`~equidiff.report.glue.words`, values per constraint with " / ".

Keys (``<m>`` is each method's short key of :data:`SHORT`: equidiff, nolp, pixel, fourier, guidance).
A value "per constraint" is one text, ``"a / b"`` for the class probability and the distribution in
that order (one value when one constraint ran):

=============================  ================================================================
run                            profile, seed, query_index, n_samples, steps, ddim_steps, tau,
                               tau_radius (√τ), lowpass_cutoff, guidance_scale, cutoffs, defaults_cpu,
                               defaults_paper (the worlds' n_samples, steps, ddim_steps)
world                          image_size ("16×16"), image_side, n_classes, n_heldout, heldout_what,
                               n_real_same (real images of the query's class, Figure 4.5's band),
                               accuracy (the classifier's on the held-out images, or "–")
query                          query_class, query_p (p_y(x*)), query_p_rest (1 − p_y(x*)),
                               rest_vs_radius ("below" / "above" √τ), ambiguous_index and
                               ambiguous_top (the held-out image the classifier is least sure of)
success                        all_in_cp, all_in_dist (methods with every sample in IS(x*), or
                               "no method"), success_min, success_max, success_min_who,
                               guidance_missed (samples outside, per constraint)
per method, per constraint     success_<m>, lpsuccess_<m> (dual criterion), hf_<m> (spectral share),
                               hfratio_<m> (÷ real images'), fid_<m>, div_<m>, time_<m> (s),
                               l2lp_<m> (L2 after filtering), same_<m> (share the classifier labels as
                               the query's class), steps_<m> (median steps to converge),
                               intact_<m>, below_<m>, gapreal_<m> (Figure 4.5, see below)
reference                      hf_real, fid_floor, div_real
comparisons                    fid_min, fid_min_vs_floor, fid_best, hf_closest, div_closest,
                               div_vs_real (EquiDiff's diversity "above" / "below" real images'),
                               eq_py_min (lowest p_y(x) of an EquiDiff sample), pair_dist (EquiDiff
                               and its variant without the low-pass term, same z_T, feature distance),
                               guidance_time_share (guidance's seconds ÷ EquiDiff's, %)
Figure 4.5                     intact_tol; intact_query, intact_real, intact_<m>: the lowest cutoff from
                               which the deviation stays below intact_tol ("none": not even the highest);
                               c_lowest, dev_query_lowest;
                               c_below (the largest cutoff below lowpass_cutoff), dev_real_below,
                               below_<m> (deviations there); gapreal_<m> (largest gap to real images'
                               curve); lp_gap_cutoff, lp_gap_with, lp_gap_without, lp_gap_mode (where
                               the curves with and without the low-pass term differ most);
                               filter_bands (the frequencies each cutoff keeps)
=============================  ================================================================
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from equidiff.chapters.classifier import MODE_LABELS, MODES, held_out
from equidiff.core.filters import lowpass_mask
from equidiff.core.metrics import classifier_features
from equidiff.report.glue import Text, words
from equidiff.worlds.settings import SETTINGS

__all__ = ["SHORT", "PROSE_LABELS", "INTACT_TOL", "NA", "prose_values", "per_constraint", "intact_from",
           "filter_bands", "least_confident"]

NA = Text("–")  # what the run did not compute
# short glue key and prose name of each method (the table's labels hold commas, which a list of them blurs)
SHORT = {"equidiff": "equidiff", "equidiff_no_lowpass": "nolp", "pixel": "pixel", "pixel_fourier": "fourier",
         "guidance": "guidance"}
PROSE_LABELS = {"equidiff": "EquiDiff", "equidiff_no_lowpass": "EquiDiff without the low-pass term",
                "pixel": "pixel-space (pixels)", "pixel_fourier": "pixel-space (Fourier)", "guidance": "guidance"}
_DEFAULTS = ("n_samples", "steps", "ddim_steps")  # the parameters a world fills in (defaults_cpu, defaults_paper)
INTACT_TOL = 0.05  # a deviation |p_y(F_c(x)) − p_y(x*)| below this counts as "intact" (Figure 4.5 prose)


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and not math.isfinite(v))


def per_constraint(values: Sequence, fmt: str) -> Text:
    """``[a, b]`` (one per constraint run) -> ``"a / b"`` formatted with ``fmt`` ("–" for a missing one)."""
    if not any(_ok(v) for v in values):
        return NA
    return Text(" / ".join(format(v, fmt) if _ok(v) else "–" for v in values))


def _num(v) -> float:
    """``v`` as a float, NaN when the run did not compute it (shows as "nan" under any format spec)."""
    return float(v) if _ok(v) else math.nan


def _mean(values) -> Optional[float]:
    ok = [v for v in values if _ok(v)]
    return sum(ok) / len(ok) if ok else None


def _cmp(a, b) -> Text:
    """The word comparing ``a`` with ``b``: "above", "below" or "equal to" ("–" when one is missing)."""
    if not (_ok(a) and _ok(b)):
        return NA
    return Text("above" if a > b else "below" if a < b else "equal to")


def intact_from(deviation: Sequence[float], cutoffs: Sequence[float], tol: float = INTACT_TOL) -> Optional[float]:
    """The lowest cutoff from which ``deviation`` stays below ``tol`` up to the highest cutoff (None: never)."""
    best = None
    for c, d in sorted(zip(cutoffs, deviation), reverse=True):
        if d >= tol:
            break
        best = c
    return best


def _c(c) -> Text:
    return Text(f"{c:g}") if c is not None else Text("none")


def filter_bands(height: int, width: int, cutoffs: Sequence[float]) -> Text:
    """Which integer spatial frequencies k (cycles per image, each direction) each cutoff keeps, cutoffs
    with the same filter grouped: ``"c = 0.1 keeps k = 0 (only the mean grey level); c = 0.5 and 0.6 keep k ≤ 4"``."""
    side = max(height, width)
    freqs = torch.fft.fftfreq(side).abs() * side  # integer k per FFT bin
    groups: dict[int, list[float]] = {}
    for c in sorted(cutoffs):
        k = int(round(float(freqs[lowpass_mask(side, side, c)[:, 0]].max())))
        groups.setdefault(k, []).append(c)
    parts = []
    for k, cs in groups.items():
        names = "c = " + words(cs, fmt="{:g}")
        verb = "keeps" if len(cs) == 1 else "keep"
        parts.append(f"{names} {verb} k = 0 (only the mean grey level)" if k == 0 else f"{names} {verb} k ≤ {k}")
    return Text("; ".join(parts))


def least_confident(world) -> tuple[int, list[tuple[str, float]], Optional[float]]:
    """The held-out image the classifier is least sure of: ``(index, [(class, p), (class, p)], accuracy)``,
    its two most probable classes, and the classifier's accuracy on the held-out images (None without labels)."""
    images, labels, _ = held_out(world)
    with torch.no_grad():
        p = torch.cat([torch.softmax(world.classifier(images[i: i + 256].to(world.device)).float(), 1).cpu()
                       for i in range(0, len(images), 256)])  # (M, K)
    i = int(p.max(1).values.argmin())
    top = torch.topk(p[i], 2)
    name = (lambda k: world.class_names[k]) if world.class_names else str
    acc = float((p.argmax(1) == labels.cpu()).float().mean()) if labels is not None else None
    return i, [(name(int(k)), float(v)) for v, k in zip(top.values, top.indices)], acc


def _rows(runs_by_mode: dict) -> dict:
    return {m: {n: r.row for n, r in runs.items()} for m, runs in runs_by_mode.items()}


def _method_values(rows, curves, modes, name, c_below, real_mean, cutoffs, hf_real) -> dict:
    """The per-method keys of one method (see the module's table)."""
    s = SHORT[name]

    def col(key):
        return [rows[m].get(name, {}).get(key) for m in modes]

    def curve(m):
        return curves[m]["methods"].get(name, {}).get("mean") if m in curves and name in rows[m] else None

    ib = cutoffs.index(c_below) if c_below is not None else None
    intact = [intact_from(curve(m), cutoffs) if curve(m) else None for m in modes]
    below = [curve(m)[ib] if curve(m) and ib is not None else None for m in modes]
    gap = [max(abs(a - b) for a, b in zip(curve(m), real_mean)) if curve(m) else None for m in modes]
    ran = [name in rows[m] for m in modes]
    return {
        f"success_{s}": per_constraint(col("success_rate"), ".2f"),
        f"lpsuccess_{s}": per_constraint(col("success_lowpass"), ".2f"),
        f"hf_{s}": per_constraint(col("high_freq_share"), ".3f"),
        f"hfratio_{s}": per_constraint([h / hf_real if _ok(h) and hf_real else None for h in col("high_freq_share")],
                                       ".1f"),
        f"fid_{s}": per_constraint(col("fid"), ".1f"),
        f"div_{s}": per_constraint(col("diversity"), ".2f"),
        f"time_{s}": per_constraint(col("seconds"), ".1f"),
        f"l2lp_{s}": per_constraint(col("l2_lowpass_mean"), ".2g"),
        f"same_{s}": per_constraint(col("same_class_rate"), ".2f"),
        f"steps_{s}": per_constraint(col("steps_median"), ".0f"),
        f"intact_{s}": Text(" / ".join(_c(c) if r else "–" for c, r in zip(intact, ran))) if any(ran) else NA,
        f"below_{s}": per_constraint(below, ".2f"),
        f"gapreal_{s}": per_constraint(gap, ".2f"),
    }


def _lowpass_gap(curves, modes, cutoffs) -> dict:
    """Where EquiDiff's mean curve and its variant's without the low-pass term differ most (Figure 4.5)."""
    best = None
    for m in modes:
        meth = curves[m]["methods"]
        if "equidiff" in meth and "equidiff_no_lowpass" in meth:
            for c, a, b in zip(cutoffs, meth["equidiff"]["mean"], meth["equidiff_no_lowpass"]["mean"]):
                if best is None or abs(a - b) > best[0]:
                    best = (abs(a - b), c, a, b, m)
    if best is None:
        return {"lp_gap_cutoff": math.nan, "lp_gap_with": math.nan, "lp_gap_without": math.nan, "lp_gap_mode": NA}
    _, c, a, b, m = best
    return {"lp_gap_cutoff": float(c), "lp_gap_with": float(a), "lp_gap_without": float(b),
            "lp_gap_mode": Text(MODE_LABELS[m])}


def _pair_dist(world, runs_by_mode, modes) -> Text:
    """Mean classifier-feature distance between EquiDiff's samples and its variant's from the same z_T."""
    out = []
    for m in modes:
        runs = runs_by_mode[m]
        if "equidiff" not in runs or "equidiff_no_lowpass" not in runs:
            out.append(None)
            continue
        with torch.no_grad():
            fa, fb = (classifier_features(world.classifier, runs[n].x) for n in ("equidiff", "equidiff_no_lowpass"))
        out.append(float((fa - fb).norm(dim=1).mean()))
    return per_constraint(out, ".2f")


def _closest(rows, modes, key, target) -> Text:
    """The prose label of the method whose mean ``key`` over the constraints is closest to ``target``."""
    names = {n for m in modes for n in rows[m]}
    dist = {n: abs(_mean([rows[m].get(n, {}).get(key) for m in modes]) - target) for n in names
            if _ok(target) and _mean([rows[m].get(n, {}).get(key) for m in modes]) is not None}
    return Text(PROSE_LABELS[min(dist, key=dist.get)]) if dist else NA


def prose_values(world, query, settings, runs_by_mode: dict, curves: dict, reference: dict) -> dict:
    """Every value the chapter's prose glues (keys: the module's table), from this run only.

    ``settings``: the run's :class:`~equidiff.chapters.classifier.Settings` (resolved for ``world``);
    ``runs_by_mode``: ``{mode: run_methods(...)}`` after :func:`~equidiff.chapters.classifier.evaluate`
    (each run's ``row``); ``curves``: ``{mode: cutoff_curves(...)}``; ``reference``: ``reference_row(...)``.
    """
    modes = [m for m in MODES if m in runs_by_mode]
    rows = _rows(runs_by_mode)
    cutoffs = list(settings.cutoffs)
    first = curves[modes[0]]
    real_mean = first["real_same_class"]["mean"]
    below = [c for c in cutoffs if c < settings.lowpass_cutoff]
    c_below = max(below) if below else None
    h, w = query.image.shape[-2:]
    amb, top, acc = least_confident(world)
    p_rest = max(0.0, 1.0 - query.p_true)
    name = query.class_name if query.class_name is not None else str(query.label)
    v = {
        "profile": Text(world.name), "seed": settings.seed, "query_index": query.index,
        "n_samples": settings.n_samples, "steps": settings.steps, "ddim_steps": settings.ddim_steps,
        "tau": float(settings.tau), "tau_radius": math.sqrt(settings.tau), "lowpass_cutoff": settings.lowpass_cutoff,
        "guidance_scale": float(settings.guidance_scale),
        "image_size": Text(f"{h}×{w}"), "image_side": int(h), "n_classes": int(len(query.probs)),
        "n_heldout": len(held_out(world)[0]), "heldout_what": Text(held_out(world)[2]),
        "n_real_same": int(first["real_same_class"]["n"]), "accuracy": _num(acc),
        "query_class": Text(name), "query_p": query.p_true, "query_p_rest": p_rest,
        "rest_vs_radius": _cmp(p_rest, math.sqrt(settings.tau)),
        "ambiguous_index": amb, "ambiguous_top": words([f"{p:.2f} for '{c}'" for c, p in top]),
        "hf_real": _num(reference.get("high_freq_share")), "fid_floor": _num(reference.get("fid")),
        "div_real": _num(reference.get("diversity")),
        "intact_tol": INTACT_TOL, "intact_query": _c(intact_from(first["query"], cutoffs)),
        "intact_real": _c(intact_from(real_mean, cutoffs)),
        "c_lowest": min(cutoffs), "dev_query_lowest": first["query"][cutoffs.index(min(cutoffs))],
        "c_below": _num(c_below),
        "dev_real_below": _num(real_mean[cutoffs.index(c_below)] if c_below is not None else None),
        "cutoffs": words(cutoffs, fmt="{:g}"),
        "filter_bands": filter_bands(h, w, cutoffs),
        "defaults_cpu": words(SETTINGS["cpu"]["classifier"][k] for k in _DEFAULTS),
        "defaults_paper": words(SETTINGS["paper"]["classifier"][k] for k in _DEFAULTS),
    }
    for n in SHORT:
        v.update(_method_values(rows, curves, modes, n, c_below, real_mean, cutoffs, reference.get("high_freq_share")))
    # success: who has every sample inside IS(x*), the range over every method and constraint
    for m, key in (("class_probability", "all_in_cp"), ("distribution", "all_in_dist")):
        full = [PROSE_LABELS[n] for n, r in rows.get(m, {}).items() if r["success_rate"] == 1.0]
        v[key] = words(full) if full else (Text("no method") if m in rows else NA)
    every = [(r["success_rate"], f"{PROSE_LABELS[n]} on the {MODE_LABELS[m]}")
             for m in modes for n, r in rows[m].items()]
    lo, hi = min(r for r, _ in every), max(r for r, _ in every)
    who = [w for r, w in every if r == lo]
    v.update(success_min=lo, success_max=hi,
             success_min_who=Text("every method and constraint") if len(who) == len(every) else words(who, "and"))
    v["guidance_missed"] = per_constraint([round((1 - rows[m]["guidance"]["success_rate"]) * rows[m]["guidance"]["n"])
                                           if "guidance" in rows[m] else None for m in modes], "d")
    # comparisons with the real images and between methods
    fids = {m: {n: r["fid"] for n, r in rows[m].items() if _ok(r["fid"])} for m in modes}
    all_fids = [f for d in fids.values() for f in d.values()]
    v["fid_min"] = _num(min(all_fids) if all_fids else None)
    v["fid_min_vs_floor"] = _cmp(min(all_fids) if all_fids else None, reference.get("fid"))
    v["fid_best"] = Text(" / ".join(PROSE_LABELS[min(d, key=d.get)] if d else "–" for d in fids.values()))
    v["hf_closest"] = _closest(rows, modes, "high_freq_share", reference.get("high_freq_share"))
    v["div_closest"] = _closest(rows, modes, "diversity", reference.get("diversity"))
    v["div_vs_real"] = _cmp(_mean([rows[m].get("equidiff", {}).get("diversity") for m in modes]),
                            reference.get("diversity"))
    with torch.no_grad():
        py = [float(torch.softmax(world.classifier(runs_by_mode[m]["equidiff"].x), 1)[:, query.label].min())
              for m in modes if "equidiff" in runs_by_mode[m]]
    v["eq_py_min"] = _num(min(py) if py else None)
    v["pair_dist"] = _pair_dist(world, runs_by_mode, modes)
    v["guidance_time_share"] = per_constraint(
        [100 * rows[m]["guidance"]["seconds"] / rows[m]["equidiff"]["seconds"]
         if "guidance" in rows[m] and "equidiff" in rows[m] and rows[m]["equidiff"]["seconds"] > 0 else None
         for m in modes], ".0f")
    v.update(_lowpass_gap(curves, modes, cutoffs))
    return v
