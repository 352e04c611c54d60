"""Execute the notebooks with papermill and build the Jupyter Book (used by ``make book``).

    python -m equidiff.build notebooks [--profile cpu|smoke] [--only 01_circles] [--book book]
    python -m equidiff.build html [--book book]

The book never executes anything itself: papermill writes executed copies of
``notebooks/*.ipynb`` into ``<book>/_generated/`` (with each chapter's ``metrics.json`` and
figures in ``<book>/_generated/<name>/``), and Jupyter Book 1 renders them with warnings as errors.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"

# Parameters per profile; "cpu" is each notebook's own defaults. "smoke" is a seconds-long run of
# the same code path, used by the tests: the chapters on a World take the "smoke" world, whose tiny
# models and budgets come from equidiff/worlds/settings.py; only what a world does not decide is here.
PROFILES: dict[str, dict[str, dict]] = {
    "cpu": {},
    "smoke": {
        "01_circles": {"n_invariant": 32, "steps": 60, "prior_points": 16, "prior_steps": 40, "ddim_steps": 5},
        "02_neurons": {"profile": "smoke"},
        "03_sae": {"profile": "smoke", "min_rate": 0.0, "max_rate": 1.0, "n_features": 2},
        "04_classifier": {"profile": "smoke"},
        "05_applications": {"profile": "smoke", "n_queries": 1, "n_samples": 4, "steps": 3, "ddim_steps": 3,
                            "k": 2, "neuron": 5, "neuron_samples": 3, "neuron_steps": 2},
    },
}


def notebook_names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def execute_notebooks(book: Path, profile: str = "cpu", only: list[str] | None = None,
                      extra: dict | None = None) -> list[Path]:
    """Run each notebook with papermill; returns the executed copies."""
    import papermill as pm

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    names = notebook_names()
    for n in only or []:
        if n not in names:
            raise ValueError(f"only: no notebook named {n!r}; there are {names}")
    gen = Path(book) / "_generated"
    gen.mkdir(parents=True, exist_ok=True)
    done = []
    for name in only or names:
        params = {**PROFILES[profile].get(name, {}), **(extra or {})}
        params["output_dir"] = str((gen / name).resolve())
        t0 = time.perf_counter()
        print(f"[equidiff] executing notebooks/{name}.ipynb ({profile} profile)", flush=True)
        pm.execute_notebook(
            str(NOTEBOOKS / f"{name}.ipynb"),
            str(gen / f"{name}.ipynb"),
            parameters=params,
            kernel_name="python3",
            cwd=str(REPO),
            progress_bar=False,
        )
        print(f"[equidiff]   done in {time.perf_counter() - t0:.0f} s", flush=True)
        done.append(gen / f"{name}.ipynb")
    return done


def install_mathjax(book: Path) -> Path:
    """Copy MathJax 3 from the installed django-static-mathjax wheel into ``_extra/mathjax``."""
    import mathjax  # the django-static-mathjax distribution's package

    src = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (src / "tex-svg.js").exists():
        raise FileNotFoundError(f"MathJax not found at {src}; is django-static-mathjax installed?")
    dst = Path(book) / "_extra" / "mathjax"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*speech*", "sre", "a11y", "*mml-svg*"))
    return dst


def build_html(book: Path) -> Path:
    """Render the book with Jupyter Book 1, warnings as errors; returns the index.html path."""
    book = Path(book)
    install_mathjax(book)
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb), "build", str(book), "--warningiserror", "--nitpick", "--keep-going"]
    subprocess.run(cmd, check=True)
    index = book / "_build" / "html" / "index.html"
    return index


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m equidiff.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["notebooks", "html"])
    ap.add_argument("--book", default=str(REPO / "book"), help="book source folder")
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--only", nargs="*", help="notebook names, e.g. 01_circles")
    a = ap.parse_args(argv)
    if a.what == "notebooks":
        execute_notebooks(Path(a.book), a.profile, a.only)
    else:
        index = build_html(Path(a.book))
        print(f"\n[equidiff] the book is at {index.resolve()}\n"
              f"[equidiff] open it with: xdg-open {index.resolve()}  (or any browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
