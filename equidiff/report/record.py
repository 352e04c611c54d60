"""The metrics record: the ``metrics.json`` every notebook writes, with every parameter it ran with.

A notebook's key figures go to ``<output_dir>/metrics.json`` (:func:`write_metrics`) so the book,
the tests and readers use the numbers the run found. :func:`notebook_parameters` collects the
values of the names the notebook's tagged ``parameters`` cell assigns (nanoGPT's
``config = {k: globals()[k] ...}`` pattern), so the record says what the run was asked to do,
papermill overrides included. :func:`check_notebook_parameters`, called by every notebook in its first
code cell, stops a run whose parameters are misspelt or bad before any work starts, naming them.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import types
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from equidiff.report.progress import in_kernel

__all__ = ["to_jsonable", "write_metrics", "notebook_parameters", "notebook_defaults", "check_notebook_parameters",
           "NOTEBOOKS"]

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


def write_metrics(output_dir, metrics: dict, name: str = "metrics.json", *, models: Optional[dict] = None,
                  machine: Optional[dict] = None) -> Path:
    """Write ``<output_dir>/metrics.json`` so the book, tests and readers can use the numbers.

    The record also says how the run was made: ``"loaded_models"``, ``{model folder: sha256 of its weights}`` of
    every shipped or cached model the run loaded (:func:`equidiff.cache.loaded_models`), and
    ``"machine"`` (:func:`equidiff.training.machine`: CPU, cores, torch threads, library versions). A
    notebook's kernel is one process per run, so there both are filled in by default; elsewhere (a
    script, the tests) one process may have loaded models for other purposes, so they are written only
    when given. A key ``metrics`` already has is kept as it is. The book build reads both for each
    chapter's "Reproduce this page" box.
    """
    if in_kernel():
        from equidiff import cache
        from equidiff.training import machine as this_machine

        models = cache.loaded_models() if models is None else models
        machine = this_machine() if machine is None else machine
    extra = {k: v for k, v in (("loaded_models", models), ("machine", machine)) if v is not None and k not in metrics}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(to_jsonable({**metrics, **extra}), indent=2))
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


def _notebook_path(notebook) -> Path:
    path = Path(notebook)
    if path.suffix != ".ipynb":  # a stem: the source notebooks beside the package, else ./notebooks
        found = [d / f"{notebook}.ipynb" for d in (NOTEBOOKS, Path.cwd() / "notebooks", Path.cwd())]
        path = next((f for f in found if f.is_file()), found[0])
    if not path.is_file():
        raise ValueError(f"notebook must name a notebook of {NOTEBOOKS} (a stem such as '01_circles') "
                         f"or an .ipynb file, got {notebook!r} ({path} does not exist)")
    return path


def _code_cells(notebook) -> tuple[Path, str, list[str]]:
    """(path, source of the first cell tagged ``parameters``, sources of every code cell)."""
    path = _notebook_path(notebook)
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    join = lambda src: src if isinstance(src, str) else "".join(src)  # noqa: E731
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError(f"notebook {notebook!r} ({path}) has no cell tagged 'parameters'")
    return path, join(tagged[0]["source"]), [join(c["source"]) for c in cells if c.get("cell_type") == "code"]


def notebook_parameters(namespace: dict, notebook: str) -> dict:
    """``{name: namespace[name]}`` for every name the tagged ``parameters`` cell of ``notebook`` assigns.

    ``notebook``: a chapter's stem (``"01_circles"``, read from ``notebooks/01_circles.ipynb``) or
    a path to an ``.ipynb`` file. ``namespace``: the running notebook's ``globals()``, so the values
    are those the run used (papermill's injected overrides, not the cell's defaults). The cell is
    parsed with :mod:`ast`, never executed. Raises ``ValueError`` when the notebook, its
    ``parameters`` cell, or one of its names in ``namespace`` is missing.
    """
    _, source, _ = _code_cells(notebook)
    names = _assigned_names(ast.parse(source))
    missing = [k for k in names if k not in namespace]
    if missing:
        raise ValueError(f"namespace lacks the parameters {missing} of notebook {notebook!r}; "
                         "pass the running notebook's globals()")
    return {k: namespace[k] for k in names}


def notebook_defaults(notebook: str) -> dict:
    """The values the ``parameters`` cell of ``notebook`` assigns (its defaults), read with
    :func:`ast.literal_eval` (the cell holds literals only), in the cell's order."""
    _, source, _ = _code_cells(notebook)
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = ast.literal_eval(node.value)
    return out


# What an IPython kernel puts in a notebook's namespace besides the notebook's own names (and the
# names starting with "_": _, __, _i, _1, __name__, __builtins__, ...).
KERNEL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
# Papermill injects parameters as literals; a module, function or class in the namespace was imported.
_NOT_LITERALS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def _bound_names(source: str) -> set[str]:
    """Every name a cell binds anywhere (assignments, imports, loops, with, def, class)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell of IPython magics: it binds nothing we could read
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def check_notebook_parameters(namespace: dict, notebook: str, check: Optional[Callable[[dict], None]] = None) -> dict:
    """The notebook's parameters, checked: the first call of every notebook's first code cell.

    1. **Unknown names.** Papermill runs a notebook with a parameter its ``parameters`` cell does
       not declare (``-p n_invarient 8``) and only logs "Passed unknown parameter", so the run would
       use the default. Here every name of ``namespace`` (the notebook's ``globals()``) that is not
       a declared parameter, not the kernel's (``In``, ``Out``, ``get_ipython``, ``exit``, ``quit``,
       ``open``, names starting with ``_``), not an imported module, function or class, and not a
       name the notebook itself binds in some cell (a re-run in Jupyter keeps them) was injected:
       ``ValueError("unknown parameter 'n_invarient'; did you mean 'n_invariant'? ...")``.
    2. **Bad values.** ``check`` (the chapter's ``check_parameters``) is called with the
       parameters; it raises ``ValueError`` naming the bad parameter, before any model is loaded.

    ``namespace`` may also be a plain dict holding every declared parameter (and nothing of a kernel).
    Returns ``{name: value}`` of the declared parameters (:func:`notebook_parameters`).
    """
    _, source, code = _code_cells(notebook)
    declared = _assigned_names(ast.parse(source))
    own = set().union(*(_bound_names(c) for c in code)) if code else set()
    unknown = [k for k, v in namespace.items()
               if k not in declared and k not in own and k not in KERNEL_NAMES and not str(k).startswith("_")
               and not isinstance(v, _NOT_LITERALS)]
    if unknown:
        lines = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), declared, n=1, cutoff=0.6)
            lines.append(f"unknown parameter {k!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        name = Path(notebook).stem
        raise ValueError("; ".join(lines) + f" (notebook {name} takes the parameters {', '.join(declared)})")
    params = notebook_parameters(namespace, notebook)
    if check is not None:
        check(params)
    return params
