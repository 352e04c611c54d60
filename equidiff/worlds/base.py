"""One World type for every chapter, and the one registry of named worlds.

A :class:`World` bundles what a chapter needs — a classifier, a diffusion prior, real images with
their labels (or none), a judge classifier, an FID, the layer whose channels are "neurons", the
units the thesis names — and says what it lacks (:attr:`World.lacks`, capability -> reason), so a
chapter asks ``world.has("labels")`` instead of branching on the world's name. Expensive, optional
parts (a ViT, an SAE, the planted-shortcut models) are loaded on first use through
:meth:`World.part`; a factory may leave ``classifier`` or ``neuron_layer`` None and give a loader of
that name, and the field is then loaded on its first read (the paper world's ResNet-50, which the
SAE chapter never reads).

Worlds are registered by name (:func:`register_world`) and loaded by name
(:func:`equidiff.worlds.load_world`, which registers the project's own worlds): ``"cpu"`` (the embedded digits world, trained models), ``"smoke"`` (the same
world with tiny models, for tests) and ``"paper"`` (ImageNet scale: ResNet-50, latent DiT, the
user's images; GPU). The notebooks pick one with their ``profile`` parameter.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from equidiff._validate import bad

__all__ = ["World", "register_world", "registered", "CAPABILITIES"]

# What a world can have or lack. A chapter checks these with World.has / World.require.
CAPABILITIES = {
    "labels": "true class labels of the real images",
    "test_images": "held-out real images (the real-image FID floor, diversity of real images)",
    "judge": "a separate judge classifier that labels samples",
    "unit_concepts": "concept labels to measure how well a unit aligns with a concept",
    "guidance": "a pixel-space DDIM chain that one-pass guidance can steer",
    "fid": "an FID in a trained network's features",
    "vit_classes": "a ViT whose head predicts the world's classes (the ViT's own labels of samples)",
}


class _LoadedOnFirstRead:
    """A :class:`World` field a factory may leave None: its first read loads it through the
    world's ``loaders[<field name>]`` (once, kept, as :meth:`World.part` does), so a chapter that
    never reads the field never loads it."""

    def __init__(self, default=MISSING):
        self.default = default

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, world, owner=None):
        if world is None:  # the dataclass asks the class for the field's default
            if self.default is MISSING:
                raise AttributeError(self.name)  # no default: a required field
            return self.default
        value = world.__dict__.get(self.name, self.default)
        if value is None and self.name in world.loaders:
            value = world.__dict__[self.name] = world.part(self.name)
        return value

    def __set__(self, world, value):
        world.__dict__[self.name] = value


@dataclass
class World:
    """Everything a chapter needs from one world, and what that world lacks."""

    name: str  # the registry name it was loaded under ("cpu", "smoke", "paper", ...)
    description: str  # one line for the book and metrics.json
    # images in [-1, 1] (B, C, H, W) -> logits (B, K); eval mode, frozen (None + loaders['classifier']: loaded on first read)
    classifier: nn.Module = _LoadedOnFirstRead()
    images: torch.Tensor  # (N, C, H, W) in [-1, 1]: real images chapters choose units and queries from
    make_prior: Callable[..., Any]  # make_prior(ddim_steps) -> Prior: the deterministic DDIM chain z_T -> x
    fid: Callable[[torch.Tensor, torch.Tensor, str], Any]  # fid(samples, real, figure) -> FIDResult
    labels: Optional[torch.Tensor] = None  # (N,) true classes of `images`; None: see lacks["labels"]
    test_images: Optional[torch.Tensor] = None  # (M, C, H, W) held-out real images; None: see lacks
    test_labels: Optional[torch.Tensor] = None  # (M,) their classes
    judge: Optional[nn.Module] = None  # labels samples (digits: a classifier); None: see lacks["judge"]
    class_names: Optional[list] = None  # class index -> name, when known
    image_noun: str = "images"  # what the real images are, plural, for captions and record names ("digits")
    # module name whose channels chapter 2 calls neurons (None + loaders["neuron_layer"]: loaded on first read)
    neuron_layer: str = _LoadedOnFirstRead("")
    neuron_read: str = "output"  # "output" or "input" (pre-activation) of that module
    known_units: dict = field(default_factory=dict)  # channel -> (concept, r) the thesis reports
    # (images, labels or None) -> ((N, K) bool concept labels, K names): what a unit's alignment r is
    # measured against; None: see lacks["unit_concepts"]
    concept_labels: Optional[Callable[..., Any]] = None
    concept_sets: dict = field(default_factory=dict)  # name -> concept names a unit selection may be limited to
    image_files: Optional[list] = None  # the source file of each of `images` (the user's files); None: built in
    # objective -> the objective as this world evaluates it (e.g. under bf16 autocast); None: as built
    objective_wrapper: Optional[Callable[..., Any]] = None
    defaults: dict = field(default_factory=dict)  # chapter -> {setting: value} a parameter left at None takes
    batch_size: Optional[int] = None  # samples optimised together (None: all at once)
    device: torch.device = torch.device("cpu")
    lacks: dict = field(default_factory=dict)  # capability -> why this world does not have it
    record: dict = field(default_factory=dict)  # metrics.json fields that describe this world
    loaders: dict = field(default_factory=dict)  # part name -> callable(**kw) that loads it (see part)
    params: dict = field(default_factory=dict)  # the parameters it was loaded with: load_world(name, **params) rebuilds it
    _parts: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # short, and it loads nothing
        return (f"World({self.name!r}: {self.description}; lacks {sorted(self.lacks) or 'nothing'}; "
                f"parts {sorted(self.loaders) or 'none'})")

    # -- capabilities --------------------------------------------------------------------------
    def has(self, capability: str) -> bool:
        """True if this world has ``capability`` (a key of :data:`CAPABILITIES`)."""
        if capability not in CAPABILITIES:
            raise bad("capability", capability, f"one of {tuple(CAPABILITIES)}")
        return capability not in self.lacks

    def reason(self, capability: str) -> Optional[str]:
        """Why this world lacks ``capability`` (None if it has it)."""
        self.has(capability)
        return self.lacks.get(capability)

    def require(self, capability: str, what: str) -> None:
        """Raise ``ValueError`` naming ``what`` (a parameter or step) when the capability is missing."""
        if not self.has(capability):
            raise ValueError(f"{what} needs {CAPABILITIES[capability]}, which world {self.name!r} lacks: "
                             f"{self.lacks[capability]}")

    def with_reasons(self, fields: dict, needs: dict) -> dict:
        """``fields`` plus ``<field>_reason`` for every field that is None because of a missing
        capability (``needs``: field -> capability)."""
        out = dict(fields)
        for k, cap in needs.items():
            if out.get(k) is None and f"{k}_reason" not in out and not self.has(cap):
                out[f"{k}_reason"] = self.lacks[cap]
        return out

    def wrap_objective(self, objective):
        """``objective`` as this world evaluates it (:attr:`objective_wrapper`; unchanged when None)."""
        return objective if self.objective_wrapper is None else self.objective_wrapper(objective)

    # -- settings ------------------------------------------------------------------------------
    def setting(self, chapter: str, name: str, value=None):
        """``value``, or this world's default of ``name`` for ``chapter`` when ``value`` is None
        (the table is :data:`equidiff.worlds.settings.SETTINGS`)."""
        if value is not None:
            return value
        if name not in self.defaults.get(chapter, {}):
            raise ValueError(f"{name} is None and world {self.name!r} has no default for it in chapter {chapter!r}")
        return self.defaults[chapter][name]

    # -- optional parts, loaded once -----------------------------------------------------------
    def part(self, name: str, **kwargs):
        """The world's optional part ``name`` (e.g. ``"vit"``, ``"sae"``, ``"shortcut"``), loaded on
        first use with ``kwargs`` and kept; a later call with other ``kwargs`` loads it again."""
        if name not in self.loaders:
            raise ValueError(f"world {self.name!r} has no part {name!r}; it has {sorted(self.loaders) or 'none'}")
        key = (name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in self._parts:
            self._parts[key] = self.loaders[name](**kwargs)
        return self._parts[key]


_REGISTRY: dict[str, tuple[Callable[..., World], str]] = {}


def register_world(name: str, factory: Callable[..., World], description: str) -> None:
    """Add a named world: ``factory(**params) -> World`` (the factory checks its own parameters)."""
    _REGISTRY[name] = (factory, description)


def registered() -> dict[str, tuple[Callable[..., World], str]]:
    """The registry: name -> (factory, description)."""
    return _REGISTRY
