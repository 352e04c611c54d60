"""GPU benchmark of EquiDiff at paper scale: latent DiT prior + ResNet-50 neuron objective.

    python benchmarks/bench_gpu.py [--dit-path DIR] [--classifier-path FILE] [--bf16]
                                   [--batch-size 8] [--ddim-steps-list 10 25 50] [--json PATH]
    python benchmarks/bench_gpu.py --random-weights   # DiT-XL/2 + SD-VAE + ResNet-50 shapes, random init
    python benchmarks/bench_gpu.py --tiny             # tiny random models (CPU ok): tests the code path

For T = 10 / 25 / 50 DDIM steps it prints, per batch of ``--batch-size`` samples:

* **seconds per optimisation step** — one step of Algorithm 1 (lines 9-26: the checkpointed DDIM
  chain, the VAE decode, the neuron objective, backward to z_T, the optimiser step), the median
  of ``--opt-steps`` timed steps after one warm-up step;
* **peak GPU memory** of those steps (``torch.cuda.max_memory_allocated``, the models' weights
  included: about 3.4 GB in float32 for DiT-XL/2 + VAE + ResNet-50);
* **seconds per converged sample** — wall time of a run of Algorithm 1 with budget
  ``--converge-budget`` and threshold ``--tau`` divided by the number of samples that got below τ
  (not reported with random weights: convergence on a random network says nothing).

The objective is the whole pre-ReLU map of one ResNet-50 last-stage channel (``--channel``,
1656 by default: thesis Section 4.2); the query is a sample of the prior from another seed (or
``--query IMAGE``). Weights come from ``--dit-path`` / ``--classifier-path`` or the local Hugging
Face cache (never downloaded unless ``--allow-download``).

With no CUDA device (and no ``--tiny``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from equidiff.core.batched import find_invariants_batched
from equidiff.core.invariants import InvariantConfig, iterate_invariants
from equidiff.core.priors import LatentDiTPrior
from equidiff.testing import write_tiny_models
from equidiff.worlds.imagenet.config import PaperConfig
from equidiff.worlds.imagenet.images import load_query_images
from equidiff.worlds.imagenet.loaders import (AutocastPrior, ImageNetInput, autocast_objective, disable_inplace,
                                              paper_neuron_objective, prior_image_size)
from equidiff.worlds.imagenet.models import load_paper_models

# DiT-XL/2 (Peebles & Xie, 2023: depth 28, hidden 1152 = 16 heads × 72, patch 2) on 32×32×4
# latents of the Stable Diffusion VAE (kl-f8: 128/256/512/512 channels, 2 ResNet blocks per level).
DIT_XL2_256 = dict(
    sample_size=32, patch_size=2, in_channels=4, out_channels=8, num_layers=28, num_attention_heads=16,
    attention_head_dim=72, num_embeds_ada_norm=1000,
)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2, norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_weight_models(device: torch.device, num_steps: int, checkpointing: bool):
    """Paper-sized models with random weights (for time and memory only)."""
    import timm
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(**DIT_XL2_256).to(device)
    vae = AutoencoderKL(**SD_VAE).to(device)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    prior = LatentDiTPrior(transformer, vae, sched, num_steps=num_steps, checkpointing=checkpointing)
    net = disable_inplace(timm.create_model("resnet50", pretrained=False)).to(device).eval().requires_grad_(False)
    return prior, ImageNetInput(net)


def with_steps(prior, T: int):
    """The same prior at T DDIM steps (models shared, nothing copied)."""
    base = prior.prior if isinstance(prior, AutocastPrior) else prior
    p = LatentDiTPrior(base.transformer, base.vae, base.scheduler, num_steps=T, checkpointing=base.checkpointing,
                       class_label=base.class_label, clamp=base.clamp)
    return AutocastPrior(p) if isinstance(prior, AutocastPrior) else p


def time_steps(objective, query, prior, n: int, opt_steps: int, device, cfg_kwargs) -> tuple[float, float | None]:
    """Median seconds per optimisation step (after 1 warm-up) and peak GPU memory in MiB."""
    cfg = InvariantConfig(n_samples=n, steps=opt_steps + 1, tau=1e-30, seed=1, **cfg_kwargs)  # τ ≈ 0: never stops
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    marks = []
    for _ in iterate_invariants(objective, query, prior, cfg):
        _sync(device)
        marks.append(time.perf_counter())
    # yields come after each step's forward; the interval between two is one full step
    gaps = [b - a for a, b in zip(marks[1:], marks[2:])] or [marks[-1] - marks[0]]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return statistics.median(gaps), peak


def converge(objective, query, prior, n: int, budget: int, tau: float, batch_size: int, cfg_kwargs) -> dict:
    cfg = InvariantConfig(n_samples=n, steps=budget, tau=tau, seed=2, **cfg_kwargs)
    t0 = time.perf_counter()
    res = find_invariants_batched(objective, query, prior, cfg, batch_size)
    wall = time.perf_counter() - t0
    k = int(res.converged.sum())
    return {"wall_seconds": wall, "converged": k, "n": n, "budget": budget,
            "seconds_per_converged_sample": wall / k if k else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random models (any device): checks the code path")
    ap.add_argument("--random-weights", action="store_true", help="paper-sized models, random init (time/memory only)")
    ap.add_argument("--dit-path", help="DiT pipeline folder (default: the HF cache of facebook/DiT-XL-2-256)")
    ap.add_argument("--classifier-path", help="resnet50 weights file/folder (default: the HF cache)")
    ap.add_argument("--cache-dir", help="Hugging Face hub cache")
    ap.add_argument("--allow-download", action="store_true")
    ap.add_argument("--query", help="query image file (default: a prior sample from another seed)")
    ap.add_argument("--channel", type=int, help="neuron channel (default 1656; tiny: 3)")
    ap.add_argument("--ddim-steps-list", type=int, nargs="+", default=[10, 25, 50], help="T values")
    ap.add_argument("--batch-size", type=int, default=8, help="samples per batch")
    ap.add_argument("--opt-steps", type=int, default=5, help="timed optimisation steps per T (after 1 warm-up)")
    ap.add_argument("--converge-budget", type=int, default=None,
                    help="budget B of the convergence run (default 512; tiny 4; 0: skip)")
    ap.add_argument("--tau", type=float, default=0.01, help="threshold τ (thesis: 0.01)")
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"), help="thesis: SGD")
    ap.add_argument("--lr", type=float, default=10.0, help="learning rate (thesis: 10 with SGD)")
    ap.add_argument("--lowpass-cutoff", type=float, default=None, help="cutoff of the filtered loss term")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast of prior and objective")
    ap.add_argument("--no-checkpointing", action="store_true", help="keep every step's activations")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("No CUDA GPU is available here: nothing was measured. Run this on a machine with a GPU "
              "(or pass --tiny to check the code path on tiny random models).")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    ck = not args.no_checkpointing
    tmp = None
    if args.tiny:
        tmp = tempfile.TemporaryDirectory(prefix="equidiff-bench-tiny-")
        cfg = write_tiny_models(tmp.name)
        cfg = PaperConfig.from_dict({**cfg.to_dict(), "device": str(device), "bf16": args.bf16,
                                           "checkpointing": ck, "batch_size": args.batch_size})
        models = load_paper_models(cfg)
        prior, classifier = models.prior, models.classifier
        channel = 3 if args.channel is None else args.channel
        weights = "tiny random"
    elif args.random_weights:
        prior, classifier = random_weight_models(device, args.ddim_steps_list[0], ck)
        if args.bf16:
            prior = AutocastPrior(prior)
        channel = 1656 if args.channel is None else args.channel
        weights = "random (DiT-XL/2, SD VAE, ResNet-50 shapes)"
    else:
        cfg = PaperConfig(dit_path=args.dit_path, classifier_path=args.classifier_path, cache_dir=args.cache_dir,
                                allow_download=args.allow_download, bf16=args.bf16, checkpointing=ck,
                                batch_size=args.batch_size, device=str(device))
        models = load_paper_models(cfg)  # ModelNotFoundError says what to fetch
        prior, classifier = models.prior, models.classifier
        channel = 1656 if args.channel is None else args.channel
        weights = f"{cfg.dit_model} + {cfg.classifier_model}"
    objective = paper_neuron_objective(classifier, channel)
    if args.bf16:
        objective = autocast_objective(objective)

    if args.query:
        query, _ = load_query_images([args.query], size=prior_image_size(prior))
        query = query.to(device)
    else:
        with torch.no_grad():
            query = prior(prior.sample_latents(1, torch.Generator().manual_seed(123))).clamp(-1, 1)  # (1, 3, H, W)

    budget = args.converge_budget if args.converge_budget is not None else (4 if args.tiny else 512)
    cfg_kwargs = dict(optimizer=args.optimizer, lr=args.lr, lowpass_cutoff=args.lowpass_cutoff)
    info = {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "weights": weights, "batch_size": args.batch_size, "bf16": args.bf16, "checkpointing": ck,
        "channel": channel, "optimizer": args.optimizer, "lr": args.lr, "tau": args.tau,
        "torch": torch.__version__,
    }
    print("EquiDiff GPU benchmark: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    rows = []
    print(f"{'T':>4} {'s/step':>10} {'peak MiB':>10} {'converged':>10} {'s/converged sample':>20}")
    for T in args.ddim_steps_list:
        p = with_steps(prior, T)
        sec, peak = time_steps(objective, query, p, args.batch_size, args.opt_steps, device, cfg_kwargs)
        conv = None
        if budget > 0 and not args.random_weights:
            conv = converge(objective, query, p, args.batch_size, budget, args.tau, args.batch_size, cfg_kwargs)
        row = {"T": T, "seconds_per_step": sec, "peak_gpu_mib": peak, "convergence": conv}
        rows.append(row)
        spc = conv and conv["seconds_per_converged_sample"]
        print(f"{T:>4} {sec:>10.3f} {('%.0f' % peak) if peak is not None else 'n/a':>10} "
              f"{(str(conv['converged']) + '/' + str(conv['n'])) if conv else 'n/a':>10} "
              f"{('%.2f' % spc) if spc else 'n/a':>20}", flush=True)
    if args.random_weights:
        print("seconds per converged sample: not measured (random weights)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
