"""A planted shortcut in the digits world: the variant of the world the applications chapter searches.

The thesis motivates invariant sets with bias and shortcut ("Clever Hans") detection (Sections
1.1, 2.6) but leaves its Applications chapter empty. This module builds a setting where the
right answer is known:

* :class:`ShortcutWorld` — the digits with a small bright square (the *marker*) in the top-left
  corner, which accompanies one class (``shortcut_class``) in most training images
  (``marker_rate``) and the other classes rarely (``other_rate``). The corner is nearly empty in
  the real digits (a few dozen of the 5,000 MNIST digits have some stroke there, which the marker
  then covers; the applications chapter measures it).
* Three models trained on it (deterministically, cached through :func:`equidiff.worlds.digits.models.load_or_train`;
  :func:`get_models`, or ``world.part("shortcut", **plant)`` of the digits :class:`~equidiff.worlds.base.World`):
  the diffusion prior (so marked images are on the prior's manifold), the *shortcut* classifier
  and a *control* classifier trained on the same images with the markers shuffled across all
  classes (same number of markers, no correlation with the label). A *judge* trained on
  marker-free digits (the zoo's ``digits-classifier``) decides what an image depicts, with the
  marker region blanked.
* :func:`reliance` — accuracy on clean, in-distribution and marker-swapped test images;
  :func:`marked_queries` — the marked queries of the shortcut class.

Detection through invariant sets (the chapter itself) is :mod:`equidiff.chapters.applications`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from equidiff._validate import bad as _bad, check_images, is_int as _is_int, is_num as _is_num
from equidiff.core.priors import PixelDDIMPrior
from equidiff.worlds.digits.data import load_digits16
from equidiff.worlds.digits.models import get_model, load_or_train
from equidiff.worlds.digits.recipes import PRESETS as RECIPES

__all__ = [
    "ShortcutWorld",
    "VARIANTS",
    "add_marker",
    "remove_marker",
    "has_marker",
    "marked_split",
    "ShortcutModels",
    "get_models",
    "reliance",
    "marked_queries",
    "predict",
]

VARIANTS = ("shortcut", "control", "clean", "swapped")


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


def add_marker(x: torch.Tensor, size: int = 3, where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A copy of ``x`` (N, 1, H, W) in [-1, 1] with the marker (value +1) on the images in ``where`` (N,) bool."""
    x = check_images(x).clone()
    where = torch.ones(len(x), dtype=torch.bool) if where is None else where.bool()
    x[where, :, :size, :size] = 1.0
    return x


