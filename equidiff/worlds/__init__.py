"""Worlds: data and trained models, built on the engine (:mod:`equidiff.core`).

:func:`load_world` is the one way a chapter gets its world: ``"cpu"`` and ``"smoke"`` are the
embedded digits world (trained models, tiny models), ``"paper"`` the ImageNet-scale world.
"""

from equidiff._validate import bad
from equidiff.worlds.base import CAPABILITIES, World, register_world, registered
from equidiff.worlds.digits import world as _digits
from equidiff.worlds.imagenet import world as _imagenet

__all__ = ["World", "CAPABILITIES", "load_world", "world_names", "register_world"]

register_world("cpu", _digits.cpu_world, "the embedded digits world: trained models, real digits (CPU)")
register_world("smoke", _digits.smoke_world, "the digits world with tiny models (seconds; for tests)")
register_world("paper", _imagenet.paper_world, "ImageNet scale: ResNet-50, latent DiT, the user's images (GPU)")


def world_names() -> dict:
    """Registered worlds: name -> description."""
    return {k: d for k, (_, d) in registered().items()}


def load_world(name: str = "cpu", **params) -> World:
    """The world registered as ``name``, built with ``params``; each factory checks its own
    parameters and rejects the ones it does not take, naming them."""
    if not isinstance(name, str) or name not in registered():
        raise bad("profile", name, f"one of {tuple(registered())}")
    return registered()[name][0](**params)
