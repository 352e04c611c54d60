"""Measures of invariant samples, and the metrics.json every notebook writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["to_jsonable", "write_metrics", "read_metrics"]


def to_jsonable(obj):
    """Convert tensors, arrays and numpy scalars into plain JSON types (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def write_metrics(output_dir, metrics: dict, name: str = "metrics.json") -> Path:
    """Write ``<output_dir>/metrics.json`` so the book, tests and readers can use the numbers."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(to_jsonable(metrics), indent=2))
    return path


def read_metrics(output_dir, name: str = "metrics.json") -> dict:
    return json.loads((Path(output_dir) / name).read_text())
