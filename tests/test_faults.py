"""Faults injected into copies (issue 18): NaN weights in the model or the prior, and a real smoke
chapter killed at a seeded random cell and rerun, compared bitwise with an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from equidiff.core import objectives as O
from equidiff.core.invariants import InvariantConfig, find_invariants
from equidiff.core.priors import IdentityPrior, PixelDDIMPrior
from equidiff.worlds.digits import recipes

ROOT = Path(__file__).resolve().parent.parent


def _tiny_prior():
    torch.manual_seed(0)
    cfg = recipes.PRESETS["digits-ddpm-tiny"]()
    return recipes.build_unet(cfg).eval(), recipes.build_scheduler(cfg)


def test_a_model_with_a_nan_weight_is_refused_before_the_first_step():
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 3)).eval()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"objective\(query\) is not finite"):
        find_invariants(O.logits(model), torch.zeros(1, 1, 16, 16), IdentityPrior((1, 16, 16)),
                        InvariantConfig(n_samples=2, steps=3))


def test_a_prior_with_a_nan_weight_is_named_before_any_optimisation():
    unet, sched = _tiny_prior()
    with torch.no_grad():
        next(unet.parameters()).fill_(float("nan"))
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 3)).eval()
    with pytest.raises(FloatingPointError, match=r"prior PixelDDIMPrior returned non-finite images \(NaN or inf\) "
                                                 r"for samples \[0, 1\] of its first batch, before any optimisation"):
        find_invariants(O.logits(model), torch.zeros(1, 1, 16, 16), PixelDDIMPrior(unet, sched, num_steps=3),
                        InvariantConfig(n_samples=2, steps=3))


def _code_cells(nb: dict) -> list[int]:
    return [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def _arrays(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("*.np[yz]")):
        data = np.load(f)
        out[f.name] = {k: data[k] for k in data.files} if f.suffix == ".npz" else {"": data}
    return out


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (read from /proc: the build's kernel runs in a session of its own)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _without_timing(d):
    if isinstance(d, dict):
        # the machine record names the thread count, which this test's rerun sets to 1
        skip = ("seconds", "train_seconds", "output_dir", "machine")
        return {k: _without_timing(v) for k, v in d.items() if k not in skip}
    if isinstance(d, list):
        return [_without_timing(v) for v in d]
    return d


@pytest.mark.book
def test_a_chapter_killed_at_a_seeded_random_cell_reruns_to_the_uninterrupted_result(built_book, tmp_path):
    """SIGKILL ``python -m equidiff.build notebooks`` (and its kernel) while chapter 1 (smoke) runs a cell
    drawn by a seeded RNG; the killed chapter is not recorded as finished, and the rerun writes metrics and
    arrays equal, bit for bit, to those of the uninterrupted run in the session's smoke book."""
    import shutil

    book, _ = built_book
    name = "01_circles"
    again = tmp_path / "book"
    shutil.copytree(ROOT / "book", again, ignore=shutil.ignore_patterns("_build", "_generated", "_extra"))
    source = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    # papermill adds the injected-parameters cell after the parameters cell: indices shift by one from there
    code = _code_cells(source)
    k = random.Random(18).choice(code[1:])  # the seeded cell, never the parameters cell
    k_exec = k + 1
    partial = again / "_generated" / f"{name}.partial.ipynb"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "equidiff.build", "notebooks", "--book", str(again), "--profile", "smoke",
           "--only", name]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline, running = time.time() + 600, False
    while time.time() < deadline and proc.poll() is None:
        try:
            nb = json.loads(partial.read_text())
            running = nb["cells"][k_exec].get("metadata", {}).get("papermill", {}).get("status") == "running"
        except (OSError, ValueError, IndexError, KeyError):
            running = False
        if running:
            break
        time.sleep(0.05)
    assert running, f"cell {k_exec} of {name} was never seen running (build exited {proc.poll()})"
    below = _descendants(proc.pid)  # the kernel, which runs in a session of its own
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=60)
    gen = again / "_generated"
    assert not (gen / f"{name}.done.json").exists() and not (gen / f"{name}.ipynb").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert (gen / f"{name}.done.json").exists()
    first = json.loads((book / "_generated" / name / "metrics.json").read_text())
    second = json.loads((gen / name / "metrics.json").read_text())
    assert _without_timing(first) == _without_timing(second)
    a, b = _arrays(book / "_generated" / name), _arrays(gen / name)
    assert a.keys() == b.keys()
    for f in a:
        for key in a[f]:
            assert np.array_equal(a[f][key], b[f][key]), (f, key)
