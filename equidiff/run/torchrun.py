"""Many work items (neurons × queries × seeds) across processes, GPUs and nodes with ``torchrun``.

The thesis ran its experiments on 1-4 A100 GPUs (Section 4.1.1). Each *work item* — one neuron,
one query image, one seed: a full run of Algorithm 1 for ``n_samples`` samples — is independent,
so the work is sharded, not the model: every rank (process) loads the models once and runs
``items[rank::world_size]``.

* **Results per item**, written atomically into ``<out>/items/``: ``<id>.safetensors`` (the
  arrays: samples, z_T, losses, ...) then ``<id>.json`` (the record; written last, so its presence
  means the item is complete). A kill mid-write leaves only a ``.tmp-*`` file behind.
* **Reruns skip done items** (a rank whose items are all done does not even load the models);
  an item done under another config raises rather than mixing settings.
* **Merge**: :func:`merge` assembles the items in manifest order into ``<out>/merged.json`` and
  ``<out>/merged.safetensors`` (keys ``<item id>/<array>``). Given per-item seeds, the merged
  result does not depend on the number of processes.

Command line (``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; without it, one process runs all)::

    torchrun --nproc_per_node 4 -m equidiff.run.torchrun run --out runs/neurons \\
        --channels 1656 1052 421 --queries zebra.jpg honeycomb.jpg gyromitra.jpg --seeds 0 \\
        --n-samples 32 --steps 1024 --ddim-steps 25 --bf16 --merge
    python -m equidiff.run.torchrun merge --out runs/neurons

Backend: NCCL when CUDA is available, else gloo (CPU). The process group is only used for a
barrier and to gather per-rank counts; results travel through the shared output folder (on
several nodes it must be a shared file system).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as torch_dist
from safetensors.torch import load_file, save

from equidiff._validate import bad as _bad, is_int as _is_int
from equidiff.core.invariants import InvariantConfig
from equidiff.core.metrics import l1_l2
from equidiff.report.record import to_jsonable
from equidiff.worlds.imagenet.config import PaperConfig
from equidiff.worlds.imagenet.images import list_images, load_query_images
from equidiff.worlds.imagenet.loaders import resolve_device
from equidiff.worlds.imagenet.models import load_paper_models

__all__ = [
    "TASKS",
    "make_items",
    "item_id",
    "shard",
    "config_hash",
    "write_item",
    "read_item",
    "item_done",
    "run_items",
    "merge",
    "load_merged",
    "NeuronTask",
    "main",
]

MANIFEST = "manifest.json"
ITEMS = "items"


# --------------------------------------------------------------------------------------------
# Items, shards, atomic per-item files
# --------------------------------------------------------------------------------------------


def item_id(item: dict) -> str:
    """A file-name-safe, stable id: ``c<channel>_<query stem>_s<seed>`` (other keys appended sorted)."""
    parts = []
    if "channel" in item:
        parts.append(f"c{item['channel']}")
    if "query" in item:
        parts.append(Path(str(item["query"])).stem)
    if "seed" in item:
        parts.append(f"s{item['seed']}")
    parts += [f"{k}-{item[k]}" for k in sorted(item) if k not in ("channel", "query", "seed")]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)) or "item"


def make_items(channels: Sequence[int], queries: Sequence[str], seeds: Sequence[int] = (0,),
               pairing: str = "zip") -> list[dict]:
    """Work items ``{"channel", "query", "seed"}``.

    ``pairing="zip"``: the i-th channel with the i-th query (one query per neuron, as Section
    4.2.2: the image that activates *that* neuron); one query is used for every channel.
    ``"product"``: every channel with every query. Each pair is run for every seed.
    """
    if pairing not in ("zip", "product"):
        raise _bad("pairing", pairing, "'zip' or 'product'")
    channels, queries, seeds = list(channels), [str(q) for q in queries], list(seeds)
    if not channels or not all(_is_int(c) and c >= 0 for c in channels):
        raise _bad("channels", channels, "a non-empty list of channel indices ≥ 0")
    if not queries:
        raise _bad("queries", queries, "a non-empty list of image paths")
    if not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        raise _bad("seeds", seeds, "a non-empty list of integers ≥ 0")
    if pairing == "zip":
        if len(queries) == 1:
            queries = queries * len(channels)
        if len(queries) != len(channels):
            raise _bad("queries", len(queries),
                       f"1 or as many as channels ({len(channels)}) with pairing 'zip' (or use 'product')")
        pairs = list(zip(channels, queries))
    else:
        pairs = [(c, q) for c in channels for q in queries]
    items = [{"channel": c, "query": q, "seed": s} for c, q in pairs for s in seeds]
    _check_unique(items)
    return items


def _check_unique(items: Sequence[dict]) -> None:
    seen: dict = {}
    for it in items:
        i = item_id(it)
        if i in seen and seen[i] != it:
            raise ValueError(f"two work items share the id {i!r}: {seen[i]} and {it}; rename a query file")
        seen[i] = it
    if len(seen) != len(items):
        raise ValueError("the work items contain duplicates")


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Rank ``rank``'s share: ``items[rank::world_size]`` (round-robin balances neurons across ranks)."""
    if not _is_int(world_size) or world_size < 1:
        raise _bad("world_size", world_size, "an integer ≥ 1")
    if not _is_int(rank) or not (0 <= rank < world_size):
        raise _bad("rank", rank, f"an integer in [0, {world_size - 1}]")
    return list(items[rank::world_size])


