"""Model zoo: the embedded digits world's trained models (CPU, offline, trained here and cached).

The models — a pixel-space diffusers ``UNet2DModel`` DDPM prior, a timm ResNet classifier and a
timm ViT, all on the 16×16 digits of :mod:`equidiff.worlds.digits.data` — are built and trained by
the recipes of :mod:`equidiff.worlds.digits.recipes`; this module caches and loads them.

Caching (see :mod:`equidiff.cache`): each trained model lives in
``<cache root>/<preset name>-<sha256 of config JSON + code version>/``; the root is the
``cache_dir`` argument, else ``$EQUIDIFF_CACHE``, else ``data/cache`` in the repository. The
UNet and its scheduler are written with diffusers' ``save_pretrained`` (safetensors), the
classifier and the ViT with ``safetensors.torch.save_file`` plus a ``config.json``; nothing is pickled.
A folder is written under a temporary name and renamed when complete
(:func:`equidiff.cache.atomic_folder`), so an interrupted training never leaves a half-written
cache behind. Its ``config.json`` records the sha256 of every other file, checked on every load: a
changed, truncated or missing file, or a folder without ``config.json``, raises
:class:`equidiff.cache.CacheError` naming the file and saying how to rebuild it (delete the folder;
the next :func:`get_model` call trains it again) instead of loading wrong weights or retraining.

:func:`get_model` loads a preset of :data:`~equidiff.worlds.digits.recipes.PRESETS`, training it
on first use.

:func:`quality_gate` checks the prior with the classifier: the share of seeded, unconditional
10-step DDIM samples (η = 0) that the classifier labels with confidence ≥ 0.9.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from equidiff import cache
from equidiff._validate import bad as _bad, is_int as _is_int, is_num as _is_num
from equidiff.training import machine
from equidiff.worlds.digits.data import NUM_CLASSES
from equidiff.worlds.digits.recipes import (
    CODE_VERSION,
    PRESETS,
    ClassifierConfig,
    DDPMConfig,
    ViTConfig,
    build_classifier,
    build_vit,
    train_classifier,
    train_ddpm,
    train_vit,
)

__all__ = [
    "ZooModel",
    "model_folder",
    "load_or_train",
    "reload",
    "get_model",
    "checkpoint_path",
    "QualityReport",
    "quality_gate",
    "save_sample_grid",
]


# --------------------------------------------------------------------------------------------
# Cache folders: save, load, load or train
# --------------------------------------------------------------------------------------------


@dataclass
class ZooModel:
    """A trained model of the zoo, as loaded from (or just written to) its cache folder."""

    name: str  # folder prefix: the preset name (or "digits-ddpm" / "digits-classifier")
    model: nn.Module  # UNet2DModel (DDPM), timm ResNet (classifier) or timm ViT; eval mode, requires_grad off
    config: Union[DDPMConfig, ClassifierConfig, ViTConfig]  # the training config (its hash names the folder)
    path: Path  # the cache folder
    info: dict  # training record: train_seconds, final_loss, n_params (+ accuracies for a classifier)
    trained_now: bool  # True if this call trained the model, False if it was loaded from the cache
    scheduler: Optional[object] = None  # the DDPM's DDPMScheduler; None for a classifier

    @property
    def kind(self) -> str:
        return _kind_of(self.config)  # "ddpm", "classifier" or "vit"


def _kind_of(cfg) -> str:
    if isinstance(cfg, DDPMConfig):
        return "ddpm"
    if isinstance(cfg, ClassifierConfig):
        return "classifier"
    if isinstance(cfg, ViTConfig):
        return "vit"
    raise TypeError(f"config must be a DDPMConfig, ClassifierConfig or ViTConfig, got {type(cfg).__name__}")


def model_folder(cfg: Union[DDPMConfig, ClassifierConfig], name: Optional[str] = None, cache_dir=None,
                 data_key: Optional[dict] = None) -> Path:
    """``<cache root>/<name>-<hash>/`` for ``cfg`` (hash of the config JSON and :data:`CODE_VERSION`).

    ``data_key``: a JSON-able description of non-default training data (see :func:`load_or_train`);
    it enters the hash, so models trained on different data never share a folder.
    """
    name = name or f"digits-{_kind_of(cfg)}"
    key = cfg if data_key is None else {"model": _config_json(cfg), "data": data_key}
    return cache.model_dir(name, key, CODE_VERSION, cache_dir)


def checkpoint_path(folder: Path) -> Path:
    """Where the training state of ``folder``'s model is checkpointed while it trains (a hidden file beside it)."""
    return folder.parent / f".{folder.name}.ckpt.pt"


