"""Shared input checks: every bad value raises ValueError naming the field, the value and what is allowed."""

from __future__ import annotations

import math


def bad(field_name: str, value, allowed: str) -> ValueError:
    """The project's error for a bad parameter: ``<field> must be <allowed>, got <value!r>``."""
    return ValueError(f"{field_name} must be {allowed}, got {value!r}")


def is_int(v) -> bool:
    """An integer that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
