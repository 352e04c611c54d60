"""The paper world: ImageNet-scale models for EquiDiff on a GPU (thesis Chapter 4, Appendix .3).

What the thesis ran (Section 4.1.1, Appendix .3.2): a LightningDiT latent diffusion prior,
ResNet-50 neurons, ViT SAEs, on 1-4 NVIDIA A100 GPUs, with gradient checkpointing through the
denoising loop (Algorithm 1, line 11). What this module loads instead, because diffusers does not
ship LightningDiT:

* **prior** — :func:`load_latent_prior`: a latent ``DiTTransformer2DModel`` + ``AutoencoderKL``
  (default ``facebook/DiT-XL-2-256``) in a deterministic DDIM chain
  (:class:`equidiff.core.priors.LatentDiTPrior`: unconditional through the null class, latent
  scaling and learned-sigma channels handled). Any other backbone plugs in by implementing the
  :class:`equidiff.core.priors.Prior` protocol (``sample_latents(n, generator)`` and
  ``prior(z) -> x`` in [-1, 1]) and being passed as ``prior=`` to :func:`load_paper_models`.
* **classifier** — :func:`load_classifier`: timm ``resnet50`` with pretrained weights, wrapped in
  :class:`ImageNetInput`, which maps the sampler's [-1, 1] images to the classifier's normalised
  input (and resizes 256 → 224). Its neurons (thesis Section 4.2.1: #1656, #1052, #421 of the last
  stage) are read *before* the final ReLU (:func:`paper_neuron_layer`,
  :func:`paper_neuron_objective`): the 7×7 = 49 "logits" of Figure 4.1.
* **FID** — :func:`inception_fid`: Fréchet distance in Inception-v3 pool features (timm
  ``inception_v3.tv_in1k``) when its weights are on this machine; otherwise an
  :class:`FIDResult` whose ``value`` is None and whose ``reason`` says which figure could not be
  computed and why (never a silent fallback to another feature space).
* **query images** — :func:`load_query_images`: the user's own files (the project ships no
  ImageNet images), resized and centre-cropped to the prior's resolution, in [-1, 1].
* **SAE** — loaded by :mod:`equidiff.sae` from :attr:`PaperConfig.sae_path` (Prisma / SAELens
  format); this module only carries the path (hook point: :func:`load_paper_models` leaves
  ``PaperModels.sae`` to that module). The ViT it reads — :func:`load_vit`: a timm
  ``VisionTransformer`` (default ``vit_base_patch32_clip_224.datacompxl``, the CLIP ViT-B/32 of
  Prisma's CLIP SAEs) with its pretrained weights, wrapped in :class:`ImageNetInput` (CLIP's
  normalisation, 256 → 224); the chapter's world is :func:`equidiff.chapters.sae.load_world`.

**Weights never download by default.** Every loader looks in the folder/file the user names,
then in the local Hugging Face cache (``huggingface_hub``'s ``HF_HUB_CACHE``, or ``cache_dir``);
``allow_download=True`` opts in to fetching. A missing model raises :class:`ModelNotFoundError`
(a ``FileNotFoundError``) naming the model, every place looked and the one ``hf download``
command that fetches it.

GPU speed knobs live in :class:`PaperConfig`: ``bf16`` (autocast the prior and the objective;
:func:`autocast`), ``batch_size`` (samples optimised together; :func:`find_invariants_batched`),
``checkpointing`` (on by default, Algorithm 1 line 11).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from equidiff._validate import bad as _bad, is_int as _is_int
from equidiff.core.objectives import Objective, neuron_map, resolve_module
from equidiff.core.metrics import FIDResult

__all__ = [
    "PAPER_NEURONS",
    "DIT_MODEL",
    "CLASSIFIER_MODEL",
    "INCEPTION_MODEL",
    "IMAGE_EXTENSIONS",
    "ModelNotFoundError",
    "PaperConfig",
    "find_diffusers_folder",
    "find_weights_file",
    "load_latent_prior",
    "load_classifier",
    "VIT_MODEL",
    "load_vit",
    "ImageNetInput",
    "disable_inplace",
    "paper_neuron_layer",
    "paper_neuron_objective",
    "strongest_query",
    "list_images",
    "load_query_images",
    "autocast",
    "AutocastPrior",
    "autocast_objective",
    "find_invariants_batched",
    "concat_results",
    "FIDResult",
    "load_inception",
    "inception_features",
    "inception_statistics",
    "inception_fid",
    "PaperModels",
    "load_paper_models",
    "resolve_device",
    "write_tiny_models",
    "prior_image_size",
    "paper_parameters",
    "query_image_files",
    "PaperInputs",
    "load_paper_inputs",
    "predict_classes",
    "fid_against_reference",
    "reject_paper_parameters",
]

# Thesis Section 4.2.1: ResNet-50 last-stage neurons and the concepts SemanticLens gave them.
PAPER_NEURONS = {1656: "zebra striping", 1052: "honeycomb", 421: "gyromitra"}
DIT_MODEL = "facebook/DiT-XL-2-256"  # diffusers' DiT: the stand-in for the thesis' LightningDiT
CLASSIFIER_MODEL = "resnet50.a1_in1k"  # timm's default pretrained resnet50 (the thesis does not name its weights)
INCEPTION_MODEL = "inception_v3.tv_in1k"  # torchvision's Inception-v3 weights, as timm ships them
# The ViT of the SAE chapter: timm's CLIP ViT-B/32 trained on DataComp-XL, the model Prisma's CLIP-B/32 SAEs
# read (open_clip laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K). The thesis names neither its ViT nor its SAE.
VIT_MODEL = "vit_base_patch32_clip_224.datacompxl"
# The parts of a diffusers DiT pipeline folder this module loads (model_index.json is optional).
DIT_PARTS = ("transformer", "vae", "scheduler")
DIT_PATTERNS = ["model_index.json", "transformer/*", "vae/*", "scheduler/*"]
DIT_CLI_FILES = [f"{p}/" for p in DIT_PARTS]  # `hf download <repo> transformer/ vae/ scheduler/`: those subfolders only
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------------------------
# Finding weights: a named folder, then the local Hugging Face cache, then (opt-in) the Hub
# --------------------------------------------------------------------------------------------


class ModelNotFoundError(FileNotFoundError):
    """A model's weights are not on this machine (and downloading was not allowed).

    ``model``: the model id; ``places``: every location looked at, each with what was missing;
    ``command``: the one shell command that fetches it.
    """

    def __init__(self, model: str, places: Sequence[str], command: str, note: str = ""):
        self.model, self.places, self.command = model, list(places), command
        lines = [f"model {model!r} was not found on this machine. Looked in:"]
        lines += [f"  - {p}" for p in self.places]
        lines.append(f"Fetch it with:\n  {command}")
        lines.append("or pass allow_download=True to let this call download it.")
        if note:
            lines.append(note)
        super().__init__("\n".join(lines))


def _hub_cache(cache_dir: Optional[PathLike]) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)


def _download_command(repo_id: str, folder: Optional[Path], cache_dir: Optional[PathLike],
                      files: Sequence[str] = ()) -> str:
    cmd = ["hf", "download", repo_id, *files]  # huggingface_hub ≥ 1.0 CLI (`huggingface-cli` before)
    if folder is not None:
        cmd += ["--local-dir", str(folder)]
    elif cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    return " ".join(cmd)


def _missing_parts(folder: Path) -> list[str]:
    """Parts of a DiT pipeline folder that are absent (each needs its config file)."""
    need = {"transformer": "config.json", "vae": "config.json", "scheduler": "scheduler_config.json"}
    return [f"{p}/{f}" for p, f in need.items() if not (folder / p / f).is_file()]


def find_diffusers_folder(
    repo_id: str = DIT_MODEL,
    folder: Optional[PathLike] = None,
    *,
    cache_dir: Optional[PathLike] = None,
    allow_download: bool = False,
) -> Path:
    """The folder holding ``transformer/``, ``vae/`` and ``scheduler/`` of a DiT pipeline.

    Looks in ``folder`` (when given: only there), else in the local Hugging Face cache
    (``snapshot_download(..., local_files_only=True)``); downloads only when ``allow_download``.
    Raises :class:`ModelNotFoundError` naming the model, where it looked and the fetch command.
    """
    from huggingface_hub import snapshot_download

    if not isinstance(allow_download, bool):
        raise _bad("allow_download", allow_download, "True or False")
    places = []
    if folder is not None:
        folder = Path(folder)
        missing = _missing_parts(folder) if folder.is_dir() else None
        if missing == []:
            return folder
        if allow_download:
            snapshot_download(repo_id, local_dir=folder, allow_patterns=DIT_PATTERNS)
            if not _missing_parts(folder):
                return folder
            missing = _missing_parts(folder)
        places.append(f"{folder} (the folder given: "
                      + ("does not exist)" if missing is None else f"missing {', '.join(missing)})"))
        raise ModelNotFoundError(repo_id, places, _download_command(repo_id, folder, None, DIT_CLI_FILES))
    cache = _hub_cache(cache_dir)
    try:
        snap = Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
        missing = _missing_parts(snap)
        where = f"{snap} (Hugging Face cache snapshot: missing {', '.join(missing)})"
    except Exception as err:  # LocalEntryNotFoundError and friends: not in the cache
        snap, missing = None, None
        where = f"{cache} (Hugging Face cache: no snapshot of {repo_id}: {type(err).__name__})"
    if missing == []:
        return snap
    if allow_download:
        snap = Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=DIT_PATTERNS))
        if not _missing_parts(snap):
            return snap
        where = f"{snap} (downloaded snapshot: missing {', '.join(_missing_parts(snap))})"
    raise ModelNotFoundError(repo_id, [where], _download_command(repo_id, None, cache_dir, DIT_CLI_FILES),
                             note="Or download it anywhere and pass that folder (it must hold "
                                  "transformer/, vae/ and scheduler/).")


def find_weights_file(
    timm_name: str,
    path: Optional[PathLike] = None,
    *,
    cache_dir: Optional[PathLike] = None,
    allow_download: bool = False,
) -> Path:
    """The weights file of a timm model: ``path`` (a file, or a folder holding ``model.safetensors``
    or ``pytorch_model.bin``), else the local Hugging Face cache of its ``hf_hub_id``
    (``timm/<name>``); downloaded only when ``allow_download``.

    Raises :class:`ModelNotFoundError` naming the model, where it looked and the fetch command.
    """
    import timm
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if not isinstance(allow_download, bool):
        raise _bad("allow_download", allow_download, "True or False")
    cfg = timm.models.get_pretrained_cfg(timm_name)
    repo_id = (cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None) or f"timm/{timm_name}"
    if path is not None:
        path = Path(path)
        if path.is_file():
            return path
        if path.is_dir():
            for name in _WEIGHT_FILES:
                if (path / name).is_file():
                    return path / name
            place = f"{path} (the folder given: no {' or '.join(_WEIGHT_FILES[:2])})"
        else:
            place = f"{path} (the path given: does not exist)"
        if allow_download:
            local = path if path.suffix == "" else path.parent
            return Path(hf_hub_download(repo_id, _WEIGHT_FILES[0], local_dir=local))
        folder = path if path.suffix == "" else path.parent
        raise ModelNotFoundError(timm_name, [place], _download_command(repo_id, folder, None, [_WEIGHT_FILES[0]]),
                                 note=f"then pass {folder / _WEIGHT_FILES[0]} (or its folder).")
    cache = _hub_cache(cache_dir)
    for name in _WEIGHT_FILES[:2]:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=cache)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    if allow_download:
        return Path(hf_hub_download(repo_id, _WEIGHT_FILES[0], cache_dir=cache))
    place = f"{cache} (Hugging Face cache: no {repo_id}/{' or '.join(_WEIGHT_FILES[:2])})"
    raise ModelNotFoundError(timm_name, [place], _download_command(repo_id, None, cache_dir, [_WEIGHT_FILES[0]]))


# --------------------------------------------------------------------------------------------
# The prior: a latent DiT (DiT-XL-2-256) as LatentDiTPrior
# --------------------------------------------------------------------------------------------


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``None``/``"auto"``: ``cuda:<LOCAL_RANK>`` when CUDA is available (torchrun sets LOCAL_RANK), else CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(device)


def prior_image_size(prior) -> int:
    """Side in pixels of a latent DiT prior's images: latent side × 2^(VAE levels − 1) (256 for DiT-XL-2-256)."""
    base = prior.prior if isinstance(prior, AutocastPrior) else prior
    vae = getattr(base, "vae", None)
    if vae is None:
        raise ValueError(f"prior must be a LatentDiTPrior (with a .vae), got {type(base).__name__}")
    return int(base.latent_shape[-1] * 2 ** (len(vae.config.block_out_channels) - 1))