def config_hash(task: str, config: dict) -> str:
    blob = json.dumps({"task": task, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one


def _atomic_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, json.dumps(to_jsonable(obj), indent=2).encode())


def write_item(out_dir, iid: str, record: dict, arrays: dict) -> Path:
    """Write one item's arrays (safetensors) and then its record (json), each atomically."""
    folder = Path(out_dir) / ITEMS
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in arrays.items()}
    _atomic_write_bytes(folder / f"{iid}.safetensors", save(tensors))
    _atomic_json(folder / f"{iid}.json", {**record, "arrays": sorted(tensors)})  # written last: "done"
    return folder / f"{iid}.json"


def read_item(out_dir, iid: str) -> tuple[dict, dict]:
    """``(record, arrays)`` of a finished item."""
    folder = Path(out_dir) / ITEMS
    record = json.loads((folder / f"{iid}.json").read_text())
    return record, load_file(str(folder / f"{iid}.safetensors"))


def item_done(out_dir, iid: str, chash: Optional[str] = None) -> bool:
    """True if the item's record exists; with ``chash``, a record from another config raises."""
    path = Path(out_dir) / ITEMS / f"{iid}.json"
    if not path.is_file():
        return False
    if chash is not None:
        got = json.loads(path.read_text()).get("config_hash")
        if got != chash:
            raise ValueError(
                f"item {iid!r} in {path.parent} was computed with another config (hash {got}, now {chash}); "
                "use another --out folder or delete that item"
            )
    return True


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


