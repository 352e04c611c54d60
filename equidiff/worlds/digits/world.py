"""The embedded digits world as a :class:`~equidiff.worlds.base.World` (profiles ``cpu`` and ``smoke``).

``cpu``: the zoo's trained digits ResNet, DDPM (and, on first use, ViT and shortcut models);
``smoke``: the same code path with the ``*-tiny`` presets, so tests never train a full model.
"""

from __future__ import annotations

import torch

from equidiff.core.metrics import FIDResult, feature_fid
from equidiff.core.priors import PixelDDIMPrior
from equidiff.worlds.base import World
from equidiff.worlds.settings import SETTINGS
from equidiff.worlds.digits import models as zoo

# preset names per profile (one table for every chapter)
PRESETS = {
    "cpu": {"classifier": "digits-classifier", "ddpm": "digits-ddpm", "vit": "digits-vit"},
    "smoke": {"classifier": "digits-classifier-tiny", "ddpm": "digits-ddpm-tiny", "vit": "digits-vit-tiny"},
}
NEURON_LAYER = "layer4.0.act2"  # last stage of the digits ResNet; its input is the pre-activation map


def _digits_world(profile: str, cache_dir=None, progress: bool = False, **unknown) -> World:
    if unknown:
        name = sorted(unknown)[0]
        raise ValueError(f"{name} is not a parameter of the {profile!r} world (a parameter of profile 'paper' "
                         f"only?); leave it None (got {unknown[name]!r})")
    names = PRESETS[profile]
    clf = zoo.get_model(names["classifier"], cache_dir, progress=progress)
    ddpm = zoo.get_model(names["ddpm"], cache_dir, progress=progress)
    train_x, train_y = zoo.load_digits16("train")
    test_x, test_y = zoo.load_digits16("test")

    def make_prior(ddim_steps: int, checkpointing: bool = False, clamp: bool = False):
        return PixelDDIMPrior(ddpm.model, ddpm.scheduler, num_steps=ddim_steps, checkpointing=checkpointing,
                              clamp=clamp)

    def fid(samples: torch.Tensor, real: torch.Tensor, figure: str) -> FIDResult:
        return FIDResult(figure, feature_fid(clf.model, samples, real), features="digits classifier, pooled",
                         n_samples=len(samples), n_reference=len(real))

    def vit(preset: str | None = None):
        return zoo.get_model(preset or names["vit"], cache_dir, progress=progress)

    return World(
        name=profile,
        description=f"scikit-learn digits, 16×16; presets {names}",
        classifier=clf.model, images=train_x, labels=train_y, test_images=test_x, test_labels=test_y,
        make_prior=make_prior, fid=fid, judge=clf.model, class_names=[str(d) for d in range(10)],
        neuron_layer=NEURON_LAYER, neuron_read="input",
        defaults=SETTINGS[profile],
        record={"world": profile, "presets": dict(names)},
        loaders={"vit": vit, "zoo": lambda: {"classifier": clf, "ddpm": ddpm}},
        params={"cache_dir": cache_dir} if cache_dir is not None else {},
    )


def cpu_world(**params) -> World:
    """The digits world with the chapter-size models (trained once, cached)."""
    return _digits_world("cpu", **params)


def smoke_world(**params) -> World:
    """The digits world with the tiny presets (trained in seconds): for tests."""
    return _digits_world("smoke", **params)
