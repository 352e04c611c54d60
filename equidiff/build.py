"""Execute the notebooks with papermill and build the Jupyter Book (used by ``make book``).

    python -m equidiff.build notebooks [--profile cpu|smoke] [--only 01_circles] [--force] [--book book]
    python -m equidiff.build html [--book book]

The book never executes anything itself: papermill writes executed copies of
``notebooks/*.ipynb`` into ``<book>/_generated/`` (with each chapter's ``metrics.json`` and
figures in ``<book>/_generated/<name>/``), and Jupyter Book 1 renders them with warnings as errors.

**Rebuild only what changed.** A half-run chapter is never published. A chapter runs into
``<name>.partial.ipynb`` (its old record, executed copy's place and output folder cleared first)
and only a run that finished is renamed to ``<name>.ipynb`` and recorded in ``<name>.done.json``
(its run key and the executed copy's sha256). The run key (:func:`run_key`) covers what a chapter's
result depends on: the source notebook, its parameters, the package's Python sources and the
shipped models' manifest ``data/models/manifest.json`` (which lists the sha256 of every shipped
model file; a change to any shipped model re-executes every chapter, conservative and simple: the
tiny cached models of the smoke profile are keyed by their config and the package code, so the
package hash covers them). ``notebooks`` reuses a chapter whose record matches what it would run
(``--force`` re-executes it), so a rerun after an edit to a prose page or a killed build executes
only what changed or had not finished. ``html`` refuses to render a chapter without that record
(killed, failed, or edited since), naming it.

**A chapter that fails** keeps the chapters that finished; the others are still executed, and at the
end :class:`ChaptersFailed` names each failed chapter with its failing cell (``cell 4 of 12 (In [3])``,
its first source line, the error); the command prints it and exits 1.

**Progress.** Each chapter's kernel runs with ``$EQUIDIFF_PROGRESS_LOG`` naming a file that the
progress lines (:class:`equidiff.report.progress.ProgressLine`) and training bars
(:func:`equidiff.training.progress_bar`) also append to; a thread prints those lines as they come,
prefixed ``[<chapter>]`` (redrawn in place on a terminal, every few seconds in a log), with one line
per code cell as papermill starts it. What the executed notebook keeps does not change. The build
ends with a table: chapter, seconds, executed / reused / failed.

**How each page was made.** A finished chapter's executed copy gets, before it is recorded
(:func:`equidiff.report.reproduce.finish_notebook`): a last markdown cell, a collapsed "Reproduce
this page" box generated from the run (the parameters, the command that re-runs it and the
equivalent papermill command, the sha256 of the models it loaded, the machine, the wall time); the
Jupyter Book tag ``remove-cell`` on papermill's injected-parameters cell and ``hide-input`` on the
notebook's own ``parameters`` cell. The kernel runs in the book folder with ``output_dir`` relative
to it (``_generated/<name>``), and every path of the build machine left in the copy's text is
written relative, so no page shows a machine path.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from equidiff.report.progress import ProgressTail, Terminal
from equidiff.report.reproduce import finish_notebook, notebook_rel, relative, reproduce_cell

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"

# Parameters per profile; "cpu" is each notebook's own defaults. "smoke" is a seconds-long run of
# the same code path, used by the tests: the chapters on a World take the "smoke" world, whose tiny
# models and budgets come from equidiff/worlds/settings.py; only what a world does not decide is here.
PROFILES: dict[str, dict[str, dict]] = {
    "cpu": {},
    "smoke": {
        "00_world": {"profile": "smoke", "n_samples": 64, "stochastic_samples": 64},
        "01_circles": {"n_invariant": 32, "steps": 60, "prior_points": 16, "prior_steps": 40, "ddim_steps": 5},
        "02_neurons": {"profile": "smoke"},
        "03_sae": {"profile": "smoke", "min_rate": 0.0, "max_rate": 1.0, "n_features": 2},
        "04_classifier": {"profile": "smoke"},
        "05_applications": {"profile": "smoke", "n_queries": 1, "n_samples": 4, "steps": 3, "ddim_steps": 3,
                            "k": 2, "neuron": 5, "neuron_samples": 3, "neuron_steps": 2},
        "06_own_classifier": {"profile": "smoke", "n_samples": 2, "steps": 2, "ddim_steps": 2},
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


def models_hash() -> str | None:
    """sha256 of the shipped models' manifest (``data/models/manifest.json``, the sha256 of every shipped
    model file); None when there is none."""
    from equidiff.cache import MANIFEST, SHIPPED

    path = SHIPPED / MANIFEST
    return file_sha256(path) if path.is_file() else None


def run_key(notebook: Path, params: dict, code: str, models: str | None = None) -> str:
    """What identifies one execution of a chapter: its source notebook, its parameters, the package
    (:func:`package_hash`) and the shipped models (:func:`models_hash`)."""
    blob = json.dumps(run_inputs(notebook, params, code, models), sort_keys=True, default=str)
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


def run_inputs(notebook: Path, params: dict, code: str, models: str | None) -> dict:
    """What :func:`run_key` hashes, kept in the record so that a rerun can say which of them changed."""
    return {"notebook": file_sha256(notebook), "parameters": params, "package": code, "models": models}


def _what_changed(before: dict | None, now: dict | None) -> str:
    names = {"notebook": "its notebook", "parameters": "its parameters", "package": "the package's code",
             "models": "the shipped models (data/models/manifest.json)"}
    if isinstance(before, dict) and isinstance(now, dict):
        changed = [names[k] for k in names if json.dumps(before.get(k), sort_keys=True, default=str)
                   != json.dumps(now.get(k), sort_keys=True, default=str)]
        if changed:
            return " and ".join(changed) + " changed since it ran"
    return "its notebook, parameters, the package or the shipped models changed since it ran"


def unfinished_reason(gen: Path, name: str, key: str | None = None, inputs: dict | None = None) -> str | None:
    """None when ``<gen>`` holds a finished run of chapter ``name`` (of run ``key``, when given); else why not
    (``inputs``, :func:`run_inputs` of ``key``: which of them changed)."""
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
        return _what_changed(record.get("inputs"), inputs)
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


def _first_line(source) -> str:
    text = source if isinstance(source, str) else "".join(source or [])
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= 100 else line[:99] + "…"


_ENGINE = "equidiff-build"


def _register_engine() -> None:
    """Register papermill's nbclient engine with a hook at each cell's start (for the per-cell lines)."""
    from papermill.engines import NBClientEngine, papermill_engines

    if _ENGINE in papermill_engines._engines:
        return

    class BuildEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, on_cell=None, **kwargs):
            if on_cell is not None:
                start = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    with contextlib.suppress(Exception):  # a printing problem never stops the run
                        on_cell(cell, cell_index, len(nb_man.nb.cells))
                    return start(cell, cell_index, **kw)

                nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(_ENGINE, BuildEngine)


# glibc's malloc gives every block above its mmap threshold (32 MB at most) back to the kernel when torch
# frees it, so the next step's block of the same size is mapped and zero-filled again: chapter 00's
# 1,000-sample chains took 38 M page faults and 108 s of system time in 158 s. Serving every block from a
# heap that is never trimmed keeps the pages; the outputs are the same bit for bit (torch aligns its
# blocks itself), in 75 s. `benchmarks/bench_malloc.py` measures both side by side. A value the caller
# already set is kept. glibc reads these when a process starts, so they are set for the kernels.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


@contextlib.contextmanager
def _kernel_env(progress_log: Path):
    """The environment a chapter's kernel starts with: ``$EQUIDIFF_PROGRESS_LOG`` set; relative
    ``$EQUIDIFF_CACHE`` and ``$PYTHONPATH`` entries and the log itself made absolute (the kernel runs in
    the book folder: a build started with a relative ``--book`` once wrote its progress nowhere); the
    :data:`MALLOC_ENV` settings unless already set."""
    from equidiff.training import PROGRESS_LOG

    old = {k: os.environ.get(k) for k in (PROGRESS_LOG, "EQUIDIFF_CACHE", "PYTHONPATH", *MALLOC_ENV)}
    try:
        for k, v in MALLOC_ENV.items():
            os.environ.setdefault(k, v)
        os.environ[PROGRESS_LOG] = str(Path(progress_log).resolve())  # the kernel runs in the book folder
        if old["EQUIDIFF_CACHE"]:
            os.environ["EQUIDIFF_CACHE"] = str(Path(old["EQUIDIFF_CACHE"]).resolve())
        if old["PYTHONPATH"]:
            os.environ["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) if p else p
                                                       for p in old["PYTHONPATH"].split(os.pathsep))
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------------------------
# A failed chapter: which cell
# --------------------------------------------------------------------------------------------


class ChaptersFailed(RuntimeError):
    """Some chapters failed; the others finished and were recorded. ``failures``: one dict per failed
    chapter (``chapter``, ``cell`` (1-based, or None), ``cells``, ``exec_count``, ``line`` (the cell's
    first source line), ``error``, ``partial``); ``summary``: the build's rows (:func:`summary_table`)."""

    def __init__(self, failures: list[dict], summary: list[dict]):
        self.failures, self.summary = failures, summary
        lines = [f"{len(failures)} chapter(s) failed (the chapters that finished were kept):"]
        for f in failures:
            lines.append(f"  {f['chapter']}: {describe_failure(f)}")
            if f.get("partial"):
                lines.append(f"    the notebook as far as it ran: {f['partial']}")
        lines.append(f"rerun them with `python -m equidiff.build notebooks --only "
                     f"{' '.join(f['chapter'] for f in failures)}` (add --profile as before)")
        super().__init__("\n".join(lines))