class NeuronTask:
    """Thesis Section 4.2.2 for one (neuron, query, seed): the invariant set of the neuron's pre-ReLU map.

    ``config``: ``{"paper": PaperConfig fields, "invariant": InvariantConfig fields}``; the item's
    seed replaces ``invariant.seed``. The query is the item's image file, loaded with
    :func:`equidiff.worlds.imagenet.images.load_query_images` at ``paper.image_size``.
    """

    name = "neurons"

    def setup(self, config: dict, device: torch.device):
        paper_cfg = PaperConfig.from_dict({**config.get("paper", {}), "device": str(device)})
        return {"models": load_paper_models(paper_cfg), "config": config}

    def run(self, ctx: dict, item: dict) -> tuple[dict, dict]:
        models = ctx["models"]
        inv = InvariantConfig(**{**ctx["config"].get("invariant", {}), "seed": int(item["seed"])})
        query, _ = load_query_images([item["query"]], size=models.config.image_size)  # (1, 3, S, S)
        objective = models.neuron_objective(int(item["channel"]))
        torch.manual_seed(int(item["seed"]))  # nothing else should be random; pinned anyway
        res = models.find_invariants(objective, query, inv)
        l1, l2 = l1_l2(res.measurements, res.target)
        summary = res.summary()
        seconds = summary.pop("seconds")
        record = {
            "summary": summary,
            "metrics": {
                "l2_mean": float(l2.mean()), "l2_std": float(l2.std()) if len(l2) > 1 else 0.0,
                "l2_median": float(l2.median()), "l1_mean": float(l1.mean()),
                "query_mean_activation": float(res.target.mean()),
            },
            "timing": {"seconds": seconds},
        }
        arrays = {
            "x": res.x.float(), "z": res.z.float(), "z_init": res.z_init.float(),
            "measurements": res.measurements.float(), "target": res.target.float(),
            "loss": res.loss.float(), "converged": res.converged, "steps_to_converge": res.steps_to_converge,
            "query": query,
        }
        return record, arrays


# task name -> factory() of an object with setup(config, device) -> ctx and run(ctx, item) -> (record, arrays)
TASKS: dict[str, Callable[[], object]] = {"neurons": NeuronTask}


# --------------------------------------------------------------------------------------------
# Running a shard, merging
# --------------------------------------------------------------------------------------------


def _dist():
    return torch_dist if torch_dist.is_available() and torch_dist.is_initialized() else None


def _write_manifest(out: Path, task: str, config: dict, items: list, chash: str) -> None:
    path = out / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("config_hash") != chash:
            raise ValueError(
                f"{out} holds a run of another task/config (hash {old.get('config_hash')}, now {chash}); "
                "use another --out folder"
            )
        # a rerun may add items: keep the earlier ones in their order, then the new ones
        known = {item_id(i) for i in items}
        items = [i for i in old.get("items", []) if item_id(i) not in known] + list(items)
    _atomic_json(path, {"task": task, "config": config, "config_hash": chash, "items": items})


def run_items(
    task: str,
    config: dict,
    items: Sequence[dict],
    out_dir,
    *,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    device=None,
) -> dict:
    """Run this rank's shard of ``items`` with task ``task``; returns a report.

    ``rank``/``world_size`` default to the initialised process group (torchrun), else 0 / 1.
    Items already done in ``out_dir`` are skipped; the task's models are loaded only if some item
    of this shard is left. Report: ``rank``, ``world_size``, ``done`` (ids computed now),
    ``skipped`` (ids found done), ``loaded`` (whether the models were loaded), ``seconds``.
    """
    if task not in TASKS:
        raise _bad("task", task, f"one of {tuple(TASKS)}")
    if not isinstance(config, dict):
        raise _bad("config", type(config).__name__, "a dict")
    items = [dict(i) for i in items]
    if not items:
        raise _bad("items", items, "a non-empty list of work items")
    _check_unique(items)
    dist = _dist()
    if rank is None:
        rank = dist.get_rank() if dist else 0
    if world_size is None:
        world_size = dist.get_world_size() if dist else 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chash = config_hash(task, config)
    if rank == 0 or dist is None:  # without a process group, each process checks and records the run itself
        _write_manifest(out, task, config, items, chash)
    if dist:
        dist.barrier()  # the manifest (and its config check) before any rank writes items

    t0 = time.perf_counter()
    mine = shard(items, rank, world_size)
    todo = [i for i in mine if not item_done(out, item_id(i), chash)]
    report = {"rank": rank, "world_size": world_size, "done": [], "loaded": False,
              "skipped": [item_id(i) for i in mine if i not in todo]}
    if todo:
        runner = TASKS[task]()
        dev = resolve_device(device)
        ctx = runner.setup(config, dev)
        report["loaded"] = True
        for it in todo:
            iid = item_id(it)
            t1 = time.perf_counter()
            record, arrays = runner.run(ctx, it)
            record = {"id": iid, "item": it, "task": task, "config_hash": chash, **record}
            record.setdefault("timing", {}).update(
                {"rank": rank, "world_size": world_size, "device": str(dev), "item_seconds": time.perf_counter() - t1}
            )
            write_item(out, iid, record, arrays)
            report["done"].append(iid)
    report["seconds"] = time.perf_counter() - t0
    return report


