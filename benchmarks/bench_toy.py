"""Benchmark of the 2D chapter: three queries × 512 invariant points.

    python benchmarks/bench_toy.py [--json PATH] [--threads N]

Prints, per optimiser, the total seconds for the three queries, the largest |f(x) − p| over all
returned points and the smallest coverage of the exact level curve; then coverage with only 32
points per query (Adam with a small repulsion between points) against the best any 32 points
could reach (32 points spaced equally along the curve). Goal: < 0.3 s in total, coverage ≥ 0.95.
"""

from __future__ import annotations

import argparse
import json

import torch

from equidiff.worlds import circles as toy
from equidiff.chapters import circles as circles_chapter

QUERIES = ([0.5, 0.3], [0.7, -0.6], [-1.3, 0.6])
TAU = 0.005


def run(model, optimizer: str, n: int, repulsion: float = 0.0, steps: int = 200) -> dict:
    rs = [circles_chapter.analyse_query(model, q, n=n, tau=TAU, steps=steps, optimizer=optimizer, repulsion=repulsion)
          for q in QUERIES]
    covs = [r["coverage"] for r in rs]
    return {"seconds": sum(r["seconds"] for r in rs), "max_abs_error": max(r["max_abs_error"] for r in rs),
            "coverages": covs, "min_coverage": min(covs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, info = toy.load_classifier()
    run(model, "adam", 64, steps=5)  # warm-up (first-call overheads)
    print(f"circles MLP test accuracy {info['test_accuracy']:.3f}; torch threads {a.threads}; tau = {TAU}")
    print(f"{'optimiser':<10}{'points':>8}{'seconds':>10}{'max|f-p|':>11}  coverage per query")
    rows = {}
    for opt in ("newton", "adam"):
        r = run(model, opt, 512)
        rows[opt] = r
        print(f"{opt:<10}{512:>8}{r['seconds']:>10.3f}{r['max_abs_error']:>11.2e}  "
              + "  ".join(f"{c:.3f}" for c in r["coverages"]))
    few = run(model, "adam", 32, repulsion=0.05, steps=400)
    best = [toy.best_coverage(toy.level_curves(model, float(toy.probability_of(model, [q])[0])), 32)
            for q in QUERIES]
    print("\n32 points per query (Adam + repulsion): coverage "
          + "  ".join(f"{c:.3f}" for c in few["coverages"])
          + "\nbest any 32 points can reach (equally spaced):  " + "  ".join(f"{c:.3f}" for c in best))
    out = {
        "seconds": rows["newton"]["seconds"],
        "max_abs_error": rows["newton"]["max_abs_error"],
        "min_coverage": rows["newton"]["min_coverage"],
        "coverage_32": few["coverages"],
        "coverage_32_best": best,
        "optimizer": "newton",
        "adam": {k: rows["adam"][k] for k in ("seconds", "max_abs_error", "min_coverage")},
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