def describe_failure(f: dict) -> str:
    """``cell 4 of 12 (In [3]) `raise ValueError(...)`: ValueError: ...`` (or the error alone)."""
    if f.get("cell") is None:
        return f"before any cell ran: {f['error']}"
    count = f" (In [{f['exec_count']}])" if f.get("exec_count") is not None else ""
    return f"cell {f['cell']} of {f['cells']}{count} `{f['line']}`: {f['error']}"


def failure_of(name: str, exc: BaseException, partial: Path, book: Path) -> dict:
    """What failed in chapter ``name``: the cell papermill marked in the partial copy (its
    ``metadata.papermill.exception``), else the one left running or pending, and the error."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    text = str(evalue if ename else exc).strip()
    error = f"{ename or type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    out = {"chapter": name, "cell": None, "cells": None, "exec_count": None, "line": "", "error": error.strip(),
           "partial": None}
    try:
        nb = json.loads(Path(partial).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return out
    out["partial"] = relative(Path(partial), Path(book))
    # without the two markdown cells papermill adds on a failure (a note on top, an anchor before the
    # cell): the cell numbers are those of the notebook that ran, as papermill's cell_index counts them
    cells = [c for c in nb.get("cells", [])
             if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    nb = {**nb, "cells": cells}
    index = getattr(exc, "cell_index", None)
    if not isinstance(index, int) or not 0 <= index < len(cells):
        marked = [i for i, c in enumerate(cells) if c.get("metadata", {}).get("papermill", {}).get("exception")]
        index = marked[0] if marked else (open_cells(nb) or [None])[0]
    if index is None:
        return out
    cell = cells[index]
    out.update(cell=index + 1, cells=len(cells), exec_count=cell.get("execution_count"),
               line=_first_line(cell.get("source")))
    return out


# --------------------------------------------------------------------------------------------
# Executing the chapters
# --------------------------------------------------------------------------------------------


def summary_table(rows: list[dict]) -> str:
    """The build's closing table: chapter | seconds (this build) | executed / reused / failed."""
    width = max([len("chapter")] + [len(r["chapter"]) for r in rows])
    lines = [f"{'chapter':<{width}}  {'seconds':>8}  result"]
    for r in rows:
        lines.append(f"{r['chapter']:<{width}}  {r['seconds']:>8.1f}  {r['result']}" +
                     (f" ({r['note']})" if r.get("note") else ""))
    lines.append(f"{'total':<{width}}  {sum(r['seconds'] for r in rows):>8.1f}")
    return "\n".join(lines)


