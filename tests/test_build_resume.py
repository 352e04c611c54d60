"""The book build never publishes a half-run chapter, and a rerun reuses the chapters that finished.

Two tiny notebooks (no torch: a kernel starts in about a second) stand in for the chapters, in a
tiny book whose ``_toc.yml`` lists them. A chapter is injected to fail (a parameter) or killed with
SIGKILL in the middle of a cell (``python -m equidiff.build notebooks`` in a subprocess, its kernel
killed by the pid the cell wrote): ``html`` then stops naming it, before Jupyter Book runs, and
``notebooks`` re-executes it alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from equidiff import build

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["a_first", "b_second"]

CELL = """import json, os, time
from pathlib import Path
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "started.json").write_text(json.dumps({"pid": os.getpid()}))
time.sleep(float(os.environ.get("EQUIDIFF_TEST_SLEEP_" + NAME, "0")))
if fail:
    raise RuntimeError("injected failure")
(out / "metrics.json").write_text(json.dumps({"chapter": NAME, "pid": os.getpid()}))
"""


def _notebook(name: str) -> dict:
    def code(src, tags=()):
        return {"cell_type": "code", "id": f"c{len(tags)}", "execution_count": None, "metadata": {"tags": list(tags)},
                "outputs": [], "source": src}

    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}},
            "cells": [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": f"# {name}"},
                      code(f'NAME = "{name}"\noutput_dir = "out"\nfail = False', ["parameters"]), code(CELL)]}


@pytest.fixture
def tiny(tmp_path):
    notebooks, book = tmp_path / "notebooks", tmp_path / "book"
    notebooks.mkdir()
    book.mkdir()
    for n in NAMES:
        (notebooks / f"{n}.ipynb").write_text(json.dumps(_notebook(n)))
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n"
                                   + "".join(f"  - file: _generated/{n}\n" for n in NAMES) + "  - file: theory\n")
    return notebooks, book


def _run(book, notebooks, **kw):
    return build.execute_notebooks(book, notebooks=notebooks, **kw)


def _html_refuses(book, capsys, *names):
    """``build html`` exits 1 naming ``names`` (and only them), before rendering anything."""
    assert build.main(["html", "--book", str(book)]) == 1
    err = capsys.readouterr().err
    assert "not rendering the book" in err
    for n in NAMES:
        assert (f"  {n}: " in err) == (n in names), (n, err)
    assert not (book / "_extra").exists() and not (book / "_build").exists()  # nothing was rendered
    return err


def test_finished_chapters_are_recorded_and_reused(tiny, capsys):
    notebooks, book = tiny
    gen = book / "_generated"
    assert _run(book, notebooks) == [gen / f"{n}.ipynb" for n in NAMES]
    assert build.check_finished(book) == NAMES
    record = json.loads((gen / "a_first.done.json").read_text())
    assert record["notebook_sha256"] == build.file_sha256(gen / "a_first.ipynb")
    assert not list(gen.glob("*.partial.ipynb"))
    pids = {n: json.loads((gen / n / "metrics.json").read_text())["pid"] for n in NAMES}
    capsys.readouterr()
    _run(book, notebooks)  # nothing changed: both reused, nothing executed
    assert capsys.readouterr().out.count(": reused (finished") == 2
    assert {n: json.loads((gen / n / "metrics.json").read_text())["pid"] for n in NAMES} == pids
    _run(book, notebooks, only=["b_second"], force=True)  # --force re-executes
    assert json.loads((gen / "b_second" / "metrics.json").read_text())["pid"] != pids["b_second"]
    (notebooks / "a_first.ipynb").write_text(json.dumps(_notebook("a_first")).replace("# a_first", "# A"))
    capsys.readouterr()
    _run(book, notebooks)  # a changed notebook is re-executed, the other reused
    out = capsys.readouterr().out
    assert "a_first: reused" not in out and "b_second: reused" in out
    assert "a_first.ipynb (cpu profile; its notebook changed since it ran)" in out  # says what changed
    # an executed copy edited after its run finished is not published
    nb = gen / "b_second.ipynb"
    nb.write_text(nb.read_text().replace("injected failure", "edited"))
    with pytest.raises(build.UnfinishedChapters, match="b_second: its executed copy b_second.ipynb changed"):
        build.check_finished(book)


def test_a_failed_chapter_is_not_rendered_and_a_rerun_executes_it_alone(tiny, capsys):
    notebooks, book = tiny
    gen = book / "_generated"
    _run(book, notebooks)
    with pytest.raises(build.ChaptersFailed, match="b_second: cell 4 of 4 .*RuntimeError: injected failure"):
        _run(book, notebooks, only=["b_second"], extra={"fail": True})
    # the failed run left its partial copy and no record, metrics or old executed copy
    assert not (gen / "b_second.done.json").exists() and not (gen / "b_second" / "metrics.json").exists()
    assert not (gen / "b_second.ipynb").exists() and (gen / "b_second.partial.ipynb").exists()
    err = _html_refuses(book, capsys, "b_second")
    assert "b_second: its last run did not finish" in err and "--only b_second" in err
    capsys.readouterr()
    _run(book, notebooks)
    out = capsys.readouterr().out
    assert "a_first: reused" in out and "b_second: reused" not in out
    assert build.check_finished(book) == NAMES and not (gen / "b_second.partial.ipynb").exists()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.2)


def test_a_killed_build_is_not_rendered_and_a_rerun_reuses_what_finished(tiny, capsys):
    notebooks, book = tiny
    gen = book / "_generated"
    _run(book, notebooks)  # an earlier, complete build
    env = {**os.environ, "EQUIDIFF_TEST_SLEEP_b_second": "600",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "equidiff.build", "notebooks", "--book", str(book), "--notebooks", str(notebooks),
           "--force"]
    proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    kernel = None
    try:
        started = gen / "b_second" / "started.json"
        _wait_for(gen / "b_second.partial.ipynb", proc)  # a_first re-ran and finished; b_second started (its
        _wait_for(started, proc)  # old output folder removed first), and is now inside its long cell
        time.sleep(1.0)  # papermill has saved the partial copy with that cell running
        kernel = json.loads(started.read_text())["pid"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the build (its own session) and, below, its kernel
        proc.wait(timeout=30)
        if kernel is not None:
            try:
                os.kill(kernel, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == -signal.SIGKILL
    partial = json.loads((gen / "b_second.partial.ipynb").read_text())
    assert build.open_cells(partial) == [3]  # the cell after the injected parameters, left "running"
    assert not (gen / "b_second" / "metrics.json").exists() and not (gen / "b_second.ipynb").exists()
    err = _html_refuses(book, capsys, "b_second")
    assert "b_second: its last run did not finish" in err
    # the rerun (without --force) reuses a_first, which finished in the killed build, and runs b_second
    pid_a = json.loads((gen / "a_first" / "metrics.json").read_text())["pid"]
    capsys.readouterr()
    _run(book, notebooks)
    out = capsys.readouterr().out
    assert "a_first: reused" in out and "b_second: reused" not in out
    assert json.loads((gen / "a_first" / "metrics.json").read_text())["pid"] == pid_a
    assert build.check_finished(book) == NAMES


def test_the_real_book_lists_every_chapter():
    assert build.book_chapters(ROOT / "book") == build.notebook_names()
