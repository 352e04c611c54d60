"""The chapters' notebooks with ``profile="paper"`` on tiny random models, on any device (e.g. a GPU).

    python benchmarks/paper_smoke.py --device cuda [--out DIR] [--notebooks 02_neurons 03_sae 04_classifier]

Writes tiny randomly initialised models of the paper classes (``paper.write_tiny_models``) and a
few random query images to ``--out``, then executes each notebook's cells in this process
(``benchmarks/exec_notebook.py``: no Jupyter needed) with the paper profile on ``--device``, and
prints each chapter's metrics.json summary. The numbers mean nothing (random weights); what it
shows is that every cell runs on that device. Exit status 1 if a notebook fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exec_notebook  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXTRA = {
    "02_neurons": {"n_samples": 2, "steps": 2, "batch_size": 2},
    "03_sae": {"n_samples": 2, "steps": 2, "n_features": 2, "min_rate": 0.0, "max_rate": 1.0, "batch_size": 2},
    "04_classifier": {"n_samples": 2, "steps": 2, "cutoffs": [0.3, 0.6]},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="folder for models, queries and outputs (default: a temp folder)")
    ap.add_argument("--notebooks", nargs="+", default=list(EXTRA))
    args = ap.parse_args(argv)
    from PIL import Image

    from equidiff import paper

    out = Path(args.out or tempfile.mkdtemp(prefix="paper_smoke_"))
    cfg = paper.write_tiny_models(out / "models")
    fields = json.loads(json.dumps(cfg.to_dict()))
    fields["cache_dir"] = str(out / "empty_hub")
    images = out / "query"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(24, 20), (16, 30), (20, 20)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"q{i}.png")
    failed = []
    for name in args.notebooks:
        params = {"profile": "paper", "paper_config": fields, "query_images": str(images), "ddim_steps": 3,
                  "device": args.device, "output_dir": str(out / name), **EXTRA.get(name, {})}
        argv_nb = [str(ROOT / "notebooks" / f"{name}.ipynb")] + [f"-p{k}={v!r}" for k, v in params.items()]
        t0 = time.perf_counter()
        rc = exec_notebook.main(argv_nb)
        dt = time.perf_counter() - t0
        if rc:
            failed.append(name)
            print(f"[paper_smoke] {name}: FAILED after {dt:.1f} s")
            continue
        m = json.loads((out / name / "metrics.json").read_text())
        print(f"[paper_smoke] {name}: ok in {dt:.1f} s on {args.device}; metrics keys: {sorted(m)[:12]}")
    print(f"[paper_smoke] outputs in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
