"""Run a chapter notebook's code in this Python process, without Jupyter (for machines without it).

    python benchmarks/exec_notebook.py notebooks/02_neurons.ipynb -p profile=paper -p n_samples=4 ...

Papermill is the project's way to execute notebooks (``make book``); this script is for a machine
that has torch but no Jupyter stack, e.g. a lent GPU machine: it executes the code cells in order
in one namespace, with the ``-p name=value`` overrides (values parsed as Python literals) injected
right after the cell tagged ``parameters``, and ``IPython.display`` replaced by a printer when
IPython is missing. Exit status 1 and the cell number if a cell raises.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
import traceback
import types


def _shim_ipython() -> None:
    try:
        import IPython.display  # noqa: F401
        return
    except ImportError:
        pass
    disp = types.ModuleType("IPython.display")

    class HTML(str):
        pass

    def display(*objs, **_):
        for o in objs:
            print(f"[display] {str(o)[:300]}")

    disp.HTML, disp.display, disp.Markdown, disp.Image = HTML, display, HTML, HTML
    root = types.ModuleType("IPython")
    root.display = disp
    root.get_ipython = lambda: None  # what libraries probe to detect a notebook: "not in one"
    root.version_info = (8, 0, 0)
    sys.modules["IPython"], sys.modules["IPython.display"] = root, disp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook")
    ap.add_argument("-p", action="append", default=[], metavar="NAME=VALUE", help="parameter override")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.p:
        name, _, value = item.partition("=")
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value  # a bare string
    _shim_ipython()
    import matplotlib

    matplotlib.use("Agg")
    nb = json.load(open(args.notebook))
    ns: dict = {"__name__": "__main__"}
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    t0 = time.perf_counter()
    for i, cell in enumerate(code_cells):
        src = "".join(cell["source"])
        try:
            exec(compile(src, f"<{args.notebook} cell {i}>", "exec"), ns)
        except Exception:
            traceback.print_exc()
            print(f"[exec_notebook] cell {i} of {args.notebook} raised", file=sys.stderr)
            return 1
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            ns.update(overrides)
            print(f"[exec_notebook] parameters overridden: {overrides}")
    print(f"[exec_notebook] {args.notebook}: {len(code_cells)} cells in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
