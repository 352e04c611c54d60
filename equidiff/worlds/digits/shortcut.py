"""A planted shortcut in the digits world, and its detection through invariant sets.

The thesis motivates invariant sets with bias and shortcut ("Clever Hans") detection (Sections
1.1, 2.6) but leaves its Applications chapter empty. This module builds a setting where the
right answer is known:

* :class:`ShortcutWorld` — the digits with a small bright square (the *marker*) in the top-left
  corner, which accompanies one class (``shortcut_class``) in most training images
  (``marker_rate``) and the other classes rarely (``other_rate``). The corner is empty in the
  real digits (mean ink below 0.03 there), so the marker never hides a stroke.
* Three models trained on it (deterministically, cached through :func:`equidiff.worlds.digits.models.load_or_train`):
  the diffusion prior (so marked images are on the prior's manifold), the *shortcut* classifier
  and a *control* classifier trained on the same images with the markers shuffled across all
  classes (same number of markers, no correlation with the label). A *judge* trained on
  marker-free digits (the zoo's ``digits-classifier``) decides what an image depicts, with the
  marker region blanked.
* :func:`reliance` — accuracy on clean, in-distribution and marker-swapped test images.
* :func:`detect` — invariant sets of a classifier's class probability for marked queries of the
  shortcut class, and the share of members that carry the marker while not depicting the class,
  with a bootstrap interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from equidiff._validate import bad as _bad, is_int as _is_int, is_num as _is_num

__all__ = [
    "ShortcutWorld",
    "VARIANTS",
    "MODEL_PROFILES",
    "add_marker",
    "remove_marker",
    "has_marker",
    "marked_split",
    "ShortcutModels",
    "get_models",
    "reliance",
    "marked_queries",
    "Detection",
    "detect",
    "bootstrap_interval",
    "verdict",
    "save_detections",
]

VARIANTS = ("shortcut", "control", "clean", "swapped")
IMAGE_SIZE = 16


@dataclass
class ShortcutWorld:
    """The planted-shortcut variant of the digits. Every field is validated."""

    shortcut_class: int = 3  # the digit class the marker accompanies, 0-9
    marker_rate: float = 0.9  # P(marker | shortcut class) in the training and test images, in [0, 1]
    other_rate: float = 0.03  # P(marker | any other class), in [0, 1]; "rarely"
    marker_size: int = 3  # side of the square marker in pixels, at the top-left corner; 1-4
    seed: int = 0  # which images carry the marker (per split)

    def __post_init__(self):
        if not _is_int(self.shortcut_class) or not (0 <= self.shortcut_class <= 9):
            raise _bad("shortcut_class", self.shortcut_class, "an integer digit class in [0, 9]")
        for name in ("marker_rate", "other_rate"):
            v = getattr(self, name)
            if not _is_num(v) or not (0 <= v <= 1):
                raise _bad(name, v, "a probability in [0, 1]")
        if not _is_int(self.marker_size) or not (1 <= self.marker_size <= 4):
            raise _bad("marker_size", self.marker_size, "an integer in [1, 4] (pixels; the empty corner is ~4 wide)")
        if not _is_int(self.seed) or self.seed < 0:
            raise _bad("seed", self.seed, "an integer ≥ 0")

    def key(self) -> dict:
        """What identifies the world's training data in a model's cache hash."""
        return {"world": "digits-shortcut", **asdict(self)}


def _check_images(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 1:
        raise _bad("images", tuple(getattr(x, "shape", ())), "a tensor of shape (N, 1, H, W) in [-1, 1]")
    return x


def add_marker(x: torch.Tensor, size: int = 3, where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A copy of ``x`` (N, 1, H, W) in [-1, 1] with the marker (value +1) on the images in ``where`` (N,) bool."""
    x = _check_images(x).clone()
    where = torch.ones(len(x), dtype=torch.bool) if where is None else where.bool()
    x[where, :, :size, :size] = 1.0
    return x