def _defaults(notebook: Path) -> dict:
    """The values of the notebook's own ``parameters`` cell ({} when it has none)."""
    from equidiff.report.record import notebook_defaults

    try:
        return notebook_defaults(str(notebook))
    except (ValueError, SyntaxError):
        return {}


def _read_json(path: Path) -> dict:
    try:
        out = json.loads(Path(path).read_text())
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError):
        return {}


def execute_notebooks(book: Path, profile: str = "cpu", only: list[str] | None = None,
                      extra: dict | None = None, force: bool = False, notebooks: Path = NOTEBOOKS,
                      terminal: Terminal | None = None) -> list[Path]:
    """Run each notebook of ``notebooks`` with papermill (``only``: these; a chapter that already finished
    with the same notebook, parameters, package and shipped models is reused unless ``force``); returns
    the executed copies. Each chapter runs into ``<name>.partial.ipynb`` in the book folder, with
    ``output_dir`` ``_generated/<name>``; only a finished run becomes ``<name>.ipynb`` (with its
    "Reproduce this page" cell, :func:`finish_notebook`) and gets its record ``<name>.done.json`` (see
    the module docstring). A failing chapter does not stop the others: when every chapter has had its
    turn, :class:`ChaptersFailed` names each failed one and its cell. Prints one line per code cell and
    the chapters' progress lines as they run, and a closing :func:`summary_table`."""
    import papermill as pm

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    notebooks = Path(notebooks)
    names = notebook_names(notebooks)
    for n in only or []:
        if n not in names:
            raise ValueError(f"only: no notebook named {n!r}; there are {names}")
    book = Path(book)
    gen = book / "_generated"
    gen.mkdir(parents=True, exist_ok=True)
    term = terminal or Terminal()
    code, manifest = package_hash(), models_hash()
    _register_engine()
    done, rows, failures = [], [], []
    for name in only or names:
        t0 = time.perf_counter()
        f = chapter_files(gen, name)
        params = {**PROFILES[profile].get(name, {}), **(extra or {})}
        params["output_dir"] = f"{gen.name}/{name}"  # relative to the book, the kernel's working folder
        source = notebooks / f"{name}.ipynb"
        key = run_key(source, params, code, manifest)
        inputs = run_inputs(source, params, code, manifest)
        why = "--force" if force else unfinished_reason(gen, name, key, inputs)
        if why is None:
            record = json.loads(f["record"].read_text())
            term.line(f"[equidiff] {name}: reused (finished {record.get('finished', '?')} with the same notebook, "
                      f"parameters, package and models; --force re-executes it)")
            done.append(f["executed"])
            rows.append({"chapter": name, "seconds": time.perf_counter() - t0, "result": "reused",
                         "note": f"its run took {record.get('seconds', '?')} s"})
            continue
        # the chapter is unfinished from here until its record is written: no old record, copy or figures
        for path in (f["record"], f["executed"], f["partial"]):
            path.unlink(missing_ok=True)
        shutil.rmtree(f["output"], ignore_errors=True)
        log = gen / f".{name}.progress.jsonl"
        log.unlink(missing_ok=True)
        log.touch()
        term.line(f"[equidiff] executing {notebook_rel(notebooks, name)} ({profile} profile; {why})")

        def on_cell(cell, index, total, name=name):
            if cell.get("cell_type") == "code":
                injected = "injected-parameters" in cell.get("metadata", {}).get("tags", [])
                what = "the parameters the build passed" if injected else _first_line(cell.get("source"))
                term.line(f"[{name}] cell {index + 1} of {total}: {what}")

        tail = ProgressTail(log, name, term)
        tail.start()
        try:
            with _kernel_env(log):
                pm.execute_notebook(str(source), str(f["partial"]), parameters=params, kernel_name="python3",
                                    cwd=str(book), progress_bar=False, engine_name=_ENGINE, on_cell=on_cell)
            seconds = time.perf_counter() - t0
            nb = json.loads(f["partial"].read_text(encoding="utf-8"))
            if open_cells(nb) or not (f["output"] / "metrics.json").is_file():
                raise RuntimeError(f"papermill returned but cells {[i + 1 for i in open_cells(nb)]} did not "
                                   f"complete or {params['output_dir']}/metrics.json was not written")
        except Exception as e:  # noqa: BLE001 - any failure of one chapter: the others still run
            tail.stop()
            failure = failure_of(name, e, f["partial"], book)
            failures.append(failure)
            term.line(f"[equidiff] {name}: FAILED at {describe_failure(failure)}")
            rows.append({"chapter": name, "seconds": time.perf_counter() - t0, "result": "failed",
                         "note": describe_failure(failure)})
            log.unlink(missing_ok=True)
            continue
        finally:
            if tail.is_alive():
                tail.stop()
        log.unlink(missing_ok=True)
        metrics = _read_json(f["output"] / "metrics.json")
        finished = time.strftime("%Y-%m-%d %H:%M:%S")
        defaults = _defaults(source)
        ran_with = metrics.get("parameters") if isinstance(metrics.get("parameters"), dict) else {**defaults, **params}
        ran_with = {**ran_with, "output_dir": params["output_dir"]}
        models = metrics.get("loaded_models") if isinstance(metrics.get("loaded_models"), dict) else None
        source_rel = notebook_rel(notebooks, name)
        reproduce = reproduce_cell(name, profile=profile, injected=params, parameters=ran_with, seconds=seconds,
                                   finished=finished, models=models, machine=metrics.get("machine"),
                                   manifest=manifest, notebook=source_rel, extra=bool(extra),
                                   default_output=defaults.get("output_dir"))
        finish_notebook(f["partial"], name, book, notebooks, reproduce)
        os.replace(f["partial"], f["executed"])  # atomic: the executed copy is always a whole run
        record = {"key": key, "inputs": inputs, "notebook_sha256": file_sha256(f["executed"]), "profile": profile,
                  "parameters": params, "models_manifest_sha256": manifest, "loaded_models": models,
                  "seconds": round(seconds, 1), "finished": finished}
        tmp = f["record"].with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, f["record"])  # written last: the mark of a finished chapter
        term.line(f"[equidiff] {name}: done in {seconds:.0f} s")
        done.append(f["executed"])
        rows.append({"chapter": name, "seconds": time.perf_counter() - t0, "result": "executed"})
    term.line("\n".join(f"[equidiff] {ln}" for ln in summary_table(rows).splitlines()))
    if failures:
        raise ChaptersFailed(failures, rows)
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
    from equidiff.report.explorer import export_explorer  # the explorer page's model and chapter 1's samples
    from equidiff.report.landing import write_landing  # the cards book/intro.md includes

    write_landing(book, book_chapters(book))
    export_explorer(book)
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
        try:
            execute_notebooks(Path(a.book), a.profile, a.only, force=a.force, notebooks=Path(a.notebooks))
        except ChaptersFailed as e:
            print(f"[equidiff] {e}", file=sys.stderr)
            return 1
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
