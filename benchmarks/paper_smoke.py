"""The chapters' notebooks with ``profile="paper"`` on tiny random models, on any device (e.g. a GPU).

    python benchmarks/paper_smoke.py --device cuda [--out DIR] [--notebooks 02_neurons 03_sae 04_classifier]
    python benchmarks/paper_smoke.py --device cuda --models paper-random   # paper-sized, random weights

Writes randomly initialised models of the paper classes to ``--out`` — tiny ones
(:func:`equidiff.testing.write_tiny_models`), or with ``--models paper-random`` the paper's sizes (DiT-XL/2 with
the SD VAE at 256 px, ResNet-50, the CLIP ViT-B/32 with a 16×-wide SAE on block 11, Inception-v3:
several GB, for a GPU) — and a few random query images, then executes each notebook's cells in this process
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
PAPER_EXTRA = {  # paper-sized random models: a few steps, enough to run every cell at full size
    "02_neurons": {"n_samples": 4, "steps": 2, "batch_size": 4, "ddim_steps": 10},
    "03_sae": {"n_samples": 4, "steps": 2, "n_features": 2, "min_rate": 0.0, "max_rate": 1.0, "batch_size": 4,
               "ddim_steps": 10},
    "04_classifier": {"n_samples": 4, "steps": 2, "cutoffs": [0.3, 0.6], "ddim_steps": 10},
}
EXTRA = {
    "02_neurons": {"n_samples": 2, "steps": 2, "batch_size": 2},
    "03_sae": {"n_samples": 2, "steps": 2, "n_features": 2, "min_rate": 0.0, "max_rate": 1.0, "batch_size": 2},
    "04_classifier": {"n_samples": 2, "steps": 2, "cutoffs": [0.3, 0.6]},
}


def write_paper_random(folder: Path):
    """Paper-sized models of the paper classes with random weights (time, memory and shapes only)."""
    import timm
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel
    from safetensors.torch import save_file

    from bench_gpu import DIT_XL2_256, SD_VAE
    from equidiff.sae import SparseAutoencoder
    from equidiff.worlds.imagenet.config import CLASSIFIER_MODEL, INCEPTION_MODEL, VIT_MODEL, PaperConfig

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    DiTTransformer2DModel(**DIT_XL2_256).save_pretrained(folder / "dit" / "transformer")
    AutoencoderKL(**SD_VAE).save_pretrained(folder / "dit" / "vae")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False).save_pretrained(
        folder / "dit" / "scheduler")
    for name, file in ((CLASSIFIER_MODEL, "resnet50.safetensors"), (VIT_MODEL, "vit.safetensors"),
                       (INCEPTION_MODEL, "inception.safetensors")):  # with their tags: the tags' configs
        net = timm.create_model(name, pretrained=False)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / file))
    layer = 11
    sae = SparseAutoencoder(768, 16 * 768, "relu", hook_name=f"blocks.{layer}.hook_resid_post", layer=layer,
                            model_name=VIT_MODEL)
    with torch.no_grad():
        w = torch.randn(sae.d_sae, 768)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.t())
        sae.b_enc.copy_(torch.randn(sae.d_sae) * 0.5)
    sae.save(folder / "sae")
    return PaperConfig(dit_path=str(folder / "dit"), classifier_path=str(folder / "resnet50.safetensors"),
                       vit_path=str(folder / "vit.safetensors"), sae_path=str(folder / "sae"),
                       inception_path=str(folder / "inception.safetensors"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="folder for models, queries and outputs (default: a temp folder)")
    ap.add_argument("--notebooks", nargs="+", default=list(EXTRA))
    ap.add_argument("--models", choices=("tiny", "paper-random"), default="tiny")
    args = ap.parse_args(argv)
    from PIL import Image

    from equidiff.testing import write_tiny_models

    out = Path(args.out or tempfile.mkdtemp(prefix="paper_smoke_"))
    t0 = time.perf_counter()
    cfg = write_tiny_models(out / "models") if args.models == "tiny" else write_paper_random(out / "models")
    print(f"[paper_smoke] {args.models} models written in {time.perf_counter() - t0:.1f} s")
    fields = json.loads(json.dumps(cfg.to_dict()))
    fields["cache_dir"] = str(out / "empty_hub")
    extra = EXTRA if args.models == "tiny" else PAPER_EXTRA
    images = out / "query"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [(24, 20), (16, 30), (20, 20)] if args.models == "tiny" else [(300, 400), (375, 500), (256, 256)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"q{i}.png")
    failed = []
    for name in args.notebooks:
        params = {"profile": "paper", "paper_config": fields, "query_images": str(images), "ddim_steps": 3,
                  "device": args.device, "output_dir": str(out / name), **extra.get(name, {})}
        argv_nb = [str(ROOT / "notebooks" / f"{name}.ipynb")] + [f"-p{k}={v!r}" for k, v in params.items()]
        t0 = time.perf_counter()
        if args.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        rc = exec_notebook.main(argv_nb)
        dt = time.perf_counter() - t0
        if args.device == "cuda":
            print(f"[paper_smoke] {name}: peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
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