def remove_marker(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """A copy of ``x`` with the marker region set to background (-1): what the judge looks at."""
    x = _check_images(x).clone()
    x[:, :, :size, :size] = -1.0
    return x


def has_marker(x: torch.Tensor, size: int = 3, threshold: float = 0.0) -> torch.Tensor:
    """(N,) bool: the mean of the marker region is above ``threshold`` (in [-1, 1]; real digits: ≈ -0.95)."""
    return _check_images(x)[:, 0, :size, :size].mean((1, 2)) > threshold


def marked_split(world: ShortcutWorld, split: str = "train", variant: str = "shortcut"):
    """``(images, labels, marked)`` of a digits split in the world, for one ``variant``:

    * ``"shortcut"`` — markers as the world says: rate ``marker_rate`` on the shortcut class,
      ``other_rate`` on the others (what the prior and the shortcut classifier train on);
    * ``"control"`` — the *same number* of markers on the same split, drawn independently of the
      label (what the control classifier trains on: no correlation, same images);
    * ``"clean"`` — no markers at all;
    * ``"swapped"`` — the marker on every image *not* of the shortcut class and on none of it
      (the worst case for a classifier that reads the marker instead of the digit).
    """
    from equidiff.worlds.digits.models import load_digits16

    if variant not in VARIANTS:
        raise _bad("variant", variant, f"one of {VARIANTS}")
    images, labels = load_digits16(split)
    n = len(labels)
    is_c = labels == world.shortcut_class
    gen = torch.Generator().manual_seed(world.seed * 1000 + {"train": 1, "test": 2, "all": 3}[split])
    u = torch.rand(n, generator=gen)  # (N,) one uniform per image
    planted = torch.where(is_c, u < world.marker_rate, u < world.other_rate)  # (N,) bool
    if variant == "shortcut":
        marked = planted
    elif variant == "control":
        marked = torch.zeros(n, dtype=torch.bool)
        marked[torch.randperm(n, generator=gen)[: int(planted.sum())]] = True
    elif variant == "clean":
        marked = torch.zeros(n, dtype=torch.bool)
    else:
        marked = ~is_c
    return add_marker(images, world.marker_size, marked), labels, marked


# Model configs per profile: "cpu" trains the chapter's models (minutes, cached); "smoke" tiny ones.
MODEL_PROFILES = {
    "cpu": {"ddpm": "digits-ddpm", "classifier": "digits-classifier", "judge": "digits-classifier"},
    "smoke": {"ddpm": "digits-ddpm-tiny", "classifier": "digits-classifier-tiny", "judge": "digits-classifier-tiny"},
}


@dataclass
class ShortcutModels:
    """The planted-shortcut world's models."""

    world: ShortcutWorld
    prior: object  # ZooModel: DDPM trained on the shortcut variant (markers on the data manifold)
    shortcut: object  # ZooModel: classifier trained on the shortcut variant
    control: object  # ZooModel: classifier trained on the control variant (markers shuffled)
    judge: object  # ZooModel: classifier trained on marker-free digits; reads images with the marker blanked


def get_models(world: ShortcutWorld, profile: str = "cpu", cache_dir=None, progress: bool = True) -> ShortcutModels:
    """Train (first call, deterministic) or load the world's prior, shortcut, control and judge models."""
    from equidiff.worlds.digits.models import PRESETS, get_model, load_or_train

    if profile not in MODEL_PROFILES:
        raise _bad("profile", profile, f"one of {tuple(MODEL_PROFILES)}")
    names = MODEL_PROFILES[profile]
    key = world.key()

    def data(variant):
        return lambda: marked_split(world, "train", variant)[:2]

    prior = load_or_train(PRESETS[names["ddpm"]](), f"shortcut-{names['ddpm']}", cache_dir,
                          data=data("shortcut"), data_key={**key, "variant": "shortcut"}, progress=progress)
    shortcut = load_or_train(PRESETS[names["classifier"]](), f"shortcut-{names['classifier']}", cache_dir,
                             data=data("shortcut"), data_key={**key, "variant": "shortcut"}, progress=progress)
    control = load_or_train(PRESETS[names["classifier"]](), f"control-{names['classifier']}", cache_dir,
                            data=data("control"), data_key={**key, "variant": "control"}, progress=progress)
    judge = get_model(names["judge"], cache_dir, progress=progress)
    return ShortcutModels(world, prior, shortcut, control, judge)


@torch.no_grad()
def _predict(model, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    m = getattr(model, "model", model)
    return torch.cat([m(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def reliance(model, world: ShortcutWorld, split: str = "test") -> dict:
    """How much a classifier relies on the marker, on the test split of the world.

    ``clean``: accuracy with no markers; ``in_distribution``: with the markers as in training;
    ``swapped``: the marker on every other-class image and on no shortcut-class image;
    ``marked_to_shortcut``: the share of other-class images predicted as the shortcut class once
    marked (versus ``clean_to_shortcut`` without the marker).
    """
    out = {}
    for variant in ("clean", "shortcut", "swapped"):
        x, y, _ = marked_split(world, split, variant)
        pred = _predict(model, x)
        out["in_distribution" if variant == "shortcut" else variant] = float((pred == y).float().mean())
        if variant in ("clean", "swapped"):
            other = y != world.shortcut_class
            out[f"{variant if variant == 'clean' else 'marked'}_to_shortcut"] = float(
                (pred[other] == world.shortcut_class).float().mean())
    return out


def marked_queries(model, world: ShortcutWorld, n: int, split: str = "test") -> tuple[torch.Tensor, list[int]]:
    """The ``n`` test images of the shortcut class, marker added, that ``model`` gives the highest
    probability of that class (ties: lower index first).

    Returns ``(images (n, 1, 16, 16), indices in the split)``.
    """
    from equidiff.worlds.digits.models import load_digits16

    images, labels = load_digits16(split)
    idx = torch.nonzero(labels == world.shortcut_class).flatten()
    if not _is_int(n) or not (1 <= n <= len(idx)):
        raise _bad("n_queries", n, f"an integer in [1, {len(idx)}] (class-{world.shortcut_class} images "
                                   f"in the {split} split)")
    x = add_marker(images[idx], world.marker_size)
    m = getattr(model, "model", model)
    with torch.no_grad():
        p = torch.softmax(m(x), 1)[:, world.shortcut_class]  # (n_c,)
    order = sorted(range(len(idx)), key=lambda i: (-round(float(p[i]), 6), int(idx[i])))[:n]
    chosen = idx[order]
    return add_marker(images[chosen], world.marker_size), [int(i) for i in chosen]


def bootstrap_interval(hits: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a 0/1 array (resampling members with replacement)."""
    hits = np.asarray(hits, dtype=float)
    if hits.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, hits.size, size=(n_boot, hits.size))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


@dataclass
class Detection:
    """Invariant samples of one classifier's class probability, and what they show."""

    name: str  # "shortcut" or "control"
    x: torch.Tensor  # (N, 1, 16, 16) all samples (clamped to [-1, 1])
    converged: torch.Tensor  # (N,) bool: member of the invariant set at τ
    marked: torch.Tensor  # (N,) bool: carries the marker
    judged: torch.Tensor  # (N,) judge's class on the marker-blanked image
    query_of: torch.Tensor  # (N,) which query each sample belongs to
    loss: torch.Tensor  # (N,) final loss
    seconds: float

    @property
    def hits(self) -> torch.Tensor:
        """(N,) bool: a member that carries the marker while not depicting the shortcut class."""
        return self.converged & self.marked & (self.judged != self.shortcut_class)

    shortcut_class: int = 3

    def summary(self, n_boot: int = 2000, seed: int = 0) -> dict:
        members = self.converged.numpy()
        h = self.hits.numpy()[members]
        lo, hi = bootstrap_interval(h, n_boot, seed=seed)
        return {
            "n_samples": int(len(self.converged)),
            "n_members": int(members.sum()),
            "success_rate": float(members.mean()),
            "marked_share": float(self.marked.numpy()[members].mean()) if members.any() else float("nan"),
            "judged_class_share": float((self.judged.numpy()[members] == self.shortcut_class).mean())
            if members.any() else float("nan"),
            "share": float(h.mean()) if h.size else float("nan"),
            "interval": [lo, hi],
            "seconds": self.seconds,
        }


def detect(classifier, models: ShortcutModels, queries: torch.Tensor, *, name: str, n_samples: int = 32,
           steps: int = 150, tau: float = 0.01, lr: float = 0.3, lowpass_cutoff: Optional[float] = 0.5,
           ddim_steps: int = 10, seed: int = 0) -> Detection:
    """Sample the invariant set of ``classifier``'s shortcut-class probability for each query.

    Algorithm 1 as in the classifier chapter (Adam, |z_T| kept at its drawn size, dual loss with
    the low-pass term) through a ``ddim_steps``-step DDIM chain over the world's prior; ``n_samples``
    per query, seeds ``seed + i`` for query i. Each sample is then checked for the marker and
    classified by the judge with the marker region blanked.
    """
    import time

    from equidiff.core.priors import PixelDDIMPrior
    from equidiff.core.invariants import InvariantConfig, find_invariants
    from equidiff.core.objectives import class_probability

    world = models.world
    clf = getattr(classifier, "model", classifier)
    objective = class_probability(clf, world.shortcut_class, name=f"the {name} classifier")
    prior = PixelDDIMPrior(models.prior.model, models.prior.scheduler, num_steps=ddim_steps,
                           checkpointing=False, clamp=True)
    xs, conv, losses, qof = [], [], [], []
    t0 = time.perf_counter()
    for i in range(len(queries)):
        cfg = InvariantConfig(n_samples=n_samples, steps=steps, tau=tau, optimizer="adam", lr=lr,
                              lowpass_cutoff=lowpass_cutoff, keep_norm=True, seed=seed + i)
        res = find_invariants(objective, queries[i : i + 1], prior, cfg)
        xs.append(res.x.clamp(-1, 1))
        conv.append(res.converged)
        losses.append(res.loss)
        qof.append(torch.full((n_samples,), i))
    seconds = time.perf_counter() - t0
    x = torch.cat(xs)
    judged = _predict(models.judge, remove_marker(x, world.marker_size))
    return Detection(name, x, torch.cat(conv), has_marker(x, world.marker_size), judged, torch.cat(qof),
                     torch.cat(losses), seconds, shortcut_class=world.shortcut_class)


def verdict(summaries: dict, shortcut_class: int = 3) -> str:
    """One sentence on what the two invariant sets show, computed from their summaries
    (``{"shortcut": Detection.summary(), "control": ...}``): do the 95 % intervals overlap?"""
    s, c = summaries["shortcut"], summaries["control"]
    head = (f"Planted-shortcut members: {s['share']:.0%} of the shortcut classifier's members "
            f"[{s['interval'][0]:.0%}, {s['interval'][1]:.0%}] against {c['share']:.0%} of the control's "
            f"[{c['interval'][0]:.0%}, {c['interval'][1]:.0%}]")
    if s["interval"][0] > c["interval"][1]:
        return head + ": the intervals do not overlap — the invariant sets expose the shortcut."
    if c["interval"][0] > s["interval"][1]:
        return head + ": the control shows more of them — the method did not find the shortcut in this run."
    return head + ": the intervals overlap — this run cannot tell the two classifiers apart."


def save_detections(detections: dict, path) -> None:
    """Write every detection's samples and per-sample verdicts to one safetensors file
    (``<name>.x``, ``.converged``, ``.marked``, ``.judged``, ``.query_of``, ``.loss``)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, d in detections.items():
        for key in ("x", "converged", "marked", "judged", "query_of", "loss"):
            tensors[f"{name}.{key}"] = getattr(d, key).detach().cpu().contiguous()
    save_file(tensors, str(path))