def _load_dit_transformer(folder: Path):
    """DiTTransformer2DModel from ``folder``; hub folders saved as the legacy ``Transformer2DModel``
    (norm_type ada_norm_zero, as facebook/DiT-XL-2-256 is) are remapped by diffusers itself."""
    from diffusers import DiTTransformer2DModel, Transformer2DModel

    config = json.loads((folder / "config.json").read_text())
    cls = Transformer2DModel if config.get("_class_name") == "Transformer2DModel" else DiTTransformer2DModel
    model = cls.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    if not isinstance(model, DiTTransformer2DModel):
        raise ValueError(
            f"{folder} must hold a DiT (DiTTransformer2DModel, or Transformer2DModel with "
            f"norm_type 'ada_norm_zero'), got {type(model).__name__}"
        )
    return model


def load_latent_prior(
    model: str = DIT_MODEL,
    folder: Optional[PathLike] = None,
    *,
    cache_dir: Optional[PathLike] = None,
    allow_download: bool = False,
    num_steps: int = 25,
    checkpointing: bool = True,
    class_label: Optional[int] = None,
    clamp: bool = False,
    device: Optional[Union[str, torch.device]] = None,
):
    """A :class:`~equidiff.core.priors.LatentDiTPrior` over a DiT pipeline's transformer, VAE and scheduler.

    ``model``: the Hub id (used for the cache and the error message); ``folder``: a local pipeline
    folder (``transformer/``, ``vae/``, ``scheduler/``, as ``hf download facebook/DiT-XL-2-256
    transformer/ vae/ scheduler/ --local-dir <folder>`` writes it). Only the scheduler's config is
    read; the prior builds its private ``DDIMScheduler`` from that config (η = 0, deterministic). Weights
    stay float32 (use ``PaperConfig.bf16`` / :func:`autocast` for bf16 compute). ``clamp=False``
    (default, as the neuron chapter's pixel prior) keeps gradients at saturated pixels; clamp the
    returned samples for display. ``clamp=True`` is exactly DiTPipeline's output.
    """
    from diffusers import AutoencoderKL, DDIMScheduler

    from equidiff.core.priors import LatentDiTPrior

    root = find_diffusers_folder(model, folder, cache_dir=cache_dir, allow_download=allow_download)
    transformer = _load_dit_transformer(root / "transformer")
    vae = AutoencoderKL.from_pretrained(root / "vae", local_files_only=True, low_cpu_mem_usage=False)
    # Only the scheduler's config is used: the prior builds its private DDIMScheduler from it.
    scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(root / "scheduler"))
    dev = resolve_device(device)
    return LatentDiTPrior(
        transformer.to(dev), vae.to(dev), scheduler, num_steps=num_steps, checkpointing=checkpointing,
        class_label=class_label, clamp=clamp,
    )


