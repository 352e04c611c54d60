"""Benchmark of the neuron chapter's runs of Algorithm 1: how to spend the machine's cores.

    python benchmarks/bench_neurons.py [--quick] [--samples N] [--steps B] [--json PATH] [--markdown PATH]

Runs the chapter's three neurons (``neurons = "auto"``, its default settings: 32 samples, budget 1024,
L-BFGS, ``restart_after = 100``, ``restart_limit = 300``, DDIM T = 10) three or four ways, one after the
other in this one run:

  threads  one process, one neuron after the other, torch's default thread count (the chapter before
           ``run_all``);
  w1       ``run_all(workers=1)``: one process, one torch thread, one neuron after the other;
  wN       ``run_all(workers=N)``: N worker processes (N = min(3, CPU cores)), one torch thread each;
  wM       ``run_all(workers=None)``, the chapter's default, when it starts another number of processes
           (:func:`equidiff.chapters.neurons.pool_size`: one per neuron up to twice the cores; on two
           cores three processes share the two cores).

Prints each way's wall time, its ratio to ``threads``, and whether every ``run_all`` way returned the
samples of ``w1`` bit for bit (they must: every neuron runs on one thread either way). Why it pays: each run
ends on a handful of slow samples, and a batch of one or two 16×16 images cannot keep two cores busy.
``--quick``: 8 samples, budget 100 (about two minutes on two cores). ``--markdown``: the table and
its settings as Markdown, every number from this run (the book's Performance page includes it).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    from equidiff.chapters import neurons as eqn
    from equidiff.training import machine
    from equidiff.worlds import load_world

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 samples, budget 100")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--markdown", help="also write the table and findings as Markdown (for the book)")
    ap.add_argument("--samples", type=int, help="samples per neuron (default 32, --quick 8)")
    ap.add_argument("--steps", type=int, help="budget per sample (default 1024, --quick 100)")
    a = ap.parse_args()
    settings = dict(n_samples=8, steps=100) if a.quick else dict(n_samples=32, steps=1024)
    for key, value in (("n_samples", a.samples), ("steps", a.steps)):
        if value is not None:
            if value < 1:
                raise SystemExit(f"--{'samples' if key == 'n_samples' else 'steps'} must be an integer ≥ 1, got {value}")
            settings[key] = value
    settings.update(ddim_steps=10, tau=0.01, optimizer="lbfgs", lr=1.0, seed=0, restart_after=100,
                    restart_limit=300)
    world = load_world("cpu")
    table = eqn.neuron_table(world)
    chosen = eqn.choose_neurons(world, table, "auto", "all", k=3)
    n_workers = min(len(chosen), os.cpu_count() or 1)
    n_default = eqn.pool_size(world, len(chosen))  # what workers=None starts
    ways = [("w1", 1), (f"w{n_workers}", n_workers)] + ([(f"w{n_default}", None)] if n_default != n_workers else [])
    threads = torch.get_num_threads()
    print(f"neurons {[s.channel for s in chosen]}, {settings}; {os.cpu_count()} CPU cores, torch threads {threads}")

    times, runs = {}, {}
    t = time.perf_counter()
    runs["threads"] = [eqn.run_neuron(world, table, s.channel, concept=s.concept, **settings) for s in chosen]
    times["threads"] = time.perf_counter() - t
    for name, w in ways:
        t = time.perf_counter()
        runs[name] = eqn.run_all(world, table, chosen, workers=w, progress=False, **settings)
        times[name] = time.perf_counter() - t

    base = times["threads"]
    print(f"\n{'way':<8} {'wall s':>8} {'× threads':>10}  per neuron: success, restarts, seconds")
    for name, sec in times.items():
        per = "; ".join(f"#{r.channel} {r.metrics['success_rate']:.2f}, {r.metrics['n_restarted']}, "
                        f"{r.metrics['seconds']:.0f} s" for r in runs[name])
        print(f"{name:<8} {sec:8.1f} {sec / base:10.2f}  {per}")
    pooled = [name for name, _ in ways[1:]]
    same = all(torch.equal(x.result.x, y.result.x) for wn in pooled for x, y in zip(runs["w1"], runs[wn]))
    print(f"\nw1 and {' and '.join(pooled)} samples bit-identical: {same}")
    out = {"settings": settings, "cpu_cores": os.cpu_count(), "torch_threads": threads,
           "neurons": [s.channel for s in chosen], "seconds": times,
           "ratio_to_threads": {k: v / base for k, v in times.items()}, "identical_w1_wn": same,
           "default_workers": f"w{n_default}",
           "success": {k: [r.metrics["success_rate"] for r in v] for k, v in runs.items()},
           "restarts": {k: [r.metrics["n_restarted"] for r in v] for k, v in runs.items()},
           "machine": machine()}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(markdown(out))


def markdown(out: dict) -> str:
    """The side-by-side table and what it shows, every number from ``out``."""
    s, sec, ratio = out["settings"], out["seconds"], out["ratio_to_threads"]
    label = {"threads": f"one process, {out['torch_threads']} torch threads, neurons one after the other",
             "w1": "`run_all(workers=1)`: one process, one thread"}
    for wn in sec:
        if wn not in label:
            default = " (the default, `workers=None`)" if wn == out.get("default_workers") else ""
            label[wn] = f"`run_all(workers={wn[1:]})`: {wn[1:]} worker processes, one thread each{default}"
    rows = [f"Neurons {', '.join('#' + str(c) for c in out['neurons'])}; {s['n_samples']} samples each, budget "
            f"{s['steps']}, {s['optimizer']}, `restart_after = {s['restart_after']}`, "
            f"`restart_limit = {s.get('restart_limit')}`, T = {s['ddim_steps']}; "
            f"{out['cpu_cores']} CPU cores.", "",
            "| way | wall time | × the first | success per neuron | restarts per neuron |", "| --- | --- | --- | --- | --- |"]
    for k in sec:
        rows.append(f"| {label[k]} | {sec[k]:.1f} s | {ratio[k]:.2f} | "
                    + ", ".join(f"{v:.2f}" for v in out["success"][k]) + " | "
                    + ", ".join(str(v) for v in out["restarts"][k]) + " |")
    same = "returned bit-identical samples" if out["identical_w1_wn"] else "did **not** return identical samples"
    rows += ["", f"The `run_all` ways {same} (the script compares them)."]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # worker processes import this file again: keep the run under the guard
    main()
