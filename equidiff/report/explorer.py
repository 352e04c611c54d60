"""The data of the book's interactive invariant-set explorer (issue 17): ``<book>/_static/explorer_data.js``.

The explorer page (``book/explorer.md``, script ``book/_static/explorer.js``) evaluates the shipped
circles MLP (:func:`equidiff.worlds.circles.load_classifier`) in the reader's browser, with no kernel and
no network. :func:`export_explorer` writes what it needs as a script that sets
``window.EQUIDIFF_EXPLORER`` (a script, not JSON, because the book is also opened from ``file://``,
where ``fetch()`` is blocked):

* ``model``: the architecture (``layers`` = [2, hidden, hidden, 1], ``activation`` = "silu", ``output``
  = "sigmoid") and every ``weights[i]`` (shape (out, in), as torch stores them) and ``biases[i]``, each
  float32 value written as the decimal number of exactly that value;
* ``extent``: the plane shown, [-extent, extent]² (:data:`~equidiff.worlds.circles.BOX`), and
  ``data_extent``, the square the training points came from;
* ``manifold``: every 8th training point of chapter 1's 2D diffusion prior (the two moons), drawn under
  the samples;
* ``tolerance``: the stated bound |L(x) − L(x*)| < tolerance of every point the page draws on IS(x*);
* ``chapter``: chapter 1's queries and its EquiDiff samples through the 2D diffusion prior, read from
  ``<book>/_generated/01_circles/explorer_samples.json`` (:data:`SAMPLES_FILE`, written by the chapter),
  or ``null`` with ``chapter_missing`` saying why (the page then says so instead of showing samples).

Run it before Jupyter Book renders the book: ``python -m equidiff.report.explorer --book book``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from torch import nn

from equidiff._validate import bad

__all__ = ["export_explorer", "explorer_payload", "read_samples", "model_arrays", "SAMPLES_FILE", "CHAPTER",
           "DATA_FILE", "TOLERANCE"]

CHAPTER = "01_circles"  # the chapter whose queries and samples the explorer overlays
SAMPLES_FILE = "explorer_samples.json"  # written by chapter 1 into its output folder
DATA_FILE = "explorer_data.js"  # written into <book>/_static/
TOLERANCE = 1e-5  # every point drawn on IS(x*) has |L(x) - L(x*)| below this in float32 Python (the page refines
# to a hundredth of it in float64; the float32 model differs from that by about 1e-6; unrefined grid crossings miss it)
_VERSION = 1  # of the payload's layout


def model_arrays(model: nn.Module) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The (weights (out, in), biases (out,)) float32 arrays of the MLP's linear layers, in order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise bad("model", type(model).__name__, "an MLP made of nn.Linear layers (the circles MLP)")
    return ([l.weight.detach().cpu().float().numpy() for l in linears],
            [l.bias.detach().cpu().float().numpy() for l in linears])


def _exact(a: np.ndarray) -> list:
    """float32 values as Python floats: their decimal repr is exactly the float32 value."""
    return np.asarray(a, dtype=np.float32).astype(np.float64).tolist()


def read_samples(folder: Path) -> tuple[dict | None, str | None]:
    """(chapter 1's queries and samples, None) from ``folder/explorer_samples.json``; (None, why) when it
    is not there or cannot be used."""
    path = Path(folder) / SAMPLES_FILE
    if not Path(folder).is_dir():
        return None, f"chapter {CHAPTER} was not run in this build (no {Path(folder).name}/ output folder)"
    if not path.is_file():
        return None, f"chapter {CHAPTER} ran but wrote no {SAMPLES_FILE} (an older run: rebuild it)"
    try:
        d = json.loads(path.read_text())
        queries = [[float(v) for v in q] for q in d["queries"]]
        samples = [[[float(v) for v in s] for s in pts] for pts in d["samples"]]
        p = [float(v) for v in d["p"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{path.name} of chapter {CHAPTER} cannot be read ({e})"
    if not (len(queries) == len(samples) == len(p)) or any(len(q) != 2 for q in queries) or \
            any(len(s) != 2 for pts in samples for s in pts):
        return None, f"{path.name} of chapter {CHAPTER} is malformed (queries, p and samples must match)"
    if not all(math.isfinite(v) for q in queries for v in q) or \
            not all(math.isfinite(v) for pts in samples for s in pts for v in s):
        return None, f"{path.name} of chapter {CHAPTER} holds non-finite coordinates"
    return {"queries": queries, "p": p, "samples": samples, "tau": d.get("tau"),
            "n_requested": d.get("n_requested"), "source": f"{CHAPTER}/{SAMPLES_FILE}"}, None


def explorer_payload(model: nn.Module, samples_folder: Path | None = None, folder_name: str | None = None) -> dict:
    """What ``window.EQUIDIFF_EXPLORER`` holds (see the module docstring)."""
    from equidiff.worlds.circles import BOX, CirclesConfig, manifold_data

    weights, biases = model_arrays(model)
    layers = [int(weights[0].shape[1])] + [int(w.shape[0]) for w in weights]
    chapter, missing = (None, "no chapter output folder was given") if samples_folder is None \
        else read_samples(samples_folder)
    return {
        "version": _VERSION,
        "model": {"name": "circles-mlp", "folder": folder_name, "layers": layers, "activation": "silu",
                  "output": "sigmoid", "weights": [_exact(w) for w in weights], "biases": [_exact(b) for b in biases]},
        "extent": float(BOX),
        "data_extent": float(CirclesConfig().extent),
        "tolerance": TOLERANCE,
        # every 8th training point of the 2D prior (the two moons chapter 1's samples are drawn from)
        "manifold": np.round(manifold_data().numpy()[::8].astype(np.float64), 4).tolist(),
        "chapter": chapter,
        "chapter_missing": missing,
    }


def export_explorer(book: Path) -> Path:
    """Write ``<book>/_static/explorer_data.js`` for the explorer page from the shipped circles MLP and, when
    chapter 1 ran into ``<book>/_generated/01_circles/``, its queries and EquiDiff samples; returns the path."""
    from equidiff.worlds.circles import load_classifier, model_folders

    book = Path(book)
    if not book.is_dir():
        raise bad("book", str(book), "an existing book source folder (with _config.yml)")
    model, _ = load_classifier()
    folder = model_folders()["circles_mlp"][0].name
    payload = explorer_payload(model, book / "_generated" / CHAPTER, folder)
    static = book / "_static"
    static.mkdir(exist_ok=True)
    path = static / DATA_FILE
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    text = ("// Generated by equidiff.report.explorer.export_explorer: do not edit (the book build rewrites it).\n"
            f"window.EQUIDIFF_EXPLORER = {body};\n")
    tmp = path.with_suffix(".js.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m equidiff.report.explorer", description=export_explorer.__doc__)
    ap.add_argument("--book", default=str(Path(__file__).resolve().parents[2] / "book"), help="book source folder")
    a = ap.parse_args(argv)
    print(export_explorer(Path(a.book)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