# --------------------------------------------------------------------------------------------
# The classifier: timm resnet50, ImageNet normalisation, pre-ReLU neurons
# --------------------------------------------------------------------------------------------


def disable_inplace(model: nn.Module) -> nn.Module:
    """Turn off ``inplace`` on every activation (timm builds ReLUs with ``inplace=True``).

    An in-place ReLU overwrites its input tensor with its output, so a forward hook reading the
    ReLU's *input* would see post-ReLU values (all ≥ 0) — the pre-activation neuron maps of the
    thesis would silently become post-activation maps. Numerically nothing else changes.
    """
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return model


class ImageNetInput(nn.Module):
    """The sampler's images in [-1, 1] → a classifier's input: [0, 1] → optional resize → (x − mean) / std.

    ``mean``/``std`` and ``input_size`` default to ``model.pretrained_cfg`` (timm); the resize
    (``interpolate(..., antialias=True)``, the pretrained config's interpolation) is differentiable
    and is skipped when the image already has the input size. The wrapped model is ``.model``;
    ``forward_features``/``forward_head`` pass through (so :mod:`equidiff.metrics` features see
    the same normalisation).
    """

    def __init__(self, model: nn.Module, mean=None, std=None, input_size: Optional[int] = None,
                 interpolation: Optional[str] = None):
        super().__init__()
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        mean = cfg.get("mean") if mean is None else mean
        std = cfg.get("std") if std is None else std
        if mean is None or std is None:
            raise ValueError("mean and std must be given for a model without a timm pretrained_cfg")
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise _bad("std", tuple(std), "positive numbers")
        if input_size is None and cfg.get("input_size"):
            input_size = int(cfg["input_size"][-1])
        if input_size is not None and (not _is_int(input_size) or input_size < 1):
            raise _bad("input_size", input_size, "None or an integer ≥ 1 (pixels)")
        interpolation = interpolation or cfg.get("interpolation") or "bilinear"
        if interpolation not in ("bilinear", "bicubic"):
            interpolation = "bilinear"
        self.model = model
        self.input_size = input_size
        self.interpolation = interpolation
        self.register_buffer("mean", mean_t.to(_param_device(model)), persistent=False)
        self.register_buffer("std", std_t.to(_param_device(model)), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] → the classifier's normalised input (B, C, S, S)."""
        x = (x + 1.0) / 2.0  # [-1, 1] → [0, 1]
        s = self.input_size
        if s is not None and tuple(x.shape[-2:]) != (s, s):
            x = nn.functional.interpolate(x, size=(s, s), mode=self.interpolation, align_corners=False,
                                          antialias=True)  # (B, C, S, S)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(self.preprocess(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    @property
    def pretrained_cfg(self) -> dict:
        return dict(getattr(self.model, "pretrained_cfg", None) or {})

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, interpolation={self.interpolation!r}"


def _param_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _create_timm(name: str, file: Path, model_kwargs: Optional[dict]) -> nn.Module:
    import timm

    kwargs = dict(model_kwargs or {})
    cfg = timm.models.get_pretrained_cfg(name)
    want = getattr(cfg, "num_classes", None)
    if "num_classes" in kwargs and kwargs["num_classes"] != want:
        # timm would silently drop the pretrained head and initialise a new one at random
        raise _bad("model_kwargs['num_classes']", kwargs["num_classes"],
                   f"left out or {want} (the pretrained head of {name}); another value re-initialises the head")
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **kwargs)
    except RuntimeError as err:  # state-dict mismatch: a file for another architecture
        raise ValueError(f"weights file {file} does not fit timm model {name!r} ({kwargs or 'default args'}): "
                         f"{str(err).splitlines()[0]}") from err
    return model


