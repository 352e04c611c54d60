"""The SAE chapter's prose, from the run (thesis Section 4.3): every number, unit id and count the page states.

:func:`prose_values` turns one run of ``notebooks/03_sae.ipynb`` (the world, its ViT + SAE, the SAE's quality,
the features' :class:`~equidiff.chapters.sae.FeatureRun` objects) into the dict the notebook glues
(:func:`equidiff.report.glue.glue_all`); its markdown writes ``{glue:text}`key``` where it used to type a
number. Per-feature facts are lists in the order of the chosen features ("0.99, 0.96 and 0.95"); what the
page says about the grids is computed here (the judge's most common label among a feature's samples and its
share, how many samples leave the feature's class and how many of those are not clearly digits, a word
"below" / "above" from comparing two numbers), never typed. What a world lacks (labels, a judge, concept
labels: the paper world) reads "not measured" (a number: "nan"); the lines printed beside the figures say why.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from equidiff.chapters.sae import CONFIDENT, FeatureRun, concept_class
from equidiff.report.glue import Text, words
from equidiff.sae import ViTSAE, vit_body

__all__ = ["NOT_MEASURED", "NO_NUMBER", "THESIS_L2", "READOUT_NAMES", "compare", "feature_facts", "prose_values"]

NOT_MEASURED = Text("not measured")  # a value the world cannot give (no labels, no judge, no concept labels)
NO_NUMBER = float("nan")  # the same, for a number the prose formats (``{glue:text}`key:.3f``` shows "nan")
THESIS_L2 = 0.01  # thesis Figure 4.3: the samples match the feature's activation to "L2 ≈ 0.01"
READOUT_NAMES = {"cls": "class token", "mean": "mean over the tokens", "max": "maximum over the tokens"}


def compare(a: float, b: float) -> Text:
    """``"below"``, ``"above"`` or ``"equal to"``: where ``a`` lies against ``b``."""
    return Text("below" if a < b else "above" if a > b else "equal to")


def _pct(x: float) -> str:
    return f"{x:.0%}"


def _pct2(x: float) -> str:  # a share that may be small: two significant digits ("0.46%", "13%", "100%")
    return f"{100 * x:.0f}%" if 100 * x >= 10 else f"{100 * x:.2g}%"


def _of(k: int, n: int) -> str:
    return f"{k} of {n}"


def _list(facts: Sequence[dict], key: str, fmt=str) -> Text:
    """The per-feature values ``facts[i][key]`` as "a, b and c" (``fmt`` each); not measured if any is None."""
    vals = [f[key] for f in facts]
    return NOT_MEASURED if any(v is None for v in vals) else words(fmt(v) for v in vals)


def _class_word(world, d: Optional[int]) -> Optional[str]:
    return None if d is None else f"“{world.class_names[d]}”"


def feature_facts(world, run: FeatureRun) -> dict:
    """What the prose states about one feature's run: counts of its samples by the judge's label and
    confidence (None where the world has no judge, or the feature's concept is not a class)."""
    m, n = run.metrics, len(run.result.x)
    d = concept_class(world, run.concept)
    f = {"id": f"#{run.feature}", "concept": run.concept, "class": _class_word(world, d), "n": n,
         "selectivity": run.selectivity, "firing_rate": run.firing_rate, "l2_mean": m["l2_mean"],
         "l2_relative": m["l2_relative"], "steps": m["steps"], "seconds": m["seconds"],
         "converged": int(run.result.converged.sum()), "n_top": m["n_top"], "sample_classes": m["sample_classes"],
         "real_classes": m["real_classes"], "sample_confident": m["sample_confident_rate"],
         "start_confident": m["start_confident_rate"], "real_confident": m["real_confident_rate"]}
    f.update(dict.fromkeys(("top_label", "kept", "real_kept", "confident", "confident_kept", "off", "off_unsure",
                            "off_confident_labels", "vit_kept"), None))
    if run.predicted is not None:  # the judge's labels of the samples: the most common one and its share
        counts = torch.bincount(run.predicted, minlength=len(world.class_names or [])).tolist()
        top = max(range(len(counts)), key=counts.__getitem__)
        f["top_label"] = f"{_class_word(world, top)} ({_of(counts[top], n)})"
    if run.predicted is not None and d is not None:
        sure, inside = run.confidence >= CONFIDENT, run.predicted == d  # (N,), (N,)
        off_sure = sorted({int(c) for c in run.predicted[sure & ~inside]})
        f.update(kept=int(inside.sum()), real_kept=int((run.top_predicted == d).sum()), confident=int(sure.sum()),
                 confident_kept=int((sure & inside).sum()), off=int((~inside).sum()),
                 off_unsure=int((~sure & ~inside).sum()),
                 off_confident_labels=[_class_word(world, c) for c in off_sure])
    if m["sample_vit_concept_rate"] is not None:
        f["vit_kept"] = round(m["sample_vit_concept_rate"] * n)
    return f


def _model_values(world, part: ViTSAE, quality: dict) -> dict:
    """The data, the ViT and the SAE: sizes, architecture, accuracies and the SAE's quality."""
    body = vit_body(part.vit)
    first = lambda v: int(v[0] if isinstance(v, (tuple, list)) else v)  # noqa: E731  timm: (h, w) or one int
    held_out = quality["n_test_tokens"] // quality["tokens_per_image"]
    acc = part.record.get("vit_test_accuracy")
    judge_acc = NO_NUMBER
    if world.has("judge") and world.has("test_images"):
        with torch.no_grad():
            x, y = world.test_images, world.test_labels
            b = world.batch_size or 256
            pred = torch.cat([world.judge(x[i:i + b].to(world.device)).argmax(1).cpu() for i in range(0, len(x), b)])
        judge_acc = float((pred == y).float().mean())
    s = part.sae
    n_classes = len(world.class_names) if world.class_names and world.has("unit_concepts") else None  # selectivity
    return {
        "image_side": int(world.images.shape[-1]), "n_train": len(world.images), "n_held_out": held_out,
        "vit_input_side": first(body.patch_embed.img_size), "patch_size": first(body.patch_embed.patch_size),
        "n_patches": int(body.patch_embed.num_patches), "vit_depth": len(body.blocks),
        "vit_width": int(body.embed_dim), "n_tokens": quality["tokens_per_image"],
        "vit_accuracy": NO_NUMBER if acc is None else float(acc), "judge_accuracy": judge_acc,
        "sae_layer": part.layer, "sae_kind_name": Text("ReLU" if s.kind == "relu" else f"TopK (k = {s.k})"),
        "d_sae": s.d_sae, "d_in": s.d_in, "var_explained": quality["variance_explained"], "l0": quality["l0"],
        "dead_fraction": quality["dead_fraction"],
        "n_classes": NOT_MEASURED if n_classes is None else n_classes,
        "chance_selectivity": NO_NUMBER if n_classes is None else 1 / n_classes,
    }


def _judge_values(facts: Sequence[dict]) -> dict:
    """How the judge labels the samples: kept in the class, spread over classes, confidence, leaving the class."""
    labelled = all(f["kept"] is not None for f in facts)  # a judge, and every feature's concept is a class
    of = lambda k, n: NOT_MEASURED if not labelled else words(_of(f[k], f[n]) for f in facts)  # noqa: E731
    v = {
        "kept": of("kept", "n"), "real_kept": of("real_kept", "n_top"),
        "confident_kept": of("confident_kept", "confident"),
        "top_labels": _list(facts, "top_label"), "sample_classes": _list(facts, "sample_classes"),
        "real_classes": _list(facts, "real_classes"),
        "sample_confident": _list(facts, "sample_confident", _pct),
        "start_confident": _list(facts, "start_confident", _pct),
        "real_confident": _list(facts, "real_confident", _pct),
        "n_spread": NOT_MEASURED, "conf_vs_start": NOT_MEASURED, "vit_kept": NOT_MEASURED, "n_vit_above": NOT_MEASURED,
        "n_off": NOT_MEASURED, "n_off_unsure": NOT_MEASURED, "n_off_confident": NOT_MEASURED,
        "off_share_word": NOT_MEASURED, "off_confident_labels": NOT_MEASURED,
    }
    if all(f["sample_classes"] is not None for f in facts):
        v["n_spread"] = sum(f["sample_classes"] > f["real_classes"] for f in facts)
    if all(f["sample_confident"] is not None and f["start_confident"] is not None for f in facts):
        mean = lambda k: sum(f[k] for f in facts) / len(facts)  # noqa: E731
        v["conf_vs_start"] = compare(mean("sample_confident"), mean("start_confident"))
    if labelled and all(f["vit_kept"] is not None for f in facts):
        v["vit_kept"] = of("vit_kept", "n")
        v["n_vit_above"] = sum(f["vit_kept"] > f["kept"] for f in facts)
    if labelled:
        n_off, unsure = sum(f["off"] for f in facts), sum(f["off_unsure"] for f in facts)
        share = ("none" if not unsure else "all" if unsure == n_off else "most" if 2 * unsure > n_off else
                 "half" if 2 * unsure == n_off else "a minority")
        v.update(n_off=n_off, n_off_unsure=unsure, n_off_confident=n_off - unsure, off_share_word=Text(share),
                 off_confident_labels=Text("; ".join(f"{f['id']}: {words(f['off_confident_labels']) or 'none'}"
                                                     for f in facts)))
    return v


def prose_values(world, part: ViTSAE, quality: dict, runs: Sequence[FeatureRun], settings: dict,
                 parameters: dict) -> dict:
    """Every value the SAE chapter's prose states, from this run: ``quality`` from
    :func:`~equidiff.chapters.sae.measure_quality`, ``runs`` from :func:`~equidiff.chapters.sae.run_feature`,
    ``settings`` from :func:`~equidiff.chapters.sae.run_settings`, ``parameters`` the notebook's
    (``notebook_parameters(globals(), "03_sae")``). Glue the result with :func:`equidiff.report.glue.glue_all`."""
    if not runs:
        raise ValueError("runs must hold at least one FeatureRun (the chosen features' runs), got none")
    facts = [feature_facts(world, r) for r in runs]
    l2 = [f["l2_mean"] for f in facts]
    rates = [f["firing_rate"] for f in facts]
    steps = [f["steps"] for f in facts]
    v = _model_values(world, part, quality)
    v.update({
        "seed": parameters["seed"], "optimizer": Text(parameters["optimizer"]),
        "readout_name": Text(READOUT_NAMES.get(parameters["readout"], parameters["readout"])),
        "steps_budget": settings["steps"], "n_samples": settings["n_samples"],
        "tau": parameters["tau"], "confidence": CONFIDENT, "n_top": facts[0]["n_top"],
        "n_chosen": len(facts), "chosen_ids": words(f["id"] for f in facts),
        "concepts": _list(facts, "concept", lambda c: f"“{c}”"),
        "selectivities": _list(facts, "selectivity", lambda s: f"{s:.2f}"),
        "rate_range": Text(_pct(min(rates)) if _pct(min(rates)) == _pct(max(rates)) else
                           f"{_pct(min(rates))}–{_pct(max(rates))}"),
        "n_converged": sum(f["converged"] for f in facts), "n_total": sum(f["n"] for f in facts),
        "l2_means": words(f"{x:.2g}" for x in l2), "l2_relative": words(_pct2(f["l2_relative"]) for f in facts),
        "median_steps": words("none converged" if s is None else f"{s:.0f}" for s in steps),
        "seconds_max": max(f["seconds"] for f in facts),
        "l2_vs_thesis": (compare(max(l2), THESIS_L2) if max(l2) < THESIS_L2 or min(l2) > THESIS_L2
                         else Text("on both sides of")),
    })
    v.update(_judge_values(facts))
    return v
