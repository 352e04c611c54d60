"""The metrics record: the ``metrics.json`` every notebook writes, with every parameter it ran with.

A notebook's key figures go to ``<output_dir>/metrics.json`` (:func:`write_metrics`) so the book,
the tests and readers use the numbers the run found. :func:`notebook_parameters` collects the
values of the names the notebook's tagged ``parameters`` cell assigns (nanoGPT's
``config = {k: globals()[k] ...}`` pattern), so the record says what the run was asked to do,
papermill overrides included.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["to_jsonable", "write_metrics", "notebook_parameters", "NOTEBOOKS"]

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"  # the chapters' source notebooks


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


def _assigned_names(tree: ast.Module) -> list[str]:
    """Names a cell assigns at top level (``a = 1``, ``a: int = 1``, ``a, b = 1, 2``), in order."""
    names: list[str] = []

    def add(target):
        if isinstance(target, ast.Name):
            if target.id not in names:
                names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                add(t)

    for node in tree.body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                add(t)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            add(node.target)
    return names


def notebook_parameters(namespace: dict, notebook: str) -> dict:
    """``{name: namespace[name]}`` for every name the tagged ``parameters`` cell of ``notebook`` assigns.

    ``notebook``: a chapter's stem (``"01_circles"``, read from ``notebooks/01_circles.ipynb``) or
    a path to an ``.ipynb`` file. ``namespace``: the running notebook's ``globals()``, so the values
    are those the run used (papermill's injected overrides, not the cell's defaults). The cell is
    parsed with :mod:`ast`, never executed. Raises ``ValueError`` when the notebook, its
    ``parameters`` cell, or one of its names in ``namespace`` is missing.
    """
    path = Path(notebook)
    if path.suffix != ".ipynb":  # a stem: the source notebooks beside the package, else ./notebooks
        found = [d / f"{notebook}.ipynb" for d in (NOTEBOOKS, Path.cwd() / "notebooks", Path.cwd())]
        path = next((f for f in found if f.is_file()), found[0])
    if not path.is_file():
        raise ValueError(f"notebook must name a notebook of {NOTEBOOKS} (a stem such as '01_circles') "
                         f"or an .ipynb file, got {notebook!r} ({path} does not exist)")
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError(f"notebook {notebook!r} ({path}) has no cell tagged 'parameters'")
    source = tagged[0]["source"]
    names = _assigned_names(ast.parse(source if isinstance(source, str) else "".join(source)))
    missing = [k for k in names if k not in namespace]
    if missing:
        raise ValueError(f"namespace lacks the parameters {missing} of notebook {notebook!r}; "
                         "pass the running notebook's globals()")
    return {k: namespace[k] for k in names}