def remove_marker(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """A copy of ``x`` with the marker region set to background (-1): what the judge looks at."""
    x = check_images(x).clone()
    x[:, :, :size, :size] = -1.0
    return x


def has_marker(x: torch.Tensor, size: int = 3, threshold: float = 0.0) -> torch.Tensor:
    """(N,) bool: the mean of the marker region is above ``threshold`` (in [-1, 1]; real digits: ≈ -0.95)."""
    return check_images(x)[:, 0, :size, :size].mean((1, 2)) > threshold


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


@dataclass
class ShortcutModels:
    """The planted-shortcut world's models."""

    world: ShortcutWorld
    prior: object  # ZooModel: DDPM trained on the shortcut variant (markers on the data manifold)
    shortcut: object  # ZooModel: classifier trained on the shortcut variant
    control: object  # ZooModel: classifier trained on the control variant (markers shuffled)
    judge: object  # ZooModel: classifier trained on marker-free digits; reads images with the marker blanked

    def make_prior(self, ddim_steps: int):
        """The deterministic ``ddim_steps``-step DDIM chain over the marked world's DDPM (outputs
        clamped to [-1, 1], not checkpointed: 16×16 images are small)."""
        return PixelDDIMPrior(self.prior.model, self.prior.scheduler, num_steps=ddim_steps, checkpointing=False,
                              clamp=True)


def get_models(world: ShortcutWorld, presets: dict, cache_dir=None, progress: bool = True) -> ShortcutModels:
    """Train (first call, deterministic) or load the world's prior, shortcut, control and judge models.

    ``presets``: the digits World's preset names of its profile (``{"classifier": ..., "ddpm": ...}``,
    :data:`equidiff.worlds.digits.world.PRESETS`): the marked world's classifiers use the same recipe,
    its prior the recipe ``presets["shortcut_ddpm"]`` (default: ``presets["ddpm"]``; the cpu world keeps
    the smaller first prior there), the judge is that classifier itself (trained on marker-free digits).
    The prior's folder is ``shortcut-<presets["ddpm"]>-<hash of recipe and data>``.
    """
    names = (presets.get("classifier"), presets.get("ddpm"), presets.get("shortcut_ddpm", presets.get("ddpm"))) \
        if isinstance(presets, dict) else (None,)
    if any(not isinstance(n, str) or n not in RECIPES for n in names):
        raise _bad("presets", presets, f"a dict with 'classifier' and 'ddpm' preset names among {tuple(RECIPES)} "
                                       "(and optionally 'shortcut_ddpm', the prior's recipe)")
    clf, ddpm, recipe = names
    key = world.key()

    def data(variant):
        return lambda: marked_split(world, "train", variant)[:2]

    prior = load_or_train(RECIPES[recipe](), f"shortcut-{ddpm}", cache_dir,
                          data=data("shortcut"), data_key={**key, "variant": "shortcut"}, progress=progress)
    shortcut = load_or_train(RECIPES[clf](), f"shortcut-{clf}", cache_dir,
                             data=data("shortcut"), data_key={**key, "variant": "shortcut"}, progress=progress)
    control = load_or_train(RECIPES[clf](), f"control-{clf}", cache_dir,
                            data=data("control"), data_key={**key, "variant": "control"}, progress=progress)
    judge = get_model(clf, cache_dir, progress=progress)
    return ShortcutModels(world, prior, shortcut, control, judge)


@torch.no_grad()
def predict(model, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """(N,) the class ``model`` (a ZooModel or a module) gives each image, ``batch`` at a time."""
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
        pred = predict(model, x)
        out["in_distribution" if variant == "shortcut" else variant] = float((pred == y).float().mean())
        if variant in ("clean", "swapped"):
            other = y != world.shortcut_class
            out[f"{variant if variant == 'clean' else 'marked'}_to_shortcut"] = float(
                (pred[other] == world.shortcut_class).float().mean())
    return out


def marked_queries(model, world: ShortcutWorld, n: int, split: str = "test") -> tuple[torch.Tensor, list[int]]:
    """The ``n`` test images of the shortcut class, marker added, that ``model`` is surest of: the
    highest log-odds log(p / (1 − p)) of that class, computed from the logits and rounded to 0.01
    (ties: lower index first; the smoke profile's tiny classifier gives nearly every image the same).

    Not the probability itself: for the best candidates it is 1 − 1e-7 or closer, where float32
    rounds and different CPUs disagree in the last bit (the build on one machine chose test digits
    #310 and #319, on another #319 and #356). The log-odds of those candidates are about 14–15,
    apart by more than 0.01 for the first four, far above the kernels' 1e-5 differences.

    Returns ``(images (n, 1, 16, 16), indices in the split)``.
    """
    images, labels = load_digits16(split)
    idx = torch.nonzero(labels == world.shortcut_class).flatten()
    if not _is_int(n) or not (1 <= n <= len(idx)):
        raise _bad("n_queries", n, f"an integer in [1, {len(idx)}] (class-{world.shortcut_class} images "
                                   f"in the {split} split)")
    x = add_marker(images[idx], world.marker_size)
    m = getattr(model, "model", model)
    with torch.no_grad():
        z = m(x).double()  # (n_c, classes) logits
    c = world.shortcut_class
    others = torch.cat([z[:, :c], z[:, c + 1:]], 1)  # (n_c, classes − 1)
    log_odds = z[:, c] - torch.logsumexp(others, 1)  # (n_c,) log(p / (1 − p)), stable near p = 1
    order = sorted(range(len(idx)), key=lambda i: (-round(float(log_odds[i]), 2), int(idx[i])))[:n]
    chosen = idx[order]
    return add_marker(images[chosen], world.marker_size), [int(i) for i in chosen]
