"""Benchmark of EquiDiff on images: the embedded digits world on this machine's CPU.

    python benchmarks/bench_invariants.py [--quick] [--json PATH] [--markdown PATH] [--threads N]

For a neuron-map objective (one channel of the classifier's last stage, its whole 4×4 map read
before the final activation) and a class-probability objective, with a batch of 32 samples:

* seconds per optimisation step at T = 10, 20, 50 DDIM steps, with and without checkpointing;
* peak memory of one optimisation step at each T, with and without checkpointing
  (in a fresh process: peak resident memory above the level before the step, Linux VmHWM,
  with glibc returning large freed blocks to the OS so the peak reflects live tensors);
* steps to τ = 0.01 (median, max) and the success rate within the budget B = 200;
* wall time until all 32 samples converge, batched with per-sample stop vs one sample at a time
  (the one-at-a-time loop runs the first ``--loop-samples`` starting noises, 8 by default, and
  its time is scaled to the batch);
* overhead ratio = checkpointed step time / (T × one denoiser forward+backward + objective);
* share of spectral power above half Nyquist: real digits, EquiDiff samples, and the pixel-space
  baseline (``equidiff.core.baselines.pixel_invariants``: the same loop optimising the image itself,
  x = 2·sigmoid(u) − 1 from a near-grey start as in Lucent, no prior).

All ratios are measured side by side in one run. ``--quick`` runs a reduced version (batch 8,
T = 10/20, B = 60) for checks. ``--markdown PATH`` writes the tables to PATH and, beside it as
``<stem>_goals.md``, the goals table (met or not) and the findings, every number from this run:
the book's Performance page includes both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from equidiff.core import filters
from equidiff.training import machine
from equidiff.worlds import digits as zoo
from equidiff.core.priors import PixelDDIMPrior
from equidiff.core.baselines import pixel_invariants
from equidiff.core.invariants import InvariantConfig, find_invariants, iterate_invariants
from equidiff.core.objectives import capture_activation, class_probability, neuron_map, resolve_module

NEURON_LAYER = "layer4.0.act2"  # input of the last block's final activation: pre-activation values
LR = {"adam": 0.1, "lbfgs": 1.0}  # Adam: the sweep's best rate; L-BFGS: the full quasi-Newton step
OPTIMIZERS = {"neuron": "lbfgs", "probability": "adam"}  # what the chapters use for each objective


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_probe(args) -> None:
    """Child process: peak resident memory of one optimisation step above the level before it."""
    T, ck = int(args.probe_T), args.probe_ckpt == "1"
    torch.set_num_threads(args.threads)
    prior, objective, query = _setup(args, T, ck)[:3]
    target = objective(query).detach()
    z = torch.randn(args.probe_n, 1, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (the peak) to the current resident size
    before = _rss_kib("VmRSS")
    ((objective(prior(z)) - target) ** 2).sum().backward()
    print((_rss_kib("VmHWM") - before) / 1024)


def peak_step_memory_mib(args, T: int, ck: bool, n: int) -> float | None:
    """Run one step in a fresh process (a reused allocator pool would hide the growth); Linux only."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    cmd = [sys.executable, __file__, "--probe-T", str(T), "--probe-ckpt", "1" if ck else "0",
           "--probe-n", str(n), "--threads", str(args.threads), "--ddpm", args.ddpm,
           "--classifier", args.classifier, "--query-index", str(args.query_index)]
    # Large blocks via mmap, so memory freed during backward goes back to the OS and the resident
    # peak reflects live tensors rather than glibc's cached, fragmented heap.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()
    return float(out[-1])


