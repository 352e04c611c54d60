"""Shared input checks: every bad value raises ValueError naming the field, the value and what is allowed."""

from __future__ import annotations

import math

import torch


def bad(field_name: str, value, allowed: str) -> ValueError:
    """The project's error for a bad parameter: ``<field> must be <allowed>, got <value!r>``."""
    return ValueError(f"{field_name} must be {allowed}, got {value!r}")


def is_int(v) -> bool:
    """An integer that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_images(images, name: str = "images", channels: int | None = 1) -> torch.Tensor:
    """``images`` if it is a batch of images ``(N, C, H, W)`` (``C == channels``; any ``C`` when
    ``channels`` is None); else ``ValueError`` naming ``name``, the shape found and the one allowed.
    The one image check of the package (values are in [-1, 1] by the project's convention; not scanned)."""
    ok = isinstance(images, torch.Tensor) and images.dim() == 4 and (channels is None or images.shape[1] == channels)
    if not ok:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        kind = ("grey images, shape (N, 1, H, W)" if channels == 1 else
                "images, shape (N, C, H, W)" if channels is None else f"images, shape (N, {channels}, H, W)")
        raise bad(name, shape, f"a tensor of {kind}, values in [-1, 1]")
    return images
