"""What ``python -m equidiff.build notebooks`` tells its user and the reader (issue 16).

Tiny notebooks in a temp folder stand in for the chapters (a kernel without torch starts in about a
second): the run key covers the shipped models' manifest; a failing chapter keeps the others and is
named with its cell; the chapters' progress lines reach the build's stdout while the notebook keeps
one display output; the build ends with a table; every executed copy ends with a "Reproduce this
page" box generated from the run, hides papermill's injected cell and holds no path of this machine.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equidiff import build, cache
from equidiff.report import progress, record, reproduce

ROOT = Path(__file__).resolve().parent.parent


def _code(src: str, tags=()) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {"tags": list(tags)}, "outputs": [],
            "source": src}


def _notebook(name: str, *cells: dict, params: str = "") -> dict:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": f"# {name}"},
             _code(f'NAME = "{name}"\noutput_dir = "out"  # folder for metrics.json\n{params}', ["parameters"]),
             *cells]
    for i, c in enumerate(cells):
        c["id"] = f"c{i}"
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}},
            "cells": cells}


METRICS = """import json, os
from pathlib import Path
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({"chapter": NAME, "pid": os.getpid()}))"""

FAILS = """import os
if NAME in os.environ.get("EQUIDIFF_TEST_FAIL", "").split(","):
    raise ValueError(f"steps must be an integer, got {NAME!r}")"""


def _folders(tmp_path, notebooks: dict[str, dict]):
    nbs, book = tmp_path / "notebooks", tmp_path / "book"
    nbs.mkdir()
    book.mkdir()
    for name, nb in notebooks.items():
        (nbs / f"{name}.ipynb").write_text(json.dumps(nb))
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n"
                                   + "".join(f"  - file: _generated/{n}\n" for n in notebooks))
    return nbs, book


def test_the_run_key_covers_the_shipped_models_manifest(tmp_path, monkeypatch, capsys):
    shipped = tmp_path / "models"
    shipped.mkdir()
    manifest = shipped / cache.MANIFEST
    manifest.write_text(json.dumps({"models": {"m-1": {"sha256": {"model.safetensors": "a" * 64}}}}))
    monkeypatch.setattr(cache, "SHIPPED", shipped)
    nbs, book = _folders(tmp_path, {"a_first": _notebook("a_first", _code(METRICS))})
    source = nbs / "a_first.ipynb"
    first = build.models_hash()
    assert first == build.file_sha256(manifest)
    key = build.run_key(source, {"x": 1}, "code", first)
    assert key == build.run_key(source, {"x": 1}, "code", first)
    build.execute_notebooks(book, notebooks=nbs)
    build.execute_notebooks(book, notebooks=nbs)
    assert capsys.readouterr().out.count("a_first: reused (finished") == 1
    # a retrained shipped model changes the manifest: the key, and the chapter is executed again
    manifest.write_text(json.dumps({"models": {"m-1": {"sha256": {"model.safetensors": "b" * 64}}}}))
    assert build.models_hash() != first and build.run_key(source, {"x": 1}, "code", build.models_hash()) != key
    build.execute_notebooks(book, notebooks=nbs)
    out = capsys.readouterr().out
    assert "a_first: reused" not in out and "a_first: done in" in out
    assert "(cpu profile; the shipped models (data/models/manifest.json) changed since it ran)" in out
    assert json.loads((book / "_generated" / "a_first.done.json").read_text())["models_manifest_sha256"] \
        == build.file_sha256(manifest)
    manifest.unlink()
    assert build.models_hash() is None


def test_a_failing_chapter_keeps_the_others_and_names_its_cell(tmp_path, monkeypatch, capsys):
    names = ["a_first", "b_second", "c_third"]
    nbs, book = _folders(tmp_path, {n: _notebook(n, _code(FAILS), _code(METRICS)) for n in names})
    gen = book / "_generated"
    monkeypatch.setenv("EQUIDIFF_TEST_FAIL", "b_second")
    assert build.main(["notebooks", "--book", str(book), "--notebooks", str(nbs)]) == 1
    cap = capsys.readouterr()
    # the chapter after the failed one was still executed; both good ones are recorded
    for n in ("a_first", "c_third"):
        assert build.unfinished_reason(gen, n) is None, n
    assert not (gen / "b_second.done.json").exists() and (gen / "b_second.partial.ipynb").exists()
    # the error names the chapter, its cell (of the notebook that ran: markdown, parameters, injected,
    # the failing cell) and that cell's first line, and papermill's ename/evalue
    assert "1 chapter(s) failed" in cap.err
    assert ("  b_second: cell 4 of 5 (In [3]) `import os`: ValueError: steps must be an integer, got 'b_second'"
            in cap.err), cap.err
    assert "the notebook as far as it ran: _generated/b_second.partial.ipynb" in cap.err
    assert "--only b_second" in cap.err
    assert str(tmp_path) not in cap.err
    # the closing table: one row per chapter, executed / failed
    rows = {ln.split()[1]: ln.split()[2:] for ln in cap.out.splitlines() if ln.startswith("[equidiff] ")
            and len(ln.split()) >= 4 and ln.split()[1] in names}
    assert rows["a_first"][1] == "executed" and rows["c_third"][1] == "executed"
    assert rows["b_second"][1] == "failed" and float(rows["b_second"][0]) > 0
    assert "[equidiff] chapter" in cap.out and "seconds" in cap.out and "[equidiff] total" in cap.out
    # fixed: the rerun reuses the two that finished, executes the failed one, and says so in its table
    monkeypatch.delenv("EQUIDIFF_TEST_FAIL")
    assert build.main(["notebooks", "--book", str(book), "--notebooks", str(nbs)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("[equidiff] chapter"):]
    assert [ln.split()[3] for ln in table.splitlines()[1:4]] == ["reused", "executed", "reused"]
    assert build.check_finished(book) == names


PROGRESS = """import time
from equidiff.report.progress import ProgressLine
from equidiff.training import progress_bar
with ProgressLine(5, "counting apples", every=0.0) as bar:
    for i in range(1, 6):
        bar.update_to(i, f"{i}/5 baskets done")
        time.sleep(0.05)
