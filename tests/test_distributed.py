"""Sharded runs of many work items (equidiff.run.torchrun): torchrun with the gloo backend and 2 CPU
processes on tiny random paper-class models; the merged result equals a single-process run, and a
rerun skips the items already done."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from equidiff.run import torchrun as distributed
from equidiff.testing import write_tiny_models

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    cfg = write_tiny_models(root / "models")
    rng = np.random.default_rng(0)
    for name in ("stripes", "cells"):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / f"{name}.png")
    pc = cfg.to_dict()
    pc.pop("device")
    config = {"paper": pc, "invariant": {"n_samples": 2, "steps": 3, "tau": 1e-6, "lr": 0.1}}
    (root / "config.json").write_text(json.dumps(config))
    # neurons 3 and 17 of the tiny last stage, each with its own query, two seeds: 4 items
    items = distributed.make_items([3, 17], [str(root / "stripes.png"), str(root / "cells.png")], [0, 1])
    return root, config, items


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _strip_timing(meta):
    return [{k: v for k, v in r.items() if k != "timing"} for r in meta["items"]]


# ---------------------------------------------------------------- items, shards, files


def test_items_and_shards():
    items = distributed.make_items([1656, 1052, 421], ["z.jpg", "h.jpg", "g.jpg"], [0, 1])
    assert len(items) == 6 and items[0] == {"channel": 1656, "query": "z.jpg", "seed": 0}
    assert [distributed.item_id(i) for i in items[:2]] == ["c1656_z_s0", "c1656_z_s1"]
    assert len(distributed.make_items([1, 2], ["a.png", "b.png"], [0], pairing="product")) == 4
    assert len(distributed.make_items([1, 2, 3], ["a.png"])) == 3  # one query for every channel
    shards = [distributed.shard(items, r, 4) for r in range(4)]
    assert sorted(sum(shards, []), key=items.index) == items  # every item exactly once
    assert [len(s) for s in shards] == [2, 2, 1, 1]
    with pytest.raises(ValueError, match="queries must be 1 or as many as channels"):
        distributed.make_items([1, 2, 3], ["a.png", "b.png"])
    with pytest.raises(ValueError, match="pairing must be 'zip' or 'product'"):
        distributed.make_items([1], ["a.png"], pairing="cross")
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        distributed.make_items([1], ["a.png"], [])
    with pytest.raises(ValueError, match="share the id"):
        distributed.make_items([1], ["x/a.png", "y/a.png"], pairing="product")
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 1\]"):
        distributed.shard(items, 2, 2)


def test_item_files_are_atomic_and_config_checked(tmp_path):
    arrays = {"x": torch.arange(6.0).view(2, 3), "ok": torch.tensor([True, False])}
    distributed.write_item(tmp_path, "c1_a_s0", {"config_hash": "h1", "v": 1.5}, arrays)
    assert sorted(p.name for p in (tmp_path / "items").iterdir()) == ["c1_a_s0.json", "c1_a_s0.safetensors"]
    rec, arr = distributed.read_item(tmp_path, "c1_a_s0")
    assert rec["v"] == 1.5 and rec["arrays"] == ["ok", "x"]
    assert torch.equal(arr["x"], arrays["x"]) and torch.equal(arr["ok"], arrays["ok"])
    assert distributed.item_done(tmp_path, "c1_a_s0", "h1")
    assert not distributed.item_done(tmp_path, "c2_a_s0", "h1")
    with pytest.raises(ValueError, match="computed with another config"):
        distributed.item_done(tmp_path, "c1_a_s0", "h2")


def test_merge_needs_a_manifest_and_every_item(world, tmp_path):
    root, config, items = world
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        distributed.merge(tmp_path)
    with pytest.raises(ValueError, match="task must be one of"):
        distributed.run_items("sae", config, items, tmp_path)
    # rank 1 of 2 only: half of the items, then merging reports the missing half
    rep = distributed.run_items("neurons", config, items, tmp_path, rank=1, world_size=2)
    assert rep["done"] == [distributed.item_id(i) for i in items[1::2]] and rep["loaded"]
    with pytest.raises(ValueError, match=r"2 of 4 items are not done .*c3_stripes_s0"):
        distributed.merge(tmp_path)
    part = distributed.merge(tmp_path, allow_partial=True)
    assert len(part["items"]) == 2 and part["missing"] == ["c3_stripes_s0", "c17_cells_s0"]
    with pytest.raises(ValueError, match="holds a run of another task/config"):
        distributed.run_items("neurons", {**config, "invariant": {"n_samples": 3}}, items, tmp_path)


# ---------------------------------------------------------------- torchrun, gloo, 2 processes


def test_torchrun_gloo_two_processes_equals_one_process(world):
    root, config, items = world
    single = root / "single"
    rep = distributed.run_items("neurons", config, items, single)  # this process, world size 1
    assert rep["world_size"] == 1 and len(rep["done"]) == 4
    ref_meta = distributed.merge(single)
    _, ref_arrays = distributed.load_merged(single)

    multi = root / "multi"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "equidiff.run.torchrun", "run", "--out", str(multi), "--config", str(root / "config.json"),
        "--channels", "3", "17", "--queries", str(root / "stripes.png"), str(root / "cells.png"),
        "--seeds", "0", "1", "--device", "cpu", "--merge", "--report", str(root / "report-{rank}.json"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((root / f"report-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [len(r["done"]) for r in reports] == [2, 2]  # each rank ran its shard
    assert {i["timing"]["rank"] for i in json.loads((multi / "merged.json").read_text())["items"]} == {0, 1}

    meta, arrays = distributed.load_merged(multi)
    assert _strip_timing(meta) == _strip_timing(ref_meta)  # records, in the same order
    assert set(arrays) == set(ref_arrays) and len(arrays) == 4 * 9
    for k in ref_arrays:
        assert torch.equal(arrays[k], ref_arrays[k]), k  # exactly: per-item seeds, same computation

    # a rerun skips every done item and does not even load the models
    again = distributed.run_items("neurons", config, items, multi, rank=0, world_size=2)
    assert again["done"] == [] and not again["loaded"] and len(again["skipped"]) == 2
    # lose one item (as if its rank had been killed): the rerun computes only that one, identically
    lost = distributed.item_id(items[3])
    (multi / "items" / f"{lost}.json").unlink()
    redo = [distributed.run_items("neurons", config, items, multi, rank=r, world_size=2) for r in (0, 1)]
    assert [r["done"] for r in redo] == [[], [lost]]
    assert distributed.main(["merge", "--out", str(multi)]) == 0  # the command-line merge
    meta2, arrays2 = distributed.load_merged(multi)
    assert _strip_timing(meta2) == _strip_timing(ref_meta)
    assert all(torch.equal(arrays2[k], ref_arrays[k]) for k in ref_arrays)