def merge(out_dir, *, allow_partial: bool = False) -> dict:
    """Assemble every item of the manifest into ``merged.json`` + ``merged.safetensors``.

    Records keep the manifest's item order; ``timing`` (rank, seconds) is the only part that
    depends on how the work was distributed. Missing items raise (listing them) unless
    ``allow_partial``. Returns the merged metadata.
    """
    out = Path(out_dir)
    if not (out / MANIFEST).is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {out}: run `python -m equidiff.run.torchrun run --out {out} ...` first")
    manifest = json.loads((out / MANIFEST).read_text())
    records, arrays, missing = [], {}, []
    for it in manifest["items"]:
        iid = item_id(it)
        if not item_done(out, iid, manifest["config_hash"]):
            missing.append(iid)
            continue
        rec, arr = read_item(out, iid)
        records.append(rec)
        arrays.update({f"{iid}/{k}": v for k, v in arr.items()})
    if missing and not allow_partial:
        raise ValueError(f"{len(missing)} of {len(manifest['items'])} items are not done in {out}: {missing}; "
                         "rerun the same command (done items are skipped) or merge with allow_partial=True")
    meta = {"task": manifest["task"], "config": manifest["config"], "config_hash": manifest["config_hash"],
            "n_items": len(manifest["items"]), "missing": missing, "items": records}
    _atomic_write_bytes(out / "merged.safetensors", save(arrays))
    _atomic_json(out / "merged.json", meta)
    return meta


def load_merged(out_dir) -> tuple[dict, dict]:
    """``(merged.json contents, {"<item id>/<array>": tensor})``."""
    out = Path(out_dir)
    return json.loads((out / "merged.json").read_text()), load_file(str(out / "merged.safetensors"))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _config_from_args(args) -> dict:
    cfg = json.loads(Path(args.config).read_text()) if args.config else {}
    paper = dict(cfg.get("paper", {}))
    inv = dict(cfg.get("invariant", {}))
    for flag, key in (("dit_path", "dit_path"), ("classifier_path", "classifier_path"), ("cache_dir", "cache_dir"),
                      ("ddim_steps", "ddim_steps"), ("batch_size", "batch_size"), ("image_size", "image_size")):
        if getattr(args, flag) is not None:
            paper[key] = getattr(args, flag)
    for flag in ("allow_download", "bf16"):
        if getattr(args, flag):
            paper[flag] = True
    for flag in ("n_samples", "steps", "tau", "lr", "optimizer", "lowpass_cutoff"):
        if getattr(args, flag) is not None:
            inv[flag] = getattr(args, flag)
    paper.pop("device", None)  # chosen per rank (cuda:<LOCAL_RANK>), not part of the config
    # validate now, in every rank, before any work
    PaperConfig.from_dict(paper)
    InvariantConfig(**inv)
    return {**{k: v for k, v in cfg.items() if k not in ("paper", "invariant")}, "paper": paper, "invariant": inv}