train = progress_bar(3, "training toy model", enabled=False)
for _ in range(3):
    train.update(1)
train.close()"""


def test_progress_lines_reach_the_build_and_the_notebook_keeps_one_line(tmp_path, capsys):
    nbs, book = _folders(tmp_path, {"p_progress": _notebook("p_progress", _code(PROGRESS), _code(METRICS))})
    build.execute_notebooks(book, notebooks=nbs)
    out = capsys.readouterr().out.splitlines()
    # the per-cell lines, then the progress line's and the training bar's states, prefixed by the chapter
    assert "[p_progress] cell 4 of 5: import time" in out
    apples = [ln for ln in out if ln.startswith("[p_progress] counting apples:")]
    assert apples and "5/5" in apples[-1] and "5/5 baskets done" in apples[-1]
    trained = [ln for ln in out if ln.startswith("[p_progress] training toy model:")]
    assert trained and "3/3" in trained[-1]
    assert not list((book / "_generated").glob(".*progress*"))  # the channel is removed after the chapter
    # what the notebook keeps is unchanged: the progress line is one display output, no stderr bar
    nb = json.loads((book / "_generated" / "p_progress.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "ProgressLine" in "".join(c["source"]))
    shown = ["".join(o["data"]["text/plain"]) for o in cell["outputs"] if o["output_type"] == "display_data"]
    assert len(shown) == 1 and "5/5 baskets done" in shown[0]
    assert not [o for o in cell["outputs"] if o.get("name") == "stderr"], cell["outputs"]


def test_the_terminal_redraws_a_bar_in_place_on_a_tty_and_throttles_it_in_a_log(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    term = progress.Terminal(tty)
    term.progress("a/1", "[a] bar 1/3")
    term.progress("a/1", "[a] bar 2/3")
    term.line("[a] cell 5 of 9: x = 1")
    term.progress("a/1", "[a] bar 3/3", final=True)
    assert tty.getvalue() == "[a] bar 1/3\r\033[K[a] bar 2/3\n[a] cell 5 of 9: x = 1\n[a] bar 3/3\n"
    log = io.StringIO()
    term = progress.Terminal(log)
    for i in range(1, 4):
        term.progress("a/1", f"[a] bar {i}/4")  # within LOG_EVERY of the first: not printed
    term.progress("a/1", "[a] bar 4/4", final=True)
    assert log.getvalue() == "[a] bar 1/4\n[a] bar 4/4\n"


REPRODUCE = """import json, os
from pathlib import Path
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
print("wrote", out.resolve() / "metrics.json")  # an absolute path in an output: written relative on the page
print("repository", os.environ["EQUIDIFF_TEST_REPO"], "home", os.path.expanduser("~"))
(out / "metrics.json").write_text(json.dumps({
    "parameters": {"NAME": NAME, "output_dir": str(out.resolve()), "n": n, "label": label, "mode": mode, "xs": xs},
    "loaded_models": {"digits-ddpm-0123456789ab": "ab" * 32},
    "machine": {"cpu": "Test CPU 9000", "cores": 7, "torch_threads": 1, "python": "3.11.7", "torch": "2.0",
                "diffusers": "0.1", "timm": "1.0"}}))"""


def test_every_page_says_how_it_was_made_and_holds_no_machine_path(tmp_path, monkeypatch):
    params = 'n = 1  # int\nlabel = "0"  # a string\nmode = "slow"\nxs = [0]'
    nbs, book = _folders(tmp_path, {"r_page": _notebook("r_page", _code(REPRODUCE), params=params)})
    monkeypatch.setenv("EQUIDIFF_TEST_REPO", str(ROOT))
    extra = {"n": 3, "label": "7", "mode": "fast", "xs": [1, 2]}
    build.execute_notebooks(book, notebooks=nbs, extra=extra)
    executed = book / "_generated" / "r_page.ipynb"
    text = executed.read_text()
    for path in {str(tmp_path), str(tmp_path.resolve()), str(ROOT), str(Path.home())}:
        assert path not in text, path  # no absolute path of this machine anywhere in the executed copy
    assert "wrote _generated/r_page/metrics.json" in text and "repository . home ~" in text
    nb = json.loads(text)
    tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
    assert tags[1] == ["parameters", "hide-input"] and tags[2] == ["injected-parameters", "remove-cell"]
    last = nb["cells"][-1]
    assert last["cell_type"] == "markdown"
    box = "".join(last["source"])
    assert box.startswith("````{dropdown} Reproduce this page\n") and box.rstrip().endswith("````")
    assert "```bash\npython -m equidiff.build notebooks --only r_page --force\n```" in box
    # the parameters it ran with (the run's record), output_dir relative to the book
    assert ('NAME = "r_page"\noutput_dir = "_generated/r_page"  # relative to the book\nn = 3\nlabel = "7"\n'
            'mode = "fast"\nxs = [1, 2]\n') in box
    assert "| `digits-ddpm-0123456789ab` | `" + "ab" * 32 + "` |" in box
    assert "Test CPU 9000, 7 core(s), 1 torch thread(s); Python 3.11.7, torch 2.0, diffusers 0.1, timm 1.0" in box
    assert "wall time" in box and "`out`" in box  # the notebook's own output_dir, where a papermill run writes
    # the papermill command is equivalent: papermill itself parses it to the parameters the build passed
    cmd = next(ln for ln in box.splitlines() if ln.startswith("papermill "))
    args = shlex.split(cmd)
    prepared = tmp_path / "prepared.ipynb"
    args[2] = str(prepared)
    subprocess.run([str(Path(sys.executable).parent / "papermill"), *args[1:], "--prepare-only"], cwd=tmp_path,
                   check=True, capture_output=True)
    injected = next(c for c in json.loads(prepared.read_text())["cells"]
                    if "injected-parameters" in c["metadata"].get("tags", []))
    namespace: dict = {}
    exec("".join(injected["source"]), namespace)
    assert {k: namespace[k] for k in extra} == extra
    # the record's sha256 is of the page as edited, so html accepts it
    assert build.check_finished(book) == ["r_page"]


def test_without_machine_paths_rewrites_text_and_leaves_images_alone(tmp_path):
    book = tmp_path / "book"
    prefixes = reproduce.path_prefixes(book, ROOT / "notebooks")
    nb = {"cells": [{"outputs": [{"text": f"saved {book}/_generated/a/fig.png and {ROOT}/.venv/x.py:3 in {ROOT}",
                                  "data": {"image/png": f"{book}/raw", "text/plain": f"{Path.home()}/.cache"}}]}]}
    got = reproduce.without_machine_paths(nb, prefixes)["cells"][0]["outputs"][0]
    assert got["text"] == "saved _generated/a/fig.png and .venv/x.py:3 in ."
    assert got["data"] == {"image/png": f"{book}/raw", "text/plain": "~/.cache"}
    assert reproduce.without_machine_paths({"s": f"{ROOT}mainframe"}, prefixes) == {"s": f"{ROOT}mainframe"}


def test_write_metrics_records_the_models_a_notebook_run_loaded(tmp_path, monkeypatch):
    folder = tmp_path / "tiny-linear-0123"
    torch.manual_seed(0)
    with cache.atomic_folder(folder) as tmp:
        cache.save_state(torch.nn.Linear(2, 2), tmp, {"hidden": 2})
    cache.load_state(torch.nn.Linear(2, 2), folder)
    weights = cache.sha256_file(folder / "model.safetensors")
    assert cache.loaded_models()["tiny-linear-0123"] == weights
    # outside a kernel (a script, these tests) nothing is added unless given
    path = record.write_metrics(tmp_path / "plain", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    # in a notebook's kernel: the models this process loaded and the machine
    monkeypatch.setattr(record, "in_kernel", lambda: True)
    monkeypatch.setattr("equidiff.training.machine", lambda: {"cpu": "Test CPU", "cores": 1})
    got = json.loads(record.write_metrics(tmp_path / "kernel", {"a": 1}).read_text())
    assert got["loaded_models"]["tiny-linear-0123"] == weights and got["machine"] == {"cpu": "Test CPU", "cores": 1}
    kept = json.loads(record.write_metrics(tmp_path / "own", {"machine": "mine"}, models={}).read_text())
    assert kept == {"machine": "mine", "loaded_models": {}}


def test_the_progress_log_a_kernel_gets_is_absolute_for_a_relative_book(tmp_path, monkeypatch):
    """The kernel runs in the book folder: a relative log path (``--book book``) would point nowhere."""
    from equidiff.training import PROGRESS_LOG

    monkeypatch.chdir(tmp_path)
    with build._kernel_env(Path("book/_generated/.x.progress.jsonl")):
        path = Path(os.environ[PROGRESS_LOG])
    assert path.is_absolute() and path == tmp_path / "book" / "_generated" / ".x.progress.jsonl"


def test_kernels_get_the_malloc_settings_unless_the_caller_set_them(tmp_path, monkeypatch):
    """glibc reads MALLOC_* when a process starts: the build sets them for each kernel, keeps a value the
    caller chose, and leaves the build's own environment as it was."""
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    with build._kernel_env(tmp_path / ".x.progress.jsonl"):
        assert os.environ["MALLOC_MMAP_MAX_"] == build.MALLOC_ENV["MALLOC_MMAP_MAX_"] == "0"
        assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"
    assert "MALLOC_MMAP_MAX_" not in os.environ and os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"
