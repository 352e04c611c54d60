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


def _allowed(kind: str, none: bool, why: str) -> str:
    return ("None or " if none else "") + kind + (f" ({why})" if why else "")


def check_int(name: str, value, lo: int | None = 0, hi: int | None = None, *, none: bool = False, why: str = ""):
    """``value`` if it is an integer in [lo, hi] (or None when ``none``); else ``bad(name, ...)``."""
    if none and value is None:
        return value
    kind = (f"an integer in [{lo}, {hi}]" if lo is not None and hi is not None else
            f"an integer ≥ {lo}" if lo is not None else "an integer")
    if not is_int(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise bad(name, value, _allowed(kind, none, why))
    return value


def check_num(name: str, value, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
              hi_open: bool = False, none: bool = False, why: str = ""):
    """``value`` if it is a finite number in the interval given (open ends with ``lo_open`` / ``hi_open``),
    or None when ``none``; else ``bad(name, ...)`` (NaN and ±inf are refused)."""
    if none and value is None:
        return value
    if lo is not None and hi is not None:
        kind = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        kind = f"a finite number {'>' if lo_open else '≥'} {lo}"
    elif hi is not None:
        kind = f"a finite number {'<' if hi_open else '≤'} {hi}"
    else:
        kind = "a finite number"
    ok = is_num(value) and (lo is None or (value > lo if lo_open else value >= lo)) and (
        hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        raise bad(name, value, _allowed(kind, none, why))
    return value


def check_choice(name: str, value, choices, *, none: bool = False, why: str = ""):
    """``value`` if it is one of ``choices`` (or None when ``none``); else ``bad(name, ...)``."""
    if none and value is None:
        return value
    if not isinstance(value, (str, int, float, bool, type(None))) or value not in tuple(choices):
        raise bad(name, value, _allowed(f"one of {tuple(choices)}", none, why))
    return value


def check_bool(name: str, value, *, none: bool = False):
    """``value`` if it is True or False (or None when ``none``); else ``bad(name, ...)``."""
    if not isinstance(value, bool) and not (none and value is None):
        raise bad(name, value, "None, True or False" if none else "True or False")
    return value


def check_index_list(name: str, value, *, allowed: str = "a non-empty list of integers ≥ 0", auto: bool = True):
    """``value`` if it is ``"auto"`` (when ``auto``) or a non-empty list of distinct integers ≥ 0."""
    if auto and isinstance(value, str) and value == "auto":
        return value
    if (not isinstance(value, (list, tuple)) or not value or not all(is_int(v) and v >= 0 for v in value)
            or len(set(value)) < len(value)):
        raise bad(name, value, ("'auto' or " if auto else "") + allowed)
    return value


def check_folder(name: str, value):
    """``value`` if it is a non-empty string (a folder to write to); else ``bad(name, ...)``."""
    if not isinstance(value, str) or not value.strip():
        raise bad(name, value, "a folder path (a non-empty string)")
    return value