def load_classifier(
    model: str = CLASSIFIER_MODEL,
    path: Optional[PathLike] = None,
    *,
    cache_dir: Optional[PathLike] = None,
    allow_download: bool = False,
    input_size: Optional[int] = None,
    model_kwargs: Optional[dict] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> ImageNetInput:
    """A timm classifier with pretrained weights, frozen, wrapped for the sampler's [-1, 1] images.

    ``model``: a timm name with its pretrained tag (default ``resnet50.a1_in1k``; torchvision's
    weights are ``resnet50.tv_in1k`` / ``resnet50.tv2_in1k``). ``path``: a weights file or a folder
    holding ``model.safetensors``; else the Hugging Face cache (``timm/<model>``). ``input_size``:
    side the images are resized to (default: the pretrained config's, 224). ``model_kwargs``:
    extra ``timm.create_model`` arguments (tests build tiny ResNets this way). Activations are
    made not-in-place (:func:`disable_inplace`) so pre-activation reads stay pre-activation.
    """
    file = find_weights_file(model, path, cache_dir=cache_dir, allow_download=allow_download)
    net = disable_inplace(_create_timm(model, file, model_kwargs))
    net = net.to(resolve_device(device)).eval().requires_grad_(False)
    return ImageNetInput(net, input_size=input_size)


def paper_neuron_layer(classifier: nn.Module) -> tuple[str, str]:
    """``(layer name, read mode)`` of the last stage's pre-activation map, for :func:`neuron_map`.

    For a timm ResNet with Bottleneck blocks (resnet50) the last block of ``layer4`` ends with
    ``x = act3(bn3(conv3(...)) + shortcut)``: reading ``act3``'s *input* gives the unbounded map
    after the residual add and before the final ReLU (thesis: "L2 losses computed on unbounded
    activation logits"; 7×7 = 49 values at 224 px). BasicBlock ResNets end with ``act2``.
    Names are relative to ``classifier`` (``model.`` prefixed for an :class:`ImageNetInput`).
    """
    inner, prefix = (classifier.model, "model.") if isinstance(classifier, ImageNetInput) else (classifier, "")
    stage = getattr(inner, "layer4", None)
    if not isinstance(stage, nn.Sequential) or len(stage) == 0:
        raise ValueError(f"classifier must be a ResNet with a layer4 stage (timm ResNet), got {type(inner).__name__}")
    last = stage[-1]
    for act in ("act3", "act2"):  # Bottleneck, BasicBlock
        if isinstance(getattr(last, act, None), nn.Module):
            return f"{prefix}layer4.{len(stage) - 1}.{act}", "input"
    raise ValueError(f"the last block of layer4 ({type(last).__name__}) has no act3/act2 activation")


def paper_neuron_objective(classifier: nn.Module, channel: int, reduce: str = "map",
                           name: Optional[str] = None) -> Objective:
    """The whole pre-ReLU map of one last-stage channel (thesis Section 4.2.2): (B, H·W), 49 values at 224 px."""
    layer, read = paper_neuron_layer(classifier)
    inner = classifier.model if isinstance(classifier, ImageNetInput) else classifier
    n = getattr(inner, "num_features", None)
    if _is_int(n) and (not _is_int(channel) or not (0 <= channel < n)):
        raise _bad("channel", channel, f"an integer in [0, {n - 1}] (channels of the last stage)")
    disable_inplace(resolve_module(classifier, layer))  # an in-place ReLU would overwrite its input
    label = name or getattr(inner, "default_cfg", {}).get("architecture") or type(inner).__name__
    return neuron_map(classifier, layer, channel, reduce=reduce, read=read, name=label)


def load_vit(
    model: str = VIT_MODEL,
    path: Optional[PathLike] = None,
    *,
    cache_dir: Optional[PathLike] = None,
    allow_download: bool = False,
    input_size: Optional[int] = None,
    model_kwargs: Optional[dict] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> ImageNetInput:
    """A timm ``VisionTransformer`` with pretrained weights, frozen, wrapped for the sampler's [-1, 1]
    images (:class:`ImageNetInput`: resize to ``input_size``, default the pretrained config's 224, and
    the model's own mean/std — CLIP's for a CLIP ViT). Found as :func:`load_classifier` finds its
    weights: ``path`` (a file, or a folder holding ``model.safetensors``), else the Hugging Face cache;
    downloaded only when ``allow_download``. The ViT is ``.model``; an SAE reads ``.model.blocks[L]``
    (:mod:`equidiff.sae`). Raises :class:`ModelNotFoundError` naming the model, where it looked and
    the fetch command; ``ValueError`` when ``model`` is not a ViT (no ``blocks``).
    """
    vit = load_classifier(model, path, cache_dir=cache_dir, allow_download=allow_download, input_size=input_size,
                          model_kwargs=model_kwargs, device=device)
    blocks = getattr(vit.model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        raise _bad("vit_model", model, "a timm VisionTransformer (with .blocks), e.g. " + repr(VIT_MODEL))
    return vit


@torch.no_grad()
def strongest_query(objective: Objective, images: torch.Tensor, batch_size: int = 32) -> tuple[int, torch.Tensor]:
    """Index and mean measurement of the image whose objective is largest on average (Section 4.2.2,
    step 1: "a query image that strongly activates the neuron"): ``(index, (N,) means)``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        raise _bad("images", tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__,
                   "a non-empty tensor (N, C, H, W)")
    means = torch.cat([objective(images[i: i + batch_size]).float().mean(1).cpu()
                       for i in range(0, len(images), batch_size)])  # (N,)
    return int(means.argmax()), means


# --------------------------------------------------------------------------------------------
# Query images from the user's files
# --------------------------------------------------------------------------------------------


def list_images(source: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
    """Image files of a folder (sorted, not recursive) or the given file paths, checked to exist."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise FileNotFoundError(
                    f"no images in folder {p} (looked for files ending in {', '.join(IMAGE_EXTENSIONS)})"
                )
            return files
        sources = [p]
    else:
        sources = [Path(s) for s in source]
        if not sources:
            raise ValueError("source must be a folder or a non-empty list of image files, got an empty list")
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"query image file(s) not found: {', '.join(missing)}")
    return sources


def load_query_images(
    source: Union[PathLike, Sequence[PathLike]],
    size: int = 256,
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
) -> tuple[torch.Tensor, list[Path]]:
    """Query images x* from a folder or file paths: ``((N, 3, size, size) in [-1, 1], paths)``.

    Each image is converted to RGB, its shorter side resized to ``round(size / crop_pct)``
    (``crop_pct=1``: to ``size``, as DiT/ADM preprocess ImageNet; timm's ``crop_pct`` for the
    classifier's own eval transform) and centre-cropped to ``size`` × ``size`` — the prior's image
    size (256 for DiT-XL-2-256); :class:`ImageNetInput` then resizes for the classifier, exactly as
    it does for the samples, so query and samples take the same path into the objective.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if not _is_int(size) or size < 8:
        raise _bad("size", size, "an integer ≥ 8 (pixels)")
    if not isinstance(crop_pct, (int, float)) or isinstance(crop_pct, bool) or not (0 < crop_pct <= 1):
        raise _bad("crop_pct", crop_pct, "a number in (0, 1]")
    modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
    if interpolation not in modes:
        raise _bad("interpolation", interpolation, f"one of {tuple(modes)}")
    files = list_images(source)
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {f}: {err}") from err
        im = TF.resize(im, int(round(size / crop_pct)), interpolation=modes[interpolation], antialias=True)
        im = TF.center_crop(im, [size, size])
        out.append(TF.pil_to_tensor(im).float() / 255.0)  # (3, size, size) in [0, 1]
    return torch.stack(out) * 2.0 - 1.0, files  # (N, 3, size, size) in [-1, 1]


# --------------------------------------------------------------------------------------------
# GPU speed: bf16 autocast and batching
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def autocast(device: Union[str, torch.device], enabled: bool = True, dtype: torch.dtype = torch.bfloat16):
    """``torch.autocast`` on ``device``'s type (bf16 by default); a no-op when not ``enabled``."""
    kind = torch.device(device).type
    with torch.autocast(kind, dtype=dtype, enabled=enabled):
        yield


class AutocastPrior:
    """A prior run under bf16 autocast, returning float32 images (Prior protocol).

    Gradient checkpointing inside the prior replays each step under the same autocast state
    (``torch.utils.checkpoint`` records it), so recomputation matches the forward.
    """

    def __init__(self, prior, dtype: torch.dtype = torch.bfloat16):
        self.prior, self.dtype = prior, dtype

    def sample_latents(self, n, generator=None, device=None):
        return self.prior.sample_latents(n, generator, device)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        with autocast(z.device, dtype=self.dtype):
            x = self.prior(z)
        return x.float()

    def __getattr__(self, name):  # num_steps, latent_shape, ... of the wrapped prior
        if name == "prior":
            raise AttributeError(name)
        return getattr(self.prior, name)

    def __repr__(self):
        return f"AutocastPrior({self.prior!r}, dtype={self.dtype})"


def autocast_objective(objective: Objective, dtype: torch.dtype = torch.bfloat16) -> Objective:
    """``objective`` evaluated under autocast; its measurements come back as float32 (the loss is fp32)."""

    def fn(x):
        with autocast(x.device, dtype=dtype):
            m = objective(x)
        return m.float()

    return Objective(fn, f"{objective.description} [bf16]")


def concat_results(results: Sequence, config=None):
    """Concatenate :class:`~equidiff.core.invariants.InvariantResult` of disjoint sample batches.

    Samples are independent in Algorithm 1 (per-sample loss, element-wise optimiser, per-sample
    stop), so the pieces form one result. The per-step history is combined exactly: a finished
    batch keeps its final losses (frozen samples keep their loss) and has no active samples.
    """
    from equidiff.core.invariants import InvariantResult

    if not results:
        raise ValueError("results must hold at least one InvariantResult")
    if len(results) == 1 and config is None:
        return results[0]
    n = [r.converged.numel() for r in results]
    length = max(len(r.history["loss_mean"]) for r in results)

    def padded(r, key):
        h = r.history[key]
        return h + [0 if key == "n_active" else h[-1]] * (length - len(h)) if h else [0.0] * length

    hist = {"loss_mean": [], "loss_max": [], "n_active": [], "z_norm_mean": []}
    cols = {k: [padded(r, k) for r in results] for k in hist}
    for i in range(length):
        hist["loss_mean"].append(float(sum(c[i] * k for c, k in zip(cols["loss_mean"], n)) / sum(n)))
        hist["loss_max"].append(float(max(c[i] for c in cols["loss_max"])))
        hist["n_active"].append(int(sum(c[i] for c in cols["n_active"])))
        hist["z_norm_mean"].append(float(sum(c[i] * k for c, k in zip(cols["z_norm_mean"], n)) / sum(n)))
    cat = lambda name: torch.cat([getattr(r, name) for r in results])  # noqa: E731
    return InvariantResult(
        x=cat("x"), z=cat("z"), z_init=cat("z_init"), measurements=cat("measurements"),
        target=results[0].target, loss=cat("loss"), converged=cat("converged"),
        steps_to_converge=cat("steps_to_converge"), history=hist,
        config=config if config is not None else results[0].config,
        description=results[0].description, seconds=float(sum(r.seconds for r in results)),
        restarts=cat("restarts") if all(r.restarts is not None for r in results) else None,
    )


def find_invariants_batched(objective, query, prior, config, batch_size: Optional[int] = None, **kwargs):
    """:func:`~equidiff.core.invariants.find_invariants` in batches of at most ``batch_size`` samples.

    All ``config.n_samples`` starting latents are drawn first from ``config.seed`` (the same
    draw as one unbatched call), then optimised ``batch_size`` at a time and concatenated
    (:func:`concat_results`): the batch size changes memory and speed, not which samples are
    drawn. ``repulsion`` couples samples, so it needs one batch. A ``checkpoint_path`` gets a
    ``.part<i>`` suffix per batch.
    """
    from equidiff.core.invariants import find_invariants

    n = config.n_samples
    if batch_size is None or batch_size >= n:
        return find_invariants(objective, query, prior, config, **kwargs)
    if not _is_int(batch_size) or batch_size < 1:
        raise _bad("batch_size", batch_size, "None or an integer ≥ 1")
    if config.repulsion > 0:
        raise _bad("batch_size", batch_size, f"None or ≥ n_samples ({n}) when repulsion > 0 (it couples samples)")
    z_init = kwargs.pop("z_init", None)
    if z_init is None:
        z_init = prior.sample_latents(n, torch.Generator().manual_seed(config.seed))  # Algorithm 1, line 1
    parts = []
    for i, start in enumerate(range(0, n, batch_size)):
        chunk = z_init[start: start + batch_size]
        cfg = dataclasses.replace(
            config, n_samples=len(chunk),
            checkpoint_path=f"{config.checkpoint_path}.part{i}" if config.checkpoint_path else None,
        )
        parts.append(find_invariants(objective, query, prior, cfg, z_init=chunk, **kwargs))
    return concat_results(parts, config=config)


# --------------------------------------------------------------------------------------------
# FID in Inception features (when its weights are on this machine)
# --------------------------------------------------------------------------------------------


def load_inception(
    model: str = INCEPTION_MODEL,
    path: Optional[PathLike] = None,
    *,
    cache_dir: Optional[PathLike] = None,
    allow_download: bool = False,
    model_kwargs: Optional[dict] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> ImageNetInput:
    """Inception-v3 (timm, pretrained) wrapped for [-1, 1] images: resized to 299, normalised.

    Raises :class:`ModelNotFoundError` when its weights are not on this machine.
    """
    return load_classifier(model, path, cache_dir=cache_dir, allow_download=allow_download,
                           model_kwargs=model_kwargs, device=device)


@torch.no_grad()
def inception_features(inception: ImageNetInput, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """Pooled pre-logit features (N, 2048 for Inception-v3) of images in [-1, 1], float64 on CPU."""
    dev = _param_device(inception)
    out = []
    for i in range(0, len(images), batch_size):
        f = inception.forward_features(images[i: i + batch_size].to(dev, torch.float32))
        out.append(inception.forward_head(f, pre_logits=True).double().cpu())
    return torch.cat(out)  # (N, D)


def inception_statistics(inception: ImageNetInput, images: torch.Tensor, batch_size: int = 50):
    """``(mu (D,), sigma (D, D))`` of the Inception features of ``images``: save them with
    ``np.savez(path, mu=mu, sigma=sigma)`` to reuse a large reference set (e.g. ImageNet val)."""
    f = inception_features(inception, images, batch_size).numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def _frechet(mu1, s1, mu2, s2) -> float:
    """||mu1 − mu2||² + tr(s1) + tr(s2) − 2 tr((s1 s2)^½), the trace term computed stably.

    tr((s1 s2)^½) = Σ √λ_i(s1^½ s2 s1^½), from symmetric eigendecompositions (``eigh``, round-off
    negatives clipped to 0): real-valued and free of ``sqrtm``'s warnings when the covariances are
    singular (fewer samples than features, as at 32 samples); it agrees with
    :func:`equidiff.core.metrics.frechet_distance` on the same features.
    """
    s1, s2 = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # s1^½
    m = root1 @ s2 @ root1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(lam, 0, None)).sum())
    return float(((np.asarray(mu1) - np.asarray(mu2)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def inception_fid(
    samples: torch.Tensor,
    reference,
    figure: str,
    *,
    inception: Optional[ImageNetInput] = None,
    model: str = INCEPTION_MODEL,
    path: Optional[PathLike] = None,
    cache_dir: Optional[PathLike] = None,
    allow_download: bool = False,
    model_kwargs: Optional[dict] = None,
) -> FIDResult:
    """FID between ``samples`` and ``reference`` in Inception-v3 pool features, or why not.

    ``reference``: images (N, 3, H, W) in [-1, 1], or a ``(mu, sigma)`` pair, or the path of an
    ``.npz`` holding ``mu`` and ``sigma`` (from :func:`inception_statistics` with the same model).
    ``inception``: a loaded model; otherwise it is loaded from ``path`` / the HF cache, and if its
    weights are missing the result carries ``value=None`` and the loader's message as ``reason``.
    """
    features = f"{model} pool features"
    if inception is None:
        try:
            inception = load_inception(model, path, cache_dir=cache_dir, allow_download=allow_download,
                                       model_kwargs=model_kwargs)
        except ModelNotFoundError as err:
            return FIDResult(figure, None, f"Inception weights are not on this machine. {err}", features,
                             len(samples))
    if len(samples) < 2:
        return FIDResult(figure, None, f"FID needs at least 2 samples, got {len(samples)}", features, len(samples))
    f = inception_features(inception, samples).numpy()
    mu1, s1 = f.mean(0), np.cov(f, rowvar=False)
    if isinstance(reference, (str, os.PathLike)):
        with np.load(reference) as d:
            mu2, s2, n_ref = d["mu"], d["sigma"], int(d["n"]) if "n" in d else -1
    elif isinstance(reference, torch.Tensor):
        if len(reference) < 2:
            return FIDResult(figure, None, f"FID needs at least 2 reference images, got {len(reference)}",
                             features, len(samples), len(reference))
        g = inception_features(inception, reference).numpy()
        mu2, s2, n_ref = g.mean(0), np.cov(g, rowvar=False), len(reference)
    else:
        mu2, s2 = (np.asarray(a, dtype=np.float64) for a in reference)
        n_ref = -1
    if mu2.shape != mu1.shape:
        raise ValueError(f"reference statistics have {mu2.shape[0]} features, the model gives {mu1.shape[0]}; "
                         "compute them with the same Inception model")
    note = ""
    if len(samples) <= mu1.shape[0]:
        note = (f"{len(samples)} samples for {mu1.shape[0]} feature dimensions: the sample covariance is singular "
                "and FID is biased upward at this sample size; compare FIDs only at equal sample sizes")
    return FIDResult(figure, _frechet(mu1, s1, mu2, s2), None, features, len(samples), n_ref, note)


# --------------------------------------------------------------------------------------------
# The paper profile's settings, and everything loaded at once
# --------------------------------------------------------------------------------------------


@dataclass
class PaperConfig:
    """Settings of the paper world. Every field is validated; a bad value raises ``ValueError``."""

    # --- models (never downloaded unless allow_download) ---
    dit_model: str = DIT_MODEL  # Hub id of the DiT pipeline (prior)
    dit_path: Optional[str] = None  # local pipeline folder (transformer/, vae/, scheduler/); None: the HF cache
    classifier_model: str = CLASSIFIER_MODEL  # timm name with pretrained tag
    classifier_path: Optional[str] = None  # weights file or folder; None: the HF cache
    classifier_input_size: Optional[int] = None  # side the images are resized to for the classifier; None: its pretrained config (224)
    classifier_kwargs: dict = field(default_factory=dict)  # extra timm.create_model arguments (tests: a tiny ResNet)
    inception_model: str = INCEPTION_MODEL  # FID feature model (timm name)
    inception_path: Optional[str] = None  # weights file or folder; None: the HF cache
    inception_kwargs: dict = field(default_factory=dict)  # extra timm.create_model arguments of the FID model (tests: a stand-in)
    fid_reference: Optional[str] = None  # .npz with Inception "mu", "sigma" (and "n") of real images, e.g. ImageNet val; None: the query images
    sae_path: Optional[str] = None  # ViT SAE folder (Prisma / SAELens format), loaded by equidiff.sae
    sae_layer: Optional[int] = None  # ViT block whose residual stream (blocks.<L>.hook_resid_post) the SAE reads; None: the SAE's config
    sae_features: tuple = ()  # SAE features that features="auto" runs; (): the ones most active on the query images
    vit_model: str = VIT_MODEL  # timm name with pretrained tag of the ViT the SAE reads
    vit_path: Optional[str] = None  # its weights file or folder; None: the HF cache
    vit_input_size: Optional[int] = None  # side the images are resized to for the ViT; None: its pretrained config (224)
    vit_kwargs: dict = field(default_factory=dict)  # extra timm.create_model arguments of the ViT (tests: a tiny ViT)
    cache_dir: Optional[str] = None  # Hugging Face hub cache; None: huggingface_hub's default (HF_HUB_CACHE)
    allow_download: bool = False  # True: fetch missing weights from the Hub (off: never download)
    # --- the sampler and the loop ---
    ddim_steps: int = 25  # T: DDIM steps of the latent chain (10/25/50 in the benchmark)
    image_size: int = 256  # side of query images (the prior's output size: 256 for DiT-XL-2-256)
    neurons: tuple = tuple(PAPER_NEURONS)  # ResNet-50 last-stage channels (Section 4.2.1)
    # --- GPU speed ---
    batch_size: int = 32  # samples optimised together (memory ∝ batch size)
    bf16: bool = False  # bf16 autocast of prior and objective (float32 weights and loss)
    checkpointing: bool = True  # gradient checkpointing of every denoising step (Algorithm 1, line 11)
    clamp: bool = False  # clamp decoded images to [-1, 1] inside the loop (True: as DiTPipeline; False keeps gradients at saturated pixels)
    device: str = "auto"  # "auto" (cuda:<LOCAL_RANK> if available, else cpu), "cpu", "cuda", "cuda:1", ...

    def __post_init__(self):
        for name in ("dit_model", "classifier_model", "inception_model", "vit_model"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise _bad(name, v, "a non-empty model name")
        for name in ("dit_path", "classifier_path", "inception_path", "fid_reference", "sae_path", "cache_dir",
                     "vit_path"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                raise _bad(name, v, "None or a path")
            if v is not None:
                setattr(self, name, str(v))
        if self.classifier_input_size is not None and (
            not _is_int(self.classifier_input_size) or self.classifier_input_size < 8
        ):
            raise _bad("classifier_input_size", self.classifier_input_size, "None or an integer ≥ 8 (pixels)")
        if self.vit_input_size is not None and (not _is_int(self.vit_input_size) or self.vit_input_size < 8):
            raise _bad("vit_input_size", self.vit_input_size, "None or an integer ≥ 8 (pixels)")
        if self.sae_layer is not None and (not _is_int(self.sae_layer) or self.sae_layer < 0):
            raise _bad("sae_layer", self.sae_layer, "None (the SAE's config) or an integer ≥ 0 (a ViT block)")
        if not isinstance(self.sae_features, (tuple, list)) or not all(
            _is_int(f) and f >= 0 for f in self.sae_features
        ):
            raise _bad("sae_features", self.sae_features, "a tuple of SAE feature indices ≥ 0 (empty: the most active)")
        self.sae_features = tuple(self.sae_features)
        for name in ("classifier_kwargs", "inception_kwargs", "vit_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise _bad(name, getattr(self, name), "a dict of timm.create_model arguments")
        for name in ("allow_download", "bf16", "checkpointing", "clamp"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, getattr(self, name), "True or False")
        if not _is_int(self.ddim_steps) or self.ddim_steps < 1:
            raise _bad("ddim_steps", self.ddim_steps, "an integer ≥ 1 (T)")
        if not _is_int(self.image_size) or self.image_size < 8:
            raise _bad("image_size", self.image_size, "an integer ≥ 8 (pixels)")
        if not isinstance(self.neurons, (tuple, list)) or not self.neurons or not all(
            _is_int(c) and c >= 0 for c in self.neurons
        ):
            raise _bad("neurons", self.neurons, "a non-empty tuple of channel indices ≥ 0")
        self.neurons = tuple(self.neurons)
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise _bad("batch_size", self.batch_size, "an integer ≥ 1")
        if not isinstance(self.device, str):
            raise _bad("device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:<i>'")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise _bad("device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:<i>'") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PaperConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PaperConfig field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**{k: tuple(v) if k == "neurons" or (k == "sae_features" and isinstance(v, list)) else v
                      for k, v in d.items()})


@dataclass
class PaperModels:
    """The paper world's models, ready for :func:`find_invariants_batched`."""

    prior: object  # Prior: LatentDiTPrior (under AutocastPrior when bf16), or the caller's own backbone
    classifier: ImageNetInput  # resnet50 taking [-1, 1] images
    config: PaperConfig
    device: torch.device
    sae: object = None  # hook point: equidiff.sae loads config.sae_path (Prisma / SAELens); not loaded here

    def neuron_objective(self, channel: int, reduce: str = "map") -> Objective:
        """The pre-ReLU map of ``channel`` (Section 4.2.2), under bf16 autocast when configured."""
        obj = paper_neuron_objective(self.classifier, channel, reduce=reduce)
        return autocast_objective(obj) if self.config.bf16 else obj

    def find_invariants(self, objective, query, config, **kwargs):
        """Algorithm 1 with this config's batch size (see :func:`find_invariants_batched`)."""
        query = query.to(self.device)
        return find_invariants_batched(objective, query, self.prior, config, self.config.batch_size, **kwargs)

    def fid(self, samples, reference, figure: str) -> FIDResult:
        """Inception FID per :func:`inception_fid`, from this config's Inception weights."""
        c = self.config
        return inception_fid(samples, reference, figure, model=c.inception_model, path=c.inception_path,
                             cache_dir=c.cache_dir, allow_download=c.allow_download,
                             model_kwargs=c.inception_kwargs or None)


TINY_CLASSIFIER_KWARGS = dict(layers=[1, 1, 1, 1], channels=[8, 8, 8, 8], stem_width=8)
# a 2-block, 16-wide ViT of VIT_MODEL's class on 32 px images: 4×4 patches of 8 px + a class token = 17 tokens
TINY_VIT_KWARGS = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
TINY_SAE_LAYER = 1  # the tiny SAE reads blocks.1.hook_resid_post of the tiny ViT


def write_tiny_models(folder: PathLike, seed: int = 0, legacy_dit_config: bool = False) -> PaperConfig:
    """Save tiny *randomly initialised* models of the paper classes to ``folder``; return a
    :class:`PaperConfig` that loads them through the same code as the real ones.

    ``folder/dit/{transformer,vae,scheduler}``: a 1-layer ``DiTTransformer2DModel`` (latent
    4×4×4, learned sigma, 10 classes: null class 10), an ``AutoencoderKL`` decoding to 16×16 RGB,
    a 100-step ``DDIMScheduler``; ``folder/resnet50.safetensors``: timm ``resnet50`` with one
    Bottleneck per stage and 8-wide stages (last stage: 32 channels), read at 64 px (2×2 maps);
    ``folder/vit.safetensors``: timm ``vit_base_patch32_clip_224`` (:data:`VIT_MODEL`'s class) with 2
    blocks of width 16, read at 32 px (17 tokens); ``folder/sae/``: a ReLU SAE in the SAELens layout
    (``cfg.json`` + ``sae_weights.safetensors``, d_in 16, d_sae 64) on its ``blocks.1.hook_resid_post``.
    For tests and ``benchmarks/bench_gpu.py --tiny``; their outputs mean nothing.
    ``legacy_dit_config``: write the transformer's config as the Hub's ``Transformer2DModel``
    (as facebook/DiT-XL-2-256 ships it) to exercise the remapping.
    """
    import timm
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel
    from safetensors.torch import save_file

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        DiTTransformer2DModel(
            sample_size=4, patch_size=2, in_channels=4, out_channels=8, num_layers=1, num_attention_heads=2,
            attention_head_dim=8, num_embeds_ada_norm=10,
        ).save_pretrained(folder / "dit" / "transformer")
        AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1, norm_num_groups=4, sample_size=16,
        ).save_pretrained(folder / "dit" / "vae")
        DDIMScheduler(num_train_timesteps=100, clip_sample=False).save_pretrained(folder / "dit" / "scheduler")
        net = timm.create_model("resnet50", pretrained=False, **TINY_CLASSIFIER_KWARGS)
        # random BatchNorm statistics, so the pre-activation maps are not trivially normalised
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "resnet50.safetensors"))
        _write_tiny_vit_sae(folder)
    if legacy_dit_config:
        cfg_path = folder / "dit" / "transformer" / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["_class_name"] = "Transformer2DModel"
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return PaperConfig(
        dit_path=str(folder / "dit"), classifier_model="resnet50.a1_in1k",
        classifier_path=str(folder / "resnet50.safetensors"), classifier_kwargs=dict(TINY_CLASSIFIER_KWARGS),
        classifier_input_size=64, image_size=16, neurons=(3, 17, 30), ddim_steps=3, batch_size=4, device="cpu",
        vit_model=VIT_MODEL, vit_path=str(folder / "vit.safetensors"), vit_kwargs=dict(TINY_VIT_KWARGS),
        vit_input_size=TINY_VIT_KWARGS["img_size"], sae_path=str(folder / "sae"),
    )


def _write_tiny_vit_sae(folder: Path) -> None:
    """The tiny ViT (``vit.safetensors``) and a random ReLU SAE on its block 1 (``sae/``, SAELens layout),
    from the caller's random state: decoder rows of unit norm, encoder = decoder transposed, encoder biases
    spread around 0 so that features fire on some images and not on others."""
    import timm
    from safetensors.torch import save_file

    from equidiff.chapters.sae import SparseAutoencoder

    vit = timm.create_model(VIT_MODEL, pretrained=False, **TINY_VIT_KWARGS)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(folder / "vit.safetensors"))
    d_in = TINY_VIT_KWARGS["embed_dim"]
    sae = SparseAutoencoder(d_in, 4 * d_in, "relu", hook_name=f"blocks.{TINY_SAE_LAYER}.hook_resid_post",
                            layer=TINY_SAE_LAYER, model_name=VIT_MODEL)
    with torch.no_grad():
        w = torch.randn(sae.d_sae, d_in)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.t())
        sae.b_enc.copy_(torch.randn(sae.d_sae) * 0.5)
    sae.save(folder / "sae")


def load_paper_models(config: Optional[PaperConfig] = None, *, prior=None) -> PaperModels:
    """Load the prior and classifier of ``config`` (nothing downloads unless ``allow_download``).

    ``prior``: another backbone implementing the Prior protocol (e.g. LightningDiT) instead of
    the diffusers DiT; it is used as given (wrapped in :class:`AutocastPrior` when ``bf16``).
    """
    c = config or PaperConfig()
    if not isinstance(c, PaperConfig):
        raise TypeError(f"config must be a PaperConfig, got {type(c).__name__}")
    dev = resolve_device(c.device)
    if prior is None:
        prior = load_latent_prior(c.dit_model, c.dit_path, cache_dir=c.cache_dir, allow_download=c.allow_download,
                                  num_steps=c.ddim_steps, checkpointing=c.checkpointing, clamp=c.clamp, device=dev)
    if c.bf16:
        prior = AutocastPrior(prior)
    classifier = load_classifier(c.classifier_model, c.classifier_path, cache_dir=c.cache_dir,
                                 allow_download=c.allow_download, input_size=c.classifier_input_size,
                                 model_kwargs=c.classifier_kwargs, device=dev)
    return PaperModels(prior, classifier, c, dev)


# --------------------------------------------------------------------------------------------
# The chapters' notebooks: their paper parameters, checked and turned into models and images
# --------------------------------------------------------------------------------------------


def paper_parameters(paper_config=None, *, batch_size=None, bf16=None, device=None, ddim_steps=None) -> PaperConfig:
    """The :class:`PaperConfig` of a notebook run with ``profile="paper"``.

    ``paper_config``: None (the defaults: DiT-XL-2-256, resnet50.a1_in1k, Inception-v3 from the HF
    cache), the path of a JSON file holding PaperConfig fields, or a dict of them. The notebook's
    ``batch_size``, ``bf16``, ``device`` and ``ddim_steps`` replace the config's values unless None.
    Every bad value raises ``ValueError`` naming the parameter (or the PaperConfig field).
    """
    if paper_config is None:
        fields = {}
    elif isinstance(paper_config, dict):
        fields = dict(paper_config)
    elif isinstance(paper_config, (str, os.PathLike)):
        path = Path(paper_config)
        if not path.is_file():
            raise FileNotFoundError(f"paper_config: file {path} does not exist (give the path of a JSON file of "
                                    "PaperConfig fields, a dict of them, or None for the defaults)")
        try:
            fields = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"paper_config: {path} is not valid JSON: {err}") from None
        if not isinstance(fields, dict):
            raise _bad("paper_config", str(path), "a JSON file holding one object of PaperConfig fields")
    else:
        raise _bad("paper_config", paper_config, "None, the path of a JSON file of PaperConfig fields, or a dict of them")
    overrides = {"batch_size": batch_size, "bf16": bf16, "device": device, "ddim_steps": ddim_steps}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PaperConfig.from_dict(fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"paper_config: {err}") from None