def _config_json(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, as stored


def _save(folder: Path, kind: str, model: nn.Module, scheduler, cfg, info: dict) -> None:
    """Write a complete cache folder (under a temporary name, renamed into place when complete); its
    ``config.json`` holds the sha256 of every other file."""
    record = {"kind": kind, "code_version": CODE_VERSION, "info": info}
    with cache.atomic_folder(folder) as tmp:
        if kind == "ddpm":
            model.save_pretrained(tmp / "unet", safe_serialization=True)  # config.json + safetensors
            scheduler.save_pretrained(tmp / "scheduler")  # scheduler_config.json
            cache.write_record(tmp, {"config": _config_json(cfg), **record})  # last: it hashes the others
        else:
            cache.save_state(model, tmp, cfg, record)  # model.safetensors + config.json


def _rebuild(folder: Path, name: str | None = None) -> str:
    call = f"get_model({name!r})" if name in PRESETS else "the next load_or_train call"
    return cache.rebuild_hint(folder, f"{call} trains it again (on a CPU: seconds for a tiny preset, "
                                      "minutes for a full one)")


def _load(folder: Path, cfg, name: str | None = None):
    """Load a cache folder, verified against the sha256 in its record; returns ``(model, scheduler or None, info)``."""
    rebuild = _rebuild(folder, name)
    stored = cache.check_folder(folder, cache.RECORD, rebuild)
    if stored is None:
        raise cache.CacheError(f"cache folder {folder} is missing or empty; {rebuild}")
    if stored.get("config") != _config_json(cfg) or stored.get("code_version") != CODE_VERSION:
        raise ValueError(
            f"cache folder {folder} holds a different config or code version than requested; "
            f"delete the folder to retrain"
        )
    if _kind_of(cfg) == "ddpm":
        from diffusers import DDPMScheduler, UNet2DModel

        with cache.loading(folder / "unet", rebuild):
            unet = UNet2DModel.from_pretrained(
                folder / "unet", use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
            )
        with cache.loading(folder / "scheduler", rebuild):
            scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        cache.seal(folder, stored)  # a folder written before weights were verified: record their sha256
        return unet.eval().requires_grad_(False), scheduler, stored["info"]
    model = build_vit(cfg) if _kind_of(cfg) == "vit" else build_classifier(cfg)
    cache.load_state(model, folder, rebuild)
    return model.eval().requires_grad_(False), None, stored["info"]


def load_or_train(
    cfg: Union[DDPMConfig, ClassifierConfig],
    name: Optional[str] = None,
    cache_dir=None,
    *,
    train_if_missing: bool = True,
    progress: bool = False,
    data: Optional[Callable[[], tuple]] = None,
    data_key: Optional[dict] = None,
) -> ZooModel:
    """The model for ``cfg`` from its cache folder, trained (on CPU) and cached first if missing.

    ``name``: folder prefix (default ``"digits-ddpm"`` / ``"digits-classifier"``).
    ``cache_dir``: cache root (default ``$EQUIDIFF_CACHE``, else ``data/cache``).
    ``train_if_missing=False`` raises ``FileNotFoundError`` instead of training.
    ``data``: a function returning ``(images, labels)`` to train on instead of the digits
    training split (called only when training); ``data_key`` describes that data in the cache
    hash and is required with it (DDPM and classifier only).
    """
    kind = _kind_of(cfg)
    name = name or f"digits-{kind}"
    if (data is None) != (data_key is None):
        raise _bad("data_key", data_key, "given exactly when data is given (it names the data in the cache hash)")
    if data is not None and kind == "vit":
        raise _bad("data", "a function", "None for a ViT (custom training data: DDPM and classifier only)")
    folder = model_folder(cfg, name, cache_dir, data_key)
    if cache_dir is None and cache.is_shipped(folder) and not folder.is_dir():
        raise cache.missing_shipped(folder)  # a shipped model is never retrained behind the reader's back
    if folder.is_dir() and any(folder.iterdir()):  # verified by _load; an incomplete folder raises, never retrains
        model, scheduler, info = _load(folder, cfg, name)
        return ZooModel(name, model, cfg, folder, info, trained_now=False, scheduler=scheduler)
    if not train_if_missing:
        raise FileNotFoundError(
            f"no cached {name} at {folder}; call with train_if_missing=True to train it"
        )
    extra = {} if data is None else {"data": data()}
    if kind == "ddpm":  # long: checkpointed beside the folder, so a killed run continues where it stopped
        ckpt = checkpoint_path(folder)
        model, scheduler, info = train_ddpm(cfg, progress=progress, checkpoint=ckpt, **extra)
    elif kind == "vit":
        model, info = train_vit(cfg, progress=progress)
        scheduler = None
    else:
        model, info = train_classifier(cfg, progress=progress, **extra)
        scheduler = None
    info = {**info, "machine": machine()}
    if data_key is not None:
        info = {**info, "data": data_key}
    _save(folder, kind, model, scheduler, cfg, info)
    if kind == "ddpm":
        ckpt.unlink(missing_ok=True)  # the folder is complete: the training state is no longer needed
    # Return the model as every later call loads it, not the tensors training left in memory: the
    # loaded weights sit at other memory offsets (diffusers keeps the safetensors layout), and CPU
    # kernels round differently on differently aligned data (~1e-7), which the chaotic optimisation
    # of Algorithm 1 turns into different samples. The first run must equal every rerun.
    model, scheduler, _ = _load(folder, cfg, name)
    return ZooModel(name, model, cfg, folder, info, trained_now=True, scheduler=scheduler)


def reload(model: ZooModel) -> ZooModel:
    """``model`` loaded again from its cache folder (in another process: the same weights, laid out in
    memory exactly as in this one, so it computes bit-identically)."""
    loaded, scheduler, info = _load(model.path, model.config, model.name)
    return ZooModel(model.name, loaded, model.config, model.path, info, trained_now=False, scheduler=scheduler)


def get_model(name: str, cache_dir=None, *, train_if_missing: bool = True, progress: bool = True) -> ZooModel:
    """A preset of :data:`PRESETS` by name, loaded from the cache or trained on first use.

    >>> ddpm = get_model("digits-ddpm")          # .model: UNet2DModel, .scheduler: DDPMScheduler
    >>> clf = get_model("digits-classifier")     # .model: timm ResNet, logits of images in [-1, 1]
    >>> vit = get_model("digits-vit")            # .model: timm VisionTransformer (the SAE chapter's model)
    """
    if name not in PRESETS:
        raise ValueError(f"name must be one of {tuple(PRESETS)}, got {name!r}")
    return load_or_train(PRESETS[name](), name, cache_dir, train_if_missing=train_if_missing, progress=progress)


# --------------------------------------------------------------------------------------------
# Quality gate
# --------------------------------------------------------------------------------------------


@dataclass
class QualityReport:
    """How digit-like unconditional samples of a DDPM are, judged by a classifier."""

    share: float  # share of samples whose top class probability is ≥ threshold
    samples: torch.Tensor  # (n, 1, 16, 16) DDIM samples in [-1, 1]
    labels: torch.Tensor  # (n,) the classifier's top class
    confidence: torch.Tensor  # (n,) its probability
    threshold: float  # the confidence threshold
    num_inference_steps: int  # DDIM steps
    seed: int  # seed of the starting noise (and, for η > 0, of the noise each step adds)
    eta: float = 0.0  # DDIM η: 0 the deterministic chain the chapters optimise through, 1 DDPM-like ancestral steps

    def class_counts(self) -> list[int]:
        """Samples per predicted class 0..9 (diversity check: a collapsed prior has few classes)."""
        return torch.bincount(self.labels, minlength=NUM_CLASSES).tolist()

    def summary(self) -> dict:
        return {
            "share_confident": self.share,
            "threshold": self.threshold,
            "n": int(self.labels.numel()),
            "num_inference_steps": self.num_inference_steps,
            "seed": self.seed,
            "eta": self.eta,
            "mean_confidence": float(self.confidence.mean()),
            "class_counts": self.class_counts(),
        }


@torch.no_grad()
def quality_gate(
    unet,
    scheduler,
    classifier: nn.Module,
    *,
    n: int = 256,
    num_inference_steps: int = 10,
    threshold: float = 0.9,
    seed: int = 0,
    eta: float = 0.0,
) -> QualityReport:
    """Share of ``n`` unconditional DDIM samples (seeded) the classifier labels with confidence ≥ threshold.

    Samples come from diffusers' own ``DDIMPipeline(unet, scheduler)`` (which builds a
    ``DDIMScheduler`` from ``scheduler.config``), started from a ``torch.Generator`` seeded with
    ``seed``; they are mapped back from the pipeline's [0, 1] to [-1, 1] for the classifier.
    ``eta``: 0 (default) is the deterministic chain ``z_T -> x`` that Algorithm 1 optimises through;
    1 adds fresh noise at every step (from the same generator), as DDPM's ancestral sampler does.
    """
    from diffusers import DDIMPipeline

    if not _is_int(n) or n < 1:
        raise _bad("n", n, "an integer ≥ 1")
    if not _is_int(num_inference_steps) or not (1 <= num_inference_steps <= scheduler.config.num_train_timesteps):
        raise _bad("num_inference_steps", num_inference_steps, f"an integer in [1, {scheduler.config.num_train_timesteps}]")
    if not _is_num(threshold) or not (0 < threshold <= 1):
        raise _bad("threshold", threshold, "a number in (0, 1]")
    if not _is_int(seed) or seed < 0:
        raise _bad("seed", seed, "an integer ≥ 0")
    if not _is_num(eta) or not (0 <= eta <= 1):
        raise _bad("eta", eta, "a number in [0, 1] (0: deterministic DDIM; 1: DDPM-like)")
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    images = pipe(batch_size=n, generator=gen, num_inference_steps=num_inference_steps, eta=float(eta),
                  output_type="pt").images  # (n, 1, 16, 16) in [0, 1]
    samples = (images * 2.0 - 1.0).cpu()  # (n, 1, 16, 16) in [-1, 1]
    param = next(classifier.parameters())
    was_training = classifier.training
    classifier.eval()
    probs = torch.softmax(classifier(samples.to(param.device, param.dtype)), dim=1).cpu()  # (n, 10)
    classifier.train(was_training)
    confidence, labels = probs.max(dim=1)
    share = float((confidence >= threshold).float().mean())
    return QualityReport(share, samples, labels, confidence, float(threshold), num_inference_steps, seed, float(eta))


def save_sample_grid(
    samples: torch.Tensor, path: Union[str, os.PathLike], title: Optional[str] = None, ncols: int = 16,
    labels: Optional[torch.Tensor] = None,
) -> Path:
    """Write a PNG grid of images in [-1, 1] (``(n, 1, H, W)``), ink dark on white; returns the path.

    ``labels`` (optional, ``(n,)``) are printed in small type in each cell's corner.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(samples, torch.Tensor) or samples.dim() != 4 or samples.shape[1] != 1:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"samples must be a tensor of shape (n, 1, H, W), got {shape}")
    if not _is_int(ncols) or ncols < 1:
        raise _bad("ncols", ncols, "an integer ≥ 1")
    n, _, h, w = samples.shape
    nrows = -(-n // ncols)
    img = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1), dtype=np.float32)  # white separators
    x = ((samples[:, 0].detach().cpu().float().clamp(-1, 1) + 1) / 2).numpy()  # (n, H, W) in [0, 1]
    for i in range(n):
        r, c = divmod(i, ncols)
        img[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = 1 - x[i]
    fig = Figure(figsize=(ncols * 0.5, nrows * 0.5 + (0.5 if title else 0)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1 - (0.5 / (nrows * 0.5 + 0.5) if title else 0)))
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if labels is not None:
        for i, lab in enumerate(labels.tolist()):
            r, c = divmod(i, ncols)
            ax.text(1 + c * (w + 1), 1 + r * (h + 1) + 3, str(lab), color="tab:red", fontsize=5)
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
