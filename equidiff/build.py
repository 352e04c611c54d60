"""Execute the notebooks with papermill and build the Jupyter Book (used by ``make book``).

    python -m equidiff.build notebooks [--profile cpu|smoke] [--only 01_circles] [--force] [--book book]
    python -m equidiff.build html [--book book]

The book never executes anything itself: papermill writes executed copies of
``notebooks/*.ipynb`` into ``<book>/_generated/`` (with each chapter's ``metrics.json`` and
figures in ``<book>/_generated/<name>/``), and Jupyter Book 1 renders them with warnings as errors.

A half-run chapter is never published. A chapter runs into ``<name>.partial.ipynb`` (its old
record, executed copy's place and output folder cleared first) and only a run that finished is
renamed to ``<name>.ipynb`` and recorded in ``<name>.done.json`` (what ran: the notebook's, the
parameters' and the package's hashes; the executed copy's sha256). ``html`` refuses to render a
chapter without that record (killed, failed, or edited since), naming it; ``notebooks`` reuses a
chapter whose record matches what it would run (``--force`` re-executes it), so a rerun after a
killed build executes only the chapters that had not finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
        "00_world": {"profile": "smoke", "n_samples": 64},
        "01_circles": {"n_invariant": 32, "steps": 60, "prior_points": 16, "prior_steps": 40, "ddim_steps": 5},
        "02_neurons": {"profile": "smoke"},
        "03_sae": {"profile": "smoke", "min_rate": 0.0, "max_rate": 1.0, "n_features": 2},
        "04_classifier": {"profile": "smoke"},
        "05_applications": {"profile": "smoke", "n_queries": 1, "n_samples": 4, "steps": 3, "ddim_steps": 3,
                            "k": 2, "neuron": 5, "neuron_samples": 3, "neuron_steps": 2},
    },
}


def notebook_names(notebooks: Path = NOTEBOOKS) -> list[str]:
    return sorted(p.stem for p in Path(notebooks).glob("*.ipynb"))


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_hash() -> str:
    """sha256 over the package's Python sources: a chapter executed by other code is not reused."""
    h = hashlib.sha256()
    pkg = REPO / "equidiff"
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def run_key(notebook: Path, params: dict, code: str) -> str:
    """What identifies one execution of a chapter: its source notebook, its parameters and the package."""
    blob = json.dumps({"notebook": file_sha256(notebook), "parameters": params, "package": code},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def chapter_files(gen: Path, name: str) -> dict[str, Path]:
    """Where a chapter's files are in ``<book>/_generated``: the executed copy, the copy being executed,
    the record of a finished run, the output folder (metrics.json, figures)."""
    gen = Path(gen)
    return {"executed": gen / f"{name}.ipynb", "partial": gen / f"{name}.partial.ipynb",
            "record": gen / f"{name}.done.json", "output": gen / name}


def open_cells(nb: dict) -> list[int]:
    """Indices of the code cells papermill did not record as completed (running, pending, failed)."""
    return [i for i, c in enumerate(nb.get("cells", [])) if c.get("cell_type") == "code"
            and c.get("metadata", {}).get("papermill", {}).get("status", "completed") != "completed"]


def unfinished_reason(gen: Path, name: str, key: str | None = None) -> str | None:
    """None when ``<gen>`` holds a finished run of chapter ``name`` (of run ``key``, when given); else why not."""
    f = chapter_files(gen, name)
    if not f["record"].is_file():
        if f["partial"].is_file() or f["executed"].is_file():
            return ("its last run did not finish (killed or failed, or run before builds kept records: "
                    "no record of a finished run)")
        return "it was never executed"
    try:
        record = json.loads(f["record"].read_text())
    except (OSError, ValueError) as e:
        return f"its record {f['record'].name} cannot be read ({e})"
    if key is not None and record.get("key") != key:
        return "its notebook, parameters or the package changed since it ran"
    if not f["executed"].is_file():
        return f"its executed copy {f['executed'].name} is missing"
    if file_sha256(f["executed"]) != record.get("notebook_sha256"):
        return f"its executed copy {f['executed'].name} changed after the run finished"
    nb = json.loads(f["executed"].read_text(encoding="utf-8"))
    if nb.get("metadata", {}).get("papermill", {}).get("exception") or open_cells(nb):
        return f"cells {open_cells(nb)} of its executed copy did not complete"
    if not (f["output"] / "metrics.json").is_file():
        return f"{f['output'].name}/metrics.json is missing"
    return None


def execute_notebooks(book: Path, profile: str = "cpu", only: list[str] | None = None,
                      extra: dict | None = None, force: bool = False, notebooks: Path = NOTEBOOKS) -> list[Path]:
    """Run each notebook of ``notebooks`` with papermill (``only``: these; a chapter that already finished
    with the same notebook, parameters and package is reused unless ``force``); returns the executed
    copies. Each chapter runs into ``<name>.partial.ipynb``; only a finished run becomes ``<name>.ipynb``
    and gets its record ``<name>.done.json`` (see the module docstring). A failing chapter raises
    papermill's error, after the chapters before it were recorded."""
    import papermill as pm

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    notebooks = Path(notebooks)
    names = notebook_names(notebooks)
    for n in only or []:
        if n not in names:
            raise ValueError(f"only: no notebook named {n!r}; there are {names}")
    gen = Path(book) / "_generated"
    gen.mkdir(parents=True, exist_ok=True)
    code = package_hash()
    done = []
    for name in only or names:
        params = {**PROFILES[profile].get(name, {}), **(extra or {})}
        f = chapter_files(gen, name)
        params["output_dir"] = str(f["output"].resolve())
        source = notebooks / f"{name}.ipynb"
        key = run_key(source, params, code)
        if not force and unfinished_reason(gen, name, key) is None:
            record = json.loads(f["record"].read_text())
            print(f"[equidiff] {name}: reused (finished {record.get('finished', '?')} with the same notebook, "
                  f"parameters and package; --force re-executes it)", flush=True)
            done.append(f["executed"])
            continue
        # the chapter is unfinished from here until its record is written: no old record, copy or figures
        for path in (f["record"], f["executed"], f["partial"]):
            path.unlink(missing_ok=True)
        shutil.rmtree(f["output"], ignore_errors=True)
        t0 = time.perf_counter()
        print(f"[equidiff] executing {source} ({profile} profile)", flush=True)
        pm.execute_notebook(str(source), str(f["partial"]), parameters=params, kernel_name="python3",
                            cwd=str(REPO), progress_bar=False)
        seconds = time.perf_counter() - t0
        nb = json.loads(f["partial"].read_text(encoding="utf-8"))
        if open_cells(nb) or not (f["output"] / "metrics.json").is_file():
            raise RuntimeError(f"chapter {name}: papermill returned but cells {open_cells(nb)} did not complete "
                               f"or {f['output'] / 'metrics.json'} was not written; not recorded as finished")
        os.replace(f["partial"], f["executed"])  # atomic: the executed copy is always a whole run
        record = {"key": key, "notebook_sha256": file_sha256(f["executed"]), "profile": profile,
                  "parameters": params, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = f["record"].with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, f["record"])  # written last: the mark of a finished chapter
        print(f"[equidiff]   done in {seconds:.0f} s", flush=True)
        done.append(f["executed"])
    return done


class UnfinishedChapters(RuntimeError):
    """The book names chapters without a finished run; the message names each and why."""


def book_chapters(book: Path) -> list[str]:
    """The executed chapters the book's ``_toc.yml`` lists (its ``_generated/<name>`` entries), in order."""
    import yaml

    toc = yaml.safe_load((Path(book) / "_toc.yml").read_text())
    files = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                files.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return [Path(f).with_suffix("").name for f in files if Path(f).parts[0] == "_generated"]


def check_finished(book: Path) -> list[str]:
    """The book's executed chapters if each finished (:func:`unfinished_reason`); else
    :class:`UnfinishedChapters` naming each one that did not and the command that reruns it."""
    gen = Path(book) / "_generated"
    names = book_chapters(book)
    bad = [(n, r) for n in names if (r := unfinished_reason(gen, n)) is not None]
    if bad:
        lines = "\n".join(f"  {n}: {r}" for n, r in bad)
        only = " ".join(n for n, _ in bad)
        raise UnfinishedChapters(
            f"not rendering the book: {len(bad)} chapter(s) without a finished run:\n{lines}\n"
            f"run `python -m equidiff.build notebooks --only {only}` (add --profile as before; the "
            f"chapters that finished are reused by a plain `python -m equidiff.build notebooks`)")
    return names


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
    """Render the book with Jupyter Book 1, warnings as errors; returns the index.html path. Raises
    :class:`UnfinishedChapters`, before rendering anything, when a chapter's last run did not finish."""
    book = Path(book)
    check_finished(book)
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
    ap.add_argument("--force", action="store_true", help="re-execute chapters that already finished")
    ap.add_argument("--notebooks", default=str(NOTEBOOKS), help="source notebooks folder")
    a = ap.parse_args(argv)
    if a.what == "notebooks":
        execute_notebooks(Path(a.book), a.profile, a.only, force=a.force, notebooks=Path(a.notebooks))
    else:
        try:
            index = build_html(Path(a.book))
        except UnfinishedChapters as e:
            print(f"[equidiff] {e}", file=sys.stderr)
            return 1
        print(f"\n[equidiff] the book is at {index.resolve()}\n"
              f"[equidiff] open it with: xdg-open {index.resolve()}  (or any browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