def query_image_files(query_images) -> list[Path]:
    """The files of the notebook parameter ``query_images`` (a folder, or a list of image files), checked."""
    if query_images is None:
        raise ValueError("query_images must be a folder of images or a list of image files for profile 'paper' "
                         "(the project ships no ImageNet images: e.g. a folder of ImageNet validation images), got None")
    if isinstance(query_images, (str, os.PathLike)) and not Path(query_images).exists():
        raise FileNotFoundError(f"query_images: folder or file {query_images} does not exist")
    if not isinstance(query_images, (str, os.PathLike, list, tuple)):
        raise _bad("query_images", query_images, "a folder or a list of image files")
    try:
        return list_images(query_images)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"query_images: {err}") from None


@dataclass
class PaperInputs:
    """What a paper-profile notebook starts from: the models, the user's query images, their classes."""

    models: PaperModels
    images: torch.Tensor  # (N, 3, S, S) in [-1, 1], S = config.image_size
    files: list  # N paths
    predicted: torch.Tensor  # (N,) the classifier's ImageNet class of each image

    @property
    def config(self) -> PaperConfig:
        return self.models.config


def load_paper_inputs(paper_config=None, query_images=None, *, batch_size=None, bf16=None, device=None,
                      ddim_steps=None) -> PaperInputs:
    """Check a notebook's paper parameters, load the models (never downloading unless the config's
    ``allow_download``) and the query images (resized and centre-cropped to ``image_size``)."""
    cfg = paper_parameters(paper_config, batch_size=batch_size, bf16=bf16, device=device, ddim_steps=ddim_steps)
    files = query_image_files(query_images)
    models = load_paper_models(cfg)
    images, files = load_query_images(files, size=cfg.image_size)
    return PaperInputs(models, images, files, predict_classes(models.classifier, images, cfg.batch_size))