def step_seconds(objective, query, prior, n: int, steps: int = 4) -> float:
    """Median wall time of one optimisation iteration (backward + step + next forward)."""
    cfg = InvariantConfig(n_samples=n, steps=steps, tau=1e-12, lr=0.1)
    stamps = [time.perf_counter() for _ in iterate_invariants(objective, query, prior, cfg)]
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def denoiser_fwd_bwd_seconds(unet, n: int, reps: int = 3) -> float:
    x = torch.randn(n, *(1, 16, 16))
    t = torch.tensor(500)
    times = []
    for _ in range(reps + 1):
        xi = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        unet(xi, t).sample.sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def objective_fwd_bwd_seconds(objective, n: int, reps: int = 3) -> float:
    times = []
    for _ in range(reps + 1):
        x = torch.randn(n, 1, 16, 16, requires_grad=True)
        t0 = time.perf_counter()
        objective(x).sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _setup(a, T: int = 10, ck: bool = True):
    """(prior, neuron objective, query, label, channel, ddpm, classifier, test images, classifier folder)."""
    ddpm = zoo.get_model(a.ddpm, progress=False)
    clf_zoo = zoo.get_model(a.classifier, progress=False)
    clf = clf_zoo.model
    images, labels = zoo.load_digits16("test")
    query = images[a.query_index : a.query_index + 1]  # (1, 1, 16, 16)
    label = int(labels[a.query_index])
    with torch.no_grad():
        with capture_activation(resolve_module(clf, NEURON_LAYER)) as store:
            clf(query)
        channel = int(store["input"][0].flatten(1).mean(1).argmax())  # the query's strongest neuron
    obj = neuron_map(clf, NEURON_LAYER, channel, read="input", name="digits ResNet")
    prior = PixelDDIMPrior(ddpm.model, ddpm.scheduler, num_steps=T, checkpointing=ck, clamp=False)
    return prior, obj, query, label, channel, ddpm, clf, images, clf_zoo.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced run for checks (< 2 min)")
    ap.add_argument("--json", help="write the headline figures to this JSON file")
    ap.add_argument("--markdown", help="write the measured tables as Markdown (for the book)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    ap.add_argument("--ddpm", default="digits-ddpm", help="zoo preset of the diffusion prior")
    ap.add_argument("--classifier", default="digits-classifier", help="zoo preset of the classifier")
    ap.add_argument("--query-index", type=int, default=0, help="index of the query in the digits test split")
    ap.add_argument("--grid", default="outputs/bench", help="folder for sample grids (PNG)")
    ap.add_argument("--loop-samples", type=int, default=8,
                    help="samples run one at a time for the batched-vs-loop comparison (time scaled to the batch)")
    ap.add_argument("--probe-T", help=argparse.SUPPRESS)
    ap.add_argument("--probe-ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--probe-n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.probe_T:
        return _memory_probe(a)
    torch.set_num_threads(a.threads)

    n = 8 if a.quick else 32
    budget = 60 if a.quick else 200
    ts = (10, 20) if a.quick else (10, 20, 50)
    tau = 0.01

    _, neuron, query, label, channel, ddpm, clf, images, clf_path = _setup(a)
    objectives = {
        "neuron": neuron,
        "probability": class_probability(clf, label, name="digits ResNet"),
    }
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {a.threads}")
    print(f"query: test digit #{a.query_index} (label {label}); neuron {channel} of {NEURON_LAYER} (4×4 map); "
          f"batch {n}, τ = {tau}, B = {budget}; Adam lr {LR['adam']}, L-BFGS (per sample) step {LR['lbfgs']}\n")

    def prior(T, ck=True):
        return PixelDDIMPrior(ddpm.model, ddpm.scheduler, num_steps=T, checkpointing=ck, clamp=False)

    # --- step time and memory against T ---------------------------------------------------
    obj = objectives["neuron"]
    timing, memory = {}, {}
    print(f"{'T':>4} {'s/step ckpt':>12} {'s/step no ckpt':>15} {'MiB ckpt':>9} {'MiB no ckpt':>12}")
    for T in ts:
        for ck in (True, False):
            timing[(T, ck)] = step_seconds(obj, query, prior(T, ck), n)
            memory[(T, ck)] = peak_step_memory_mib(a, T, ck, n)
        mem = lambda v: f"{v:9.1f}" if v is not None else "      n/a"  # noqa: E731
        print(f"{T:>4} {timing[(T, True)]:>12.3f} {timing[(T, False)]:>15.3f} {mem(memory[(T, True)])} "
              f"{mem(memory[(T, False)]):>12}")
    t_unet = denoiser_fwd_bwd_seconds(ddpm.model, n)
    t_obj = objective_fwd_bwd_seconds(obj, n)
    overhead = timing[(10, True)] / (10 * t_unet + t_obj)
    mem_ratio = (memory[(ts[-1], True)] / memory[(10, True)]) if memory[(10, True)] else None
    print(f"\none denoiser forward+backward (batch {n}): {t_unet:.4f} s; objective: {t_obj:.4f} s")
    print(f"overhead ratio at T = 10 (checkpointed step / (T·denoiser + objective)): {overhead:.2f}")
    if mem_ratio is not None:
        print(f"checkpointed peak memory T = {ts[-1]} / T = 10: {mem_ratio:.2f}")

    # --- convergence, batched vs one at a time, at T = 10 -----------------------------------
    # Every objective with both optimisers side by side; the batched-vs-loop comparison uses the
    # optimiser the chapters use for that objective (OPTIMIZERS[name]).
    results, samples, by_opt = {}, {}, {}
    print(f"\n{'objective':<12} {'optimizer':<10} {'success':>8} {'steps med':>10} {'steps max':>10} {'wall s':>8} "
          f"{'loop s':>8} {'speed-up':>9}")
    for name, objective in objectives.items():
        for opt in ("adam", "lbfgs"):
            lr = LR[opt]
            cfg = InvariantConfig(n_samples=n, steps=budget, tau=tau, optimizer=opt, lr=lr, seed=0)
            t0 = time.perf_counter()
            res = find_invariants(objective, query, prior(10), cfg)
            wall = time.perf_counter() - t0
            done = res.steps_to_converge[res.converged].float()
            r = {
                "success_rate": res.success_rate,
                "wall_s": wall,
                "steps_median": float(done.median()) if len(done) else None,
                "steps_max": int(done.max()) if len(done) else None,
                "loss_median": float(res.loss.median()),
            }
            by_opt[f"{name}/{opt}"] = r
            loop = None
            if opt == OPTIMIZERS[name]:
                n_loop = min(n, a.loop_samples)
                t0 = time.perf_counter()
                for i in range(n_loop):
                    find_invariants(objective, query, prior(10),
                                    InvariantConfig(n_samples=1, steps=budget, tau=tau, optimizer=opt, lr=lr),
                                    z_init=res.z_init[i : i + 1])
                loop = (time.perf_counter() - t0) * n / n_loop
                results[name] = {**r, "loop_s": loop, "optimizer": opt}
                samples[name] = res
            med = "n/a" if r["steps_median"] is None else f"{r['steps_median']:.0f}"
            mx = "n/a" if r["steps_max"] is None else str(r["steps_max"])
            tail = "" if loop is None else f"{loop:>8.1f} {loop / wall:>8.1f}×" + (
                f"  (loop: first {n_loop} of {n} samples, time scaled ×{n / n_loop:g})" if n_loop < n else "")
            print(f"{name:<12} {opt:<10} {r['success_rate']:>8.2f} {med:>10} {mx:>10} {wall:>8.1f} " + tail)

    # --- spectra: real digits, EquiDiff, pixel-space baseline -----------------------------------
    # the chapter's pixel-space baseline (equidiff.baselines): the same loop on x = 2σ(u) − 1 itself
    pixel = pixel_invariants(objectives["probability"], query,
                             InvariantConfig(n_samples=n, steps=budget, tau=tau, lr=0.1, seed=0))
    eq = torch.cat([s.x[s.converged] for s in samples.values()])
    hf = {
        "real": float(filters.high_frequency_share(images[:256]).mean()),
        "equidiff": float(filters.high_frequency_share(eq).mean()) if len(eq) else None,
        "pixel": float(filters.high_frequency_share(pixel.x[pixel.converged]).mean()) if pixel.converged.any() else None,
    }
    print(f"\nshare of spectral power above half Nyquist: real digits {hf['real']:.3f}, "
          f"EquiDiff samples {hf['equidiff']:.3f}, pixel-space baseline {hf['pixel']:.3f} "
          f"(baseline success {pixel.success_rate:.2f})")

    grid_dir = Path(a.grid)
    grid_dir.mkdir(parents=True, exist_ok=True)
    from equidiff.report import figures as plots

    for name, res in samples.items():
        fig = plots.sample_grid(query, res, title=f"{res.description}: {int(res.converged.sum())}/{n} converged")
        plots.save(fig, grid_dir / f"grid_{name}.png")
    fig = plots.sample_grid(query, pixel, title=f"pixel-space baseline: {int(pixel.converged.sum())}/{n} converged")
    plots.save(fig, grid_dir / "grid_pixel_baseline.png")
    print(f"sample grids in {grid_dir}/")

    out = {
        "neuron": {k: results["neuron"][k] for k in ("success_rate", "wall_s", "steps_median", "steps_max", "optimizer")},
        "probability": {k: results["probability"][k] for k in ("success_rate", "wall_s", "steps_median", "steps_max", "optimizer")},
        "by_optimizer": by_opt,
        "memory_ratio_T50_T10": mem_ratio,
        "overhead_ratio": overhead,
        "batched_speedup": {k: results[k]["loop_s"] / results[k]["wall_s"] for k in results},
        "high_freq_share": hf,
        "step_seconds": {f"T{T}_{'ckpt' if ck else 'nockpt'}": v for (T, ck), v in timing.items()},
        "peak_mib": {f"T{T}_{'ckpt' if ck else 'nockpt'}": v for (T, ck), v in memory.items()},
        "quick": a.quick,
        "batch": n,
        "threads": a.threads,
        "machine": machine(),
        "query": {"index": a.query_index, "label": label, "channel": channel},
        "models": {"ddpm": Path(ddpm.path).name, "classifier": Path(clf_path).name},  # the shipped folders used
    }
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {a.json}")
    if a.markdown:
        Path(a.markdown).write_text(markdown_tables(out, timing, memory, results, ts, by_opt))
        goals = Path(a.markdown).with_name(Path(a.markdown).stem + "_goals.md")
        goals.write_text(goals_and_findings(out))
        print(f"wrote {goals}")
        print(f"wrote {a.markdown}")


def markdown_tables(out, timing, memory, results, ts, by_opt) -> str:
    m = out["models"]
    rows = [f"Measured with the prior `{m['ddpm']}` and the classifier `{m['classifier']}` (`data/models/`), "
            f"{out['threads']} torch thread{'s' if out['threads'] != 1 else ''}, on {out['machine']['cpu']} "
            f"({out['machine']['cores']} cores).", "",
            "| T | s/step, checkpointed | s/step, not checkpointed | peak MiB, checkpointed | peak MiB, not checkpointed |",
            "| --- | --- | --- | --- | --- |"]
    f = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    for T in ts:
        rows.append(f"| {T} | {timing[(T, True)]:.3f} | {timing[(T, False)]:.3f} | {f(memory[(T, True)])} | "
                    f"{f(memory[(T, False)])} |")
    rows += ["", "| objective | optimizer | success within B | steps to τ (median / max) | median final loss | "
             "wall s, batched | wall s, one at a time | speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, r in by_opt.items():
        name, opt = key.split("/")
        mine = results[name]["optimizer"] == opt
        loop = f"{results[name]['loop_s']:.1f} | {results[name]['loop_s'] / r['wall_s']:.1f}×" if mine else "– | –"
        rows.append(f"| {name} | {opt} | {r['success_rate']:.2f} | {f(r['steps_median'], 0)} / {f(r['steps_max'], 0)} | "
                    f"{r['loss_median']:.3g} | {r['wall_s']:.1f} | {loop} |")
    hf = out["high_freq_share"]
    rows += ["", f"Overhead ratio (checkpointed step / (T × denoiser fwd+bwd + objective), T = 10): "
             f"**{out['overhead_ratio']:.2f}**. Checkpointed peak memory T = {ts[-1]} / T = 10: "
             f"**{f(out['memory_ratio_T50_T10'], 2)}**.", "",
             "| images | share of spectral power above half Nyquist |", "| --- | --- |",
             f"| real digits | {f(hf['real'], 3)} |", f"| EquiDiff samples | {f(hf['equidiff'], 3)} |",
             f"| pixel-space baseline (no prior) | {f(hf['pixel'], 3)} |", ""]
    return "\n".join(rows)


GOALS = {  # the loop's targets (2 cores, T = 10, batch 32): what the goals table checks
    "success": 0.95,  # share of samples below τ within B, each objective
    "seconds": {"neuron": 20.0, "probability": 40.0},  # all samples converged within this wall time
    "memory_ratio": 1.3,  # checkpointed peak memory at the largest T / at T = 10
    "overhead": 1.5,  # checkpointed step / (T × denoiser fwd+bwd + objective)
    "speedup": 3.0,  # batched with per-sample stop vs one sample at a time
}


def goals_and_findings(out: dict) -> str:
    """The goals table and the findings, every number from ``out`` (this run's JSON)."""
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    n, th = out["batch"], out["threads"]
    by = out["by_optimizer"]
    rows = [f"| goal (T = 10, batch {n}) | measured ({th} torch thread{'s' if th != 1 else ''}) | met? |",
            "| --- | --- | --- |"]
    for name in ("neuron", "probability"):
        a, l = by[f"{name}/adam"], by[f"{name}/lbfgs"]
        best = max(a["success_rate"], l["success_rate"])
        rows.append(f"| success ≥ {pct(GOALS['success'])} within B, {name} objective | "
                    f"{pct(l['success_rate'])} with L-BFGS, {pct(a['success_rate'])} with Adam | "
                    f"{yes(best >= GOALS['success'])} |")
    for name in ("neuron", "probability"):
        r, limit = out[name], GOALS["seconds"][name]
        done = r["success_rate"] >= 1.0
        what = (f"{r['wall_s']:.1f} s, all converged" if done else
                f"{r['wall_s']:.1f} s until the budget ran out ({pct(r['success_rate'])} converged)")
        rows.append(f"| all {n} converged in ≤ {limit:.0f} s, {name} objective ({r['optimizer']}) | {what} | "
                    f"{yes(done and r['wall_s'] <= limit)} |")
    mr = out["memory_ratio_T50_T10"]
    if mr is not None:
        rows.append(f"| checkpointed peak memory, largest T ≤ {GOALS['memory_ratio']} × that at T = 10 | "
                    f"{mr:.2f} × | {yes(mr <= GOALS['memory_ratio'])} |")
    rows.append(f"| overhead ratio ≤ {GOALS['overhead']} | {out['overhead_ratio']:.2f} | "
                f"{yes(out['overhead_ratio'] <= GOALS['overhead'])} |")
    sp = out["batched_speedup"]
    rows.append(f"| batched ≥ {GOALS['speedup']:.0f} × faster than one at a time | "
                + ", ".join(f"{v:.1f} × ({k})" for k, v in sp.items())
                + f" | {yes(min(sp.values()) >= GOALS['speedup'])} |")
    na, nl = by["neuron/adam"], by["neuron/lbfgs"]
    st = out["step_seconds"]
    hf = out["high_freq_share"]
    f3 = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    steps20 = int(GOALS["seconds"]["neuron"] / st["T10_ckpt"])
    if nl["steps_median"] is not None:
        facts = [f"- **Neuron objective, Adam against L-BFGS:** Adam reaches τ with {pct(na['success_rate'])} of the "
                 f"samples (median final loss {na['loss_median']:.3g}); the per-sample L-BFGS with "
                 f"{pct(nl['success_rate'])}, in a median of {nl['steps_median']:.0f} steps (slowest {nl['steps_max']})."]
    else:
        facts = [f"- **Neuron objective:** Adam {pct(na['success_rate'])}, L-BFGS {pct(nl['success_rate'])} of the "
                 f"samples below τ."]
    facts.append(f"- **Step cost:** one checkpointed step of {n} samples at T = 10 costs {st['T10_ckpt']:.2f} s "
                 f"({st['T10_nockpt']:.2f} s without checkpointing), so {GOALS['seconds']['neuron']:.0f} s buy about "
                 f"{steps20} steps.")
    if out["peak_mib"].get("T10_ckpt"):
        facts.append(f"- **Memory:** at T = 10 an un-checkpointed step needs {out['peak_mib']['T10_nockpt']:.0f} MiB, "
                     f"a checkpointed one {out['peak_mib']['T10_ckpt']:.0f} MiB.")
    facts.append(f"- **Spectra:** share of power above half Nyquist {f3(hf['real'])} for real digits, "
                 f"{f3(hf['equidiff'])} for the EquiDiff samples, {f3(hf['pixel'])} for the pixel-space baseline.")
    return "\n".join(rows + [""] + facts + [""])


if __name__ == "__main__":
    main()