def _items_from_args(args) -> list[dict]:
    if args.items:
        items = json.loads(Path(args.items).read_text())
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise _bad("--items", args.items, "a JSON file holding a list of objects")
        return items
    if not args.channels or not args.queries:
        raise SystemExit("give --items FILE, or --channels and --queries (and optionally --seeds)")
    queries = args.queries
    if len(queries) == 1 and Path(queries[0]).is_dir():
        queries = [str(p) for p in list_images(queries[0])]
    return make_items(args.channels, queries, args.seeds, args.pairing)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m equidiff.run.torchrun", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run this rank's shard (under torchrun: every rank)")
    r.add_argument("--out", required=True, help="output folder (shared by all ranks)")
    r.add_argument("--task", default="neurons", choices=sorted(TASKS))
    r.add_argument("--config", help='JSON file: {"paper": {PaperConfig fields}, "invariant": {InvariantConfig fields}}')
    r.add_argument("--items", help="JSON file: a list of work items (objects); instead of --channels/--queries")
    r.add_argument("--channels", type=int, nargs="+", help="neuron channels, e.g. 1656 1052 421")
    r.add_argument("--queries", nargs="+", help="query image files, or one folder of images")
    r.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the starting noise, per item")
    r.add_argument("--pairing", default="zip", choices=("zip", "product"), help="channels × queries: zip or product")
    r.add_argument("--dit-path", dest="dit_path")
    r.add_argument("--classifier-path", dest="classifier_path")
    r.add_argument("--cache-dir", dest="cache_dir")
    r.add_argument("--allow-download", dest="allow_download", action="store_true")
    r.add_argument("--ddim-steps", dest="ddim_steps", type=int)
    r.add_argument("--batch-size", dest="batch_size", type=int)
    r.add_argument("--image-size", dest="image_size", type=int)
    r.add_argument("--bf16", action="store_true")
    r.add_argument("--n-samples", dest="n_samples", type=int)
    r.add_argument("--steps", type=int)
    r.add_argument("--tau", type=float)
    r.add_argument("--lr", type=float)
    r.add_argument("--optimizer", choices=("adam", "sgd", "newton"))
    r.add_argument("--lowpass-cutoff", dest="lowpass_cutoff", type=float)
    r.add_argument("--device", default="auto", help="'auto' (cuda:<LOCAL_RANK> or cpu), 'cpu', ...")
    r.add_argument("--merge", action="store_true", help="rank 0 merges after every rank finished")
    r.add_argument("--report", help="write this rank's report as JSON to this path ({rank} is replaced)")
    m = sub.add_parser("merge", help="assemble the per-item results")
    m.add_argument("--out", required=True)
    m.add_argument("--allow-partial", action="store_true")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "merge":
        meta = merge(args.out, allow_partial=args.allow_partial)
        print(f"merged {len(meta['items'])} of {meta['n_items']} items into {Path(args.out) / 'merged.json'}")
        return 0

    config = _config_from_args(args)
    items = _items_from_args(args)
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch_dist.init_process_group(backend=backend)
        started = True
    try:
        report = run_items(args.task, config, items, args.out, device=args.device)
        if args.report:
            path = Path(args.report.replace("{rank}", str(report["rank"])))
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_json(path, report)
        print(f"rank {report['rank']}/{report['world_size']}: {len(report['done'])} done, "
              f"{len(report['skipped'])} skipped, {report['seconds']:.1f} s", flush=True)
        d = _dist()
        if d:
            reports = [None] * d.get_world_size()
            d.all_gather_object(reports, report)  # also a barrier: every rank has finished writing
        else:
            reports = [report]
        if args.merge and report["rank"] == 0:
            meta = merge(args.out)
            total = sum(len(r["done"]) for r in reports)
            print(f"merged {len(meta['items'])} items ({total} computed now) into {Path(args.out) / 'merged.json'}")
        if d:
            d.barrier()  # no rank tears its process group down while rank 0 still merges
    finally:
        if started:
            torch_dist.destroy_process_group()
    return 0


def _exit_launched_worker(code: int) -> None:
    """End a ``torchrun`` worker without the interpreter's teardown.

    Every result is on disk (atomically) and the process group is destroyed by then, but on
    2026-12-02 CI saw a gloo worker abort in its C++ static destructors *after* a complete run
    ("terminate called without an active exception", SIGABRT), and torchrun then failed the whole
    job. ``os._exit`` skips those destructors; stdout and stderr are flushed first so nothing
    printed is lost."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_launched_worker(_code)
    sys.exit(_code)
