"""Glue the run's figures into the book's prose (myst-nb ``glue``): nothing in a page's text is typed by hand.

A notebook computes a dict of the numbers, unit ids and counts its prose states and calls
:func:`glue_all`; its markdown cells then write ``{glue:text}`key:.3f``` (numbers, with a format
spec) or ``{glue:text}`key``` (integers and words). Words and lists (``"#55, #32 and #118"``) are
glued as :class:`Text`, which shows without quotes. A key the prose names but the run did not glue
fails the book build (``-n -W``), so prose and run cannot drift apart.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Mapping

__all__ = ["Text", "as_is", "glue_all", "words", "glued"]

_GLUED: dict[str, object] = {}  # what this process glued (tests and the reproduce box read it)


class Text(str):
    """A string that displays as itself (``repr`` without quotes), for ``{glue:text}`` in prose."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython's text/plain
        p.text(str(self))


def as_is(s: str) -> Text:
    """``s`` glued so that ``{glue:text}`` shows it exactly: myst-nb reads glued text through
    ``ast.literal_eval`` (``"0.100"`` would show as ``0.1``, ``"'1'"`` as ``1``), so a string that
    reads as a literal is glued as its own repr, which reads back as ``s``."""
    from ast import literal_eval

    try:
        value = literal_eval(s)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return Text(s)
    return Text(s) if str(value) == s else Text(repr(str(s)))


def words(items: Iterable, last: str = "and", fmt: str = "{}") -> Text:
    """``["#55", "#32", "#118"]`` -> ``"#55, #32 and #118"`` (as :class:`Text`)."""
    parts = [fmt.format(x) for x in items]
    if len(parts) <= 1:
        return Text("".join(parts))
    return Text(", ".join(parts[:-1]) + f" {last} " + parts[-1])


def _value(key: str, v):
    if isinstance(v, bool):
        return Text("yes" if v else "no")
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        if not math.isfinite(float(v)):
            return Text(str(float(v)))
        return float(v)
    if isinstance(v, str):
        return Text(v)
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
        return _value(key, v.item())
    raise TypeError(f"glue value {key!r} must be a number or a string, got {type(v).__name__}")


def glue_all(values: Mapping[str, object], display: bool = False) -> dict:
    """Glue every ``key: value`` (numbers, strings, booleans) for the prose; returns what was glued."""
    from myst_nb import glue

    out = {}
    for key, v in values.items():
        if not isinstance(key, str) or not key.replace("_", "").isalnum():
            raise ValueError(f"glue key must be letters, digits and underscores, got {key!r}")
        out[key] = _value(key, v)
        glue(key, out[key], display=display)
    _GLUED.update(out)
    return out


def glued() -> dict:
    """Everything :func:`glue_all` glued in this process."""
    return dict(_GLUED)
