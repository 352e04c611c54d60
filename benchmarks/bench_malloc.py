"""The world chapter's prior chains with glibc's default malloc and with the build's settings, side by side.

    python benchmarks/bench_malloc.py [--n-samples 1000] [--stochastic-samples 500] [--json PATH] [--markdown PATH]

``equidiff.build.MALLOC_ENV`` (``MALLOC_MMAP_MAX_=0``, ``MALLOC_TRIM_THRESHOLD_`` = 64 GiB) keeps the large
blocks torch frees in a heap glibc never trims; by default glibc maps each block above its mmap threshold
(32 MB at most) afresh and the kernel zero-fills it page by page on every denoising step. Each setting runs
the same workload in its own process (glibc reads these variables when a process starts): chapter 00's
:func:`equidiff.chapters.world.overview` with the chapter's defaults (1,000 samples of the 10-step chain,
the 50-step chain from the same noise, 500 samples of the 100-step stochastic chain), torch's default
thread count. It prints, per setting, the wall, user and system seconds, the minor page faults and the
peak resident memory, the ratio of the wall times, and whether both runs gave the same samples bit for bit
(sha256 of the 10-step samples and the class counts of every chain).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time


def child(n_samples: int, stochastic_samples: int) -> dict:
    from equidiff.chapters import world as eqw
    from equidiff.worlds import load_world

    world = load_world("cpu")
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    ov = eqw.overview(world, n_samples=n_samples, seed=0, ddim_steps=10, compare_steps=50, stochastic_steps=100,
                      stochastic_samples=stochastic_samples)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    counts = {k: (ov[k] or {}).get("class_counts") for k in ("compare_chain", "stochastic_chain")}
    return {"wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
            "minor_faults": r1.ru_minflt - r0.ru_minflt, "peak_rss_mb": r1.ru_maxrss / 1024,
            "samples_sha256": hashlib.sha256(ov["samples"].numpy().tobytes()).hexdigest(),
            "class_counts": {"10-step": ov["quality"]["class_counts"], **counts}}


def run(setting: str, args) -> dict:
    from equidiff.build import MALLOC_ENV

    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    if setting == "build":
        env.update(MALLOC_ENV)
    cmd = [sys.executable, __file__, "--child", "--n-samples", str(args.n_samples),
           "--stochastic-samples", str(args.stochastic_samples)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown(out: dict) -> str:
    """The Performance page's table and finding, from a run's ``--json`` record."""
    lines = ["| malloc settings | wall s | user s | system s | minor page faults | peak resident MB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in out["rows"].items():
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r['user_s']:.1f} | {r['sys_s']:.1f} | {r['minor_faults']:,} | "
                     f"{r['peak_rss_mb']:.0f} |")
    same = "the same" if out["same"] else "**not** the same"
    lines += ["", f"Workload: chapter 00's prior chains ({out['n_samples']:,} samples of the 10- and 50-step chains, "
              f"{out['stochastic_samples']:,} of the 100-step stochastic chain) on {out['cores']} cores. The default "
              f"settings take {out['ratio']:.2f}× the wall time of the build's; the samples and every chain's class "
              f"counts are {same} bit for bit."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-samples", type=int, default=1000, help="samples of the 10- and 50-step chains (≥ 10)")
    ap.add_argument("--stochastic-samples", type=int, default=500, help="samples of the stochastic chain (≥ 10)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--markdown", help="also write the Performance page's table to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("n_samples", "stochastic_samples"):
        if getattr(args, name) < 10:
            ap.error(f"--{name.replace('_', '-')} must be an integer ≥ 10, got {getattr(args, name)}")
    if args.child:
        print(json.dumps(child(args.n_samples, args.stochastic_samples)))
        return 0
    rows = {}
    for setting in ("glibc default", "build"):
        print(f"running with the {setting} malloc settings ...", flush=True)
        rows[setting] = run(setting, args)
    a, b = rows["glibc default"], rows["build"]
    print(f"\n{'malloc':<14} {'wall s':>8} {'user s':>8} {'sys s':>8} {'minor faults':>13} {'peak RSS MB':>12}")
    for name, r in rows.items():
        print(f"{name:<14} {r['wall_s']:>8.1f} {r['user_s']:>8.1f} {r['sys_s']:>8.1f} {r['minor_faults']:>13,} "
              f"{r['peak_rss_mb']:>12.0f}")
    same = a["samples_sha256"] == b["samples_sha256"] and a["class_counts"] == b["class_counts"]
    print(f"\nwall time, default / build settings: {a['wall_s'] / b['wall_s']:.2f}×; "
          f"same samples and class counts bit for bit: {same}")
    out = {"rows": rows, "ratio": a["wall_s"] / b["wall_s"], "same": same, "n_samples": args.n_samples,
           "stochastic_samples": args.stochastic_samples, "cores": os.cpu_count()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(out))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