@torch.no_grad()
def predict_classes(classifier: nn.Module, images: torch.Tensor, batch_size: int = 32,
                    probabilities: bool = False) -> torch.Tensor:
    """The classifier's class (N,) — or its softmax probabilities (N, K) — of images in [-1, 1], on CPU."""
    dev = _param_device(classifier)
    out = []
    for i in range(0, len(images), batch_size):
        logits = classifier(images[i: i + batch_size].to(dev)).float()
        out.append((torch.softmax(logits, 1) if probabilities else logits.argmax(1)).cpu())
    return torch.cat(out)


def fid_against_reference(models: PaperModels, samples: torch.Tensor, real: torch.Tensor, figure: str) -> FIDResult:
    """Inception FID of ``samples`` against ``config.fid_reference`` (an .npz of statistics) when set,
    else against the real images ``real`` (the user's query images)."""
    ref = models.config.fid_reference
    if ref is not None and not Path(ref).is_file():
        return FIDResult(figure, None, f"fid_reference {ref} does not exist", n_samples=len(samples))
    return models.fid(samples.float().cpu(), ref if ref is not None else real.float().cpu(), figure)


def digits_chapter_inputs(profile: str, **paper_params):
    """cpu/smoke worlds of the neuron and classifier chapters: the paper-only parameters must be None;
    returns the zoo's ``(classifier, ddpm, (train images, train labels), test images)``."""
    from equidiff.worlds.digits.models import get_model, load_digits16

    reject_paper_parameters(profile, **paper_params)
    clf = get_model("digits-classifier", progress=False)
    ddpm = get_model("digits-ddpm", progress=False)
    return clf, ddpm, load_digits16("train"), load_digits16("test")[0]


def reject_paper_parameters(profile: str, **params) -> None:
    """Raise ``ValueError`` when a paper-only notebook parameter is set (not None) under another profile."""
    used = [k for k, v in params.items() if v is not None]
    if used:
        raise ValueError(f"{used[0]} is a parameter of profile 'paper' only; with profile {profile!r} leave it None "
                         f"(got {params[used[0]]!r})")
