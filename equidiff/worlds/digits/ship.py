"""The shipped models of the embedded world: trained once by ``make models``, committed in ``data/models``.

``make models`` (``python -m equidiff.worlds.digits.ship --retrain``) trains every model the
default (``cpu``) path of the book needs from its recipe — the digits classifier (the judge), the
DDPM prior, the ViT and its SAE, and the planted-shortcut world's DDPM and shortcut / control
classifiers — measures each, and writes a ``MODEL_CARD.md`` into each folder and
``data/models/manifest.json`` (folder → preset, kind, card and the sha256 of every file). It trains
into ``data/models/.retrain/`` and moves the folders into place only when all are trained and the
prior passes its gate, so a failed or interrupted retraining keeps the shipped models; the DDPMs
checkpoint there every 500 steps, so running ``make models`` again after a kill continues where it
stopped. ``--cards`` only measures the folders already in ``data/models`` and rewrites the cards and
the manifest.

The prior's gate (issue 15): of ``n`` unconditional 10-step DDIM samples (η = 0, seeded),
(1) a share ≥ :data:`GATE_SHARE` gets a judge confidence ≥ 0.9; (2) the samples are not copies of
training digits: the share of samples closer (pixel L2) to their nearest training digit than the
closest :data:`COPY_QUANTILE` of test digits are to theirs is at most :data:`GATE_COPIES`
(a prior that reproduced training digits would put far more samples there). Their FID in the
judge's pooled features against the test split is reported beside the real-data floor (the FID of
as many training digits against the test split).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from equidiff import cache
from equidiff._validate import bad
from equidiff.core.metrics import feature_fid
from equidiff.sae.training import SAETrainConfig
from equidiff.training import machine
from equidiff.worlds import circles
from equidiff.worlds.digits.data import SOURCE, load_digits16
from equidiff.worlds.digits.models import quality_gate, get_model
from equidiff.worlds.digits.sae import get_sae
from equidiff.worlds.digits.shortcut import ShortcutWorld, get_models as shortcut_models, remove_marker, has_marker
from equidiff.worlds.settings import SETTINGS

__all__ = ["CONFIDENT", "GATE_SHARE", "GATE_COPIES", "COPY_QUANTILE", "PriorQuality", "prior_quality", "machine", "train_all",
           "write_cards", "verify_shipped", "main"]

CONFIDENT = 0.9  # the judge confidence that counts a sample as a recognisable digit
GATE_SHARE = 0.95  # share of unoptimised samples the judge must label with confidence ≥ 0.9
GATE_COPIES = 0.10  # most samples allowed closer to the training set than the closest 5% of test digits
COPY_QUANTILE = 0.05  # the test-to-train nearest-neighbour quantile that defines "closer than real data"
PROFILES = ("cpu", "smoke")


@dataclass
class PriorQuality:
    """How good a DDPM's unconditional samples are, judged by a classifier (see the module docstring)."""

    n: int  # samples
    share_confident: float  # share with judge confidence ≥ 0.9
    share_confident_real: float  # the same share for the real test digits (the ceiling a perfect prior reaches)
    mean_confidence: float
    class_counts: list  # samples per judge label 0..9
    fid: float  # in the judge's pooled features, against the test split
    fid_real_floor: float  # the same for n training digits (what a perfect prior would score)
    nn_sample_median: float  # median pixel L2 distance from a sample to its nearest training digit
    nn_test_median: float  # the same for the test digits
    copy_threshold: float  # the COPY_QUANTILE quantile of test-to-train distances
    share_closer_than_real: float  # share of samples with a nearest-training distance below copy_threshold
    passed: bool  # both gates hold

    def summary(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _nearest(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``(distance (n,), index (n,))``: pixel L2 distance of each row of ``x`` to its nearest row of ``ref``."""
    a, b = x.flatten(1).double(), ref.flatten(1).double()
    d = torch.cdist(a, b).min(dim=1)
    return d.values, d.indices


def prior_quality(unet, scheduler, judge, *, n: int = 1000, seed: int = 0, blank_marker: Optional[int] = None,
                  train=None, test=None, num_inference_steps: int = 10) -> tuple[PriorQuality, dict]:
    """Measure a DDPM prior against the gate; returns ``(quality, details)``, ``details`` holding what it
    measured per image: ``samples`` (n, 1, 16, 16), the judge's ``labels`` and ``confidence`` (n,),
    ``nn_sample`` / ``nn_index`` (distance to and index of each sample's nearest training image) and
    ``nn_test`` (the same distance for each test image).

    ``blank_marker``: for the planted-shortcut prior, the judge reads samples with the marker corner
    blanked (it never saw markers). ``train`` / ``test``: reference images (default: the digits splits).
    """
    report = quality_gate(unet, scheduler, judge, n=n, seed=seed, num_inference_steps=num_inference_steps,
                          threshold=CONFIDENT)
    samples = report.samples
    judged = samples if blank_marker is None else remove_marker(samples, blank_marker)
    if blank_marker is not None:
        param = next(judge.parameters())
        probs = torch.softmax(judge(judged.to(param.device, param.dtype)), dim=1).cpu()
        conf, labels = probs.max(1)
    else:
        conf, labels = report.confidence, report.labels
    train_x = load_digits16("train")[0] if train is None else train
    test_x = load_digits16("test")[0] if test is None else test
    d_sample, nn_index = _nearest(samples, train_x)
    d_test, _ = _nearest(test_x, train_x)
    thr = float(torch.quantile(d_test, COPY_QUANTILE))
    share = float((conf >= CONFIDENT).float().mean())
    param = next(judge.parameters())
    with torch.no_grad():
        real_conf = torch.softmax(judge(test_x.to(param.device, param.dtype)), dim=1).max(1).values.cpu()
    closer = float((d_sample < thr).float().mean())
    g = torch.Generator().manual_seed(seed)
    floor_idx = torch.randperm(len(train_x), generator=g)[: min(n, len(train_x))]
    q = PriorQuality(
        n=n, share_confident=share, share_confident_real=float((real_conf >= CONFIDENT).float().mean()),
        mean_confidence=float(conf.mean()),
        class_counts=torch.bincount(labels, minlength=10).tolist(),
        fid=feature_fid(judge, judged, test_x), fid_real_floor=feature_fid(judge, train_x[floor_idx], test_x),
        nn_sample_median=float(d_sample.median()), nn_test_median=float(d_test.median()), copy_threshold=thr,
        share_closer_than_real=closer, passed=share >= GATE_SHARE and closer <= GATE_COPIES,
    )
    return q, {"samples": samples, "labels": labels, "confidence": conf, "nn_sample": d_sample,
               "nn_index": nn_index, "nn_test": d_test}


def _entries(profile: str, root: Path, progress: bool) -> dict:
    """Train (or load) every model of ``profile``'s default path under ``root``: ``{role: (model, extra)}``."""
    from equidiff.worlds.digits.world import PRESETS

    names = PRESETS[profile]
    s = SETTINGS[profile]["sae"]
    clf = get_model(names["classifier"], root, progress=progress)
    ddpm = get_model(names["ddpm"], root, progress=progress)
    vit = get_model(names["vit"], root, progress=progress)
    sae = get_sae(SAETrainConfig(vit=names["vit"], layer=s["layer"], kind=s["sae_kind"], expansion=s["expansion"],
                                 train_steps=s["sae_steps"], seed=0), root, progress=progress)
    world = ShortcutWorld()
    sc = shortcut_models(world, names, root, progress=progress)
    circles.load_classifier(cache_dir=root)
    circles.load_prior(cache_dir=root)
    two_d = {role: _Folder(folder, cfg, _record_info(folder)) for role, (folder, cfg) in
             circles.model_folders(root).items()}
    return {**two_d, "classifier": clf, "ddpm": ddpm, "vit": vit, "sae": sae, "shortcut_ddpm": sc.prior,
            "shortcut_classifier": sc.shortcut, "control_classifier": sc.control, "_world": world}


@dataclass
class _Folder:
    """A shipped model that is not a digits zoo model (the 2D chapter's), as the cards need it."""

    path: Path
    config: object
    info: dict


def _record_info(folder: Path) -> dict:
    stored = json.loads((folder / cache.RECORD).read_text())
    return {k: v for k, v in stored.items() if k not in ("config", "sha256")}


def _data_line(role: str, world: ShortcutWorld) -> str:
    if role == "circles_mlp":
        return "two concentric circles in the plane, sampled by the recipe (equidiff.worlds.circles)"
    if role == "toy_ddpm":
        return "scikit-learn's two moons (make_moons), sampled by the recipe (equidiff.worlds.circles)"
    train, test = len(load_digits16("train")[1]), len(load_digits16("test")[1])
    base = f"{SOURCE}; stratified split (random_state=0): {train} train / {test} test digits"
    if role.startswith("shortcut"):
        return (base + f"; planted shortcut: a {world.marker_size}×{world.marker_size} marker on "
                f"{world.marker_rate:.0%} of class {world.shortcut_class}, {world.other_rate:.0%} of the others")
    if role.startswith("control"):
        return base + "; the shortcut world's markers, shuffled across classes (control)"
    if role == "sae":
        return base + "; tokens of the ViT's residual stream on the training digits"
    return base


MACHINE_PREFIX = "- **machine**: "
NOT_RECORDED = "not recorded when it was trained"


def _machine_line(zoo, here: dict, trained_here: bool) -> str:
    """What a card says after ``- **machine**:``: the training record's machine; else what the card
    already there says (so rewriting the cards never drops a machine noted earlier); else, with
    ``trained_here``, this machine, marked as noted when the card was written; else not recorded."""
    def described(m: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in m.items())

    if zoo.info.get("machine"):
        return described(zoo.info["machine"])
    card = zoo.path / "MODEL_CARD.md"
    if card.is_file():
        for line in card.read_text().splitlines():
            if line.startswith(MACHINE_PREFIX) and line[len(MACHINE_PREFIX):] != NOT_RECORDED:
                return line[len(MACHINE_PREFIX):]
    return described({**here, "noted": "when the card was written"}) if trained_here else NOT_RECORDED


def _card(role: str, zoo, measured: dict, world: ShortcutWorld, machine_line: str) -> str:
    info = dict(zoo.info)
    cfg = asdict(zoo.config)
    lines = [f"# Model card: {zoo.path.name}", "",
             f"- **role in the book**: {role.replace('_', ' ')}",
             f"- **data**: {_data_line(role, world)}",
             f"- **recipe**: `{type(zoo.config).__name__}` "
             f"({_RECIPE_MODULE.get(role, 'equidiff.worlds.digits.recipes')}); "
             f"retrain every shipped model with `{cache.RETRAIN}`",
             f"- **steps**: {cfg.get('train_steps', cfg.get('epochs'))} at batch "
             f"{cfg.get('batch_size', cfg.get('batch', 'full'))}, seed {cfg.get('seed')}",
             f"- **wall time**: {info.get('train_seconds', float('nan')):.0f} s",
             MACHINE_PREFIX + machine_line,
             "", "## Quality", ""]
    for k, v in measured.items():
        lines.append(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}")
    lines += ["", "## Training record", "", "```json", json.dumps(info, indent=1, default=str), "```",
              "", "## Config", "", "```json", json.dumps(cfg, indent=1, default=str), "```",
              "", "## Files (sha256)", ""]
    lines += [f"- `{f}`: `{h}`" for f, h in sorted(cache.file_hashes(zoo.path, "MODEL_CARD.md").items())]
    return "\n".join(lines) + "\n"


_RECIPE_MODULE = {"sae": "equidiff.sae.training", "circles_mlp": "equidiff.worlds.circles",
                  "toy_ddpm": "equidiff.worlds.circles"}


def write_cards(profile: str = "cpu", root: Optional[Path] = None, *, progress: bool = False,
                n_quality: int = 1000, trained_here: bool = False) -> dict:
    """Measure every model of ``profile`` under ``root`` (default ``data/models``), write their cards and the
    manifest; returns the manifest's models and the prior's quality. Trains what is missing.

    A card names the machine a model was trained on from its training record, else keeps the machine its
    earlier card noted; ``trained_here`` says that models with neither were trained on this machine (the
    card says it was noted afterwards)."""
    if profile not in PROFILES:
        raise bad("profile", profile, f"one of {PROFILES}")
    root = Path(root) if root is not None else cache.SHIPPED
    entries = _entries(profile, root, progress)
    world = entries.pop("_world")
    judge = entries["classifier"].model
    here = machine()
    models, gates = {}, {}
    for role, zoo in entries.items():
        if role in ("ddpm", "shortcut_ddpm"):
            q, details = prior_quality(zoo.model, zoo.scheduler, judge, n=n_quality,
                                       blank_marker=world.marker_size if role == "shortcut_ddpm" else None)
            measured = q.summary()
            if role == "shortcut_ddpm":
                measured["share_with_marker"] = float(has_marker(details["samples"], world.marker_size).float().mean())
            gates[role] = q
        elif role == "sae":
            measured = {k: v for k, v in zoo.info.items() if isinstance(v, (int, float))}
        else:
            measured = {k: zoo.info[k] for k in ("train_accuracy", "test_accuracy", "final_loss") if k in zoo.info}
        line = _machine_line(zoo, here, trained_here)
        (zoo.path / "MODEL_CARD.md").write_text(_card(role, zoo, measured, world, line))
        models[zoo.path.name] = {"role": role, "kind": type(zoo.config).__name__, "card": "MODEL_CARD.md",
                                 "sha256": cache.file_hashes(zoo.path, "MODEL_CARD.md"), "quality": measured}
    cache.write_json(root / cache.MANIFEST, {"profile": profile, "written_on": here, "models": models})
    return {"models": models, "gates": gates}


def verify_shipped(root: Optional[Path] = None) -> list[str]:
    """Check every file the manifest lists against its sha256; returns the problems (empty: all good)."""
    root = Path(root) if root is not None else cache.SHIPPED
    path = root / cache.MANIFEST
    if not path.is_file():
        return [f"{path} is missing; `{cache.RETRAIN}` writes it"]
    problems = []
    for folder, entry in json.loads(path.read_text())["models"].items():
        for name, want in entry["sha256"].items():
            f = root / folder / name
            if not f.is_file():
                problems.append(f"{f} is missing")
            elif cache.sha256_file(f) != want:
                problems.append(f"{f} has another sha256 than the manifest says")
    return problems


def train_all(profile: str = "cpu", root: Optional[Path] = None, *, progress: bool = True) -> dict:
    """Retrain every shipped model of ``profile`` from its recipe into ``<root>/.retrain``, gate the priors,
    then move the folders into ``root`` and write cards and manifest there."""
    root = Path(root) if root is not None else cache.SHIPPED
    staging = root / ".retrain"
    t0 = time.perf_counter()
    result = write_cards(profile, staging, progress=progress)
    failed = [f"{role}: {q.summary()}" for role, q in result["gates"].items() if not q.passed and profile == "cpu"]
    if failed:
        raise RuntimeError("the retrained priors fail their gate (kept in "
                           f"{staging}, shipped models unchanged): " + "; ".join(failed))
    for folder in result["models"]:
        target = root / folder
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging / folder, target)
    for old in root.iterdir():  # folders of an earlier recipe that the manifest no longer lists
        if old.is_dir() and not old.name.startswith(".") and old.name not in result["models"]:
            shutil.rmtree(old)
    shutil.rmtree(staging, ignore_errors=True)
    out = write_cards(profile, root, progress=progress)
    out["seconds"] = time.perf_counter() - t0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m equidiff.worlds.digits.ship", description=__doc__.split("\n")[0])
    ap.add_argument("--retrain", action="store_true", help="retrain every shipped model (make models)")
    ap.add_argument("--cards", action="store_true", help="only measure the shipped models and rewrite cards")
    ap.add_argument("--trained-here", action="store_true",
                    help="with --cards: models whose record lacks the machine were trained on this one")
    ap.add_argument("--verify", action="store_true", help="check the shipped files against the manifest")
    ap.add_argument("--profile", default="cpu", choices=PROFILES)
    ap.add_argument("--root", default=None, help="models folder (default data/models)")
    a = ap.parse_args(argv)
    root = Path(a.root) if a.root else None
    if a.verify:
        problems = verify_shipped(root)
        print("\n".join(problems) or "every shipped file matches its sha256")
        return 1 if problems else 0
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = (train_all(a.profile, root) if a.retrain
           else write_cards(a.profile, root, progress=True, trained_here=a.trained_here))
    for role, q in out["gates"].items():
        print(f"{role}: judge-confident share {q.share_confident:.3f} (gate ≥ {GATE_SHARE}), FID {q.fid:.1f} "
              f"(real floor {q.fid_real_floor:.1f}), closer than real {q.share_closer_than_real:.3f} "
              f"(gate ≤ {GATE_COPIES}): {'passed' if q.passed else 'FAILED'}")
    print(f"{len(out['models'])} models, cards and manifest in {root or cache.SHIPPED}")
    return 0 if all(q.passed for q in out["gates"].values()) or a.profile == "smoke" else 1


if __name__ == "__main__":
    sys.exit(main())
