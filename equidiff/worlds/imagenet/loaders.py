"""Loading the paper world's models from this machine (thesis Section 4.1.1, Appendix .3).

What the thesis ran: a LightningDiT latent diffusion prior, ResNet-50 neurons, ViT SAEs, on 1-4
NVIDIA A100 GPUs, with gradient checkpointing through the denoising loop (Algorithm 1, line 11).
What this module loads instead, because diffusers does not ship LightningDiT:

* **prior** — :func:`load_latent_prior`: a latent ``DiTTransformer2DModel`` + ``AutoencoderKL``
  (default ``facebook/DiT-XL-2-256``) in a deterministic DDIM chain
  (:class:`equidiff.core.priors.LatentDiTPrior`: unconditional through the null class, latent
  scaling and learned-sigma channels handled). Any other backbone plugs in by implementing the
  :class:`equidiff.core.priors.Prior` protocol (``sample_latents(n, generator)`` and
  ``prior(z) -> x`` in [-1, 1]) and being passed as ``prior=`` to
  :func:`equidiff.worlds.imagenet.models.load_paper_models`.
* **classifier** — :func:`load_classifier`: timm ``resnet50`` with pretrained weights, wrapped in
  :class:`ImageNetInput`, which maps the sampler's [-1, 1] images to the classifier's normalised
  input (and resizes 256 → 224). Its neurons (thesis Section 4.2.1: #1656, #1052, #421 of the last
  stage) are read *before* the final ReLU (:func:`paper_neuron_layer`,
  :func:`paper_neuron_objective`): the 7×7 = 49 "logits" of Figure 4.1.
* **ViT** — :func:`load_vit`: a timm ``VisionTransformer`` (default
  ``vit_base_patch32_clip_224.datacompxl``, the CLIP ViT-B/32 of Prisma's CLIP SAEs) with its
  pretrained weights, wrapped in :class:`ImageNetInput` (CLIP's normalisation, 256 → 224); its SAE
  is loaded by :mod:`equidiff.sae` from :attr:`PaperConfig.sae_path` (Prisma / SAELens format).

**Weights never download by default.** Every loader looks in the folder/file the user names,
then in the local Hugging Face cache (``huggingface_hub``'s ``HF_HUB_CACHE``, or ``cache_dir``);
``allow_download=True`` opts in to fetching. A missing model raises :class:`ModelNotFoundError`
(a ``FileNotFoundError``) naming the model, every place looked and the one ``hf download``
command that fetches it.

GPU speed: ``PaperConfig.bf16`` runs the prior and the objective under bf16 autocast
(:func:`autocast`, :class:`AutocastPrior`, :func:`autocast_objective`).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from equidiff._validate import bad as _bad, is_int as _is_int
from equidiff.core.objectives import Objective, neuron_map, resolve_module
from equidiff.core.priors import LatentDiTPrior
from equidiff.worlds.imagenet.config import CLASSIFIER_MODEL, DIT_MODEL, VIT_MODEL

__all__ = [
    "PathLike",
    "DIT_PARTS",
    "ModelNotFoundError",
    "find_diffusers_folder",
    "find_weights_file",
    "resolve_device",
    "prior_image_size",
    "load_latent_prior",
    "latent_prior_with_steps",
    "disable_inplace",
    "ImageNetInput",
    "param_device",
    "load_classifier",
    "paper_neuron_layer",
    "paper_neuron_objective",
    "load_vit",
    "autocast",
    "AutocastPrior",
    "autocast_objective",
]

# The parts of a diffusers DiT pipeline folder this module loads (model_index.json is optional).
DIT_PARTS = ("transformer", "vae", "scheduler")
DIT_PATTERNS = ["model_index.json", "transformer/*", "vae/*", "scheduler/*"]
DIT_CLI_FILES = [f"{p}/" for p in DIT_PARTS]  # `hf download <repo> transformer/ vae/ scheduler/`: those subfolders only
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


def latent_prior_with_steps(prior, num_steps: int):
    """The same latent chain (the loaded transformer and VAE, the scheduler's config, class label,
    checkpointing and clamping) with ``num_steps`` DDIM steps T; under :class:`AutocastPrior` again
    when ``prior`` was. Nothing is loaded from disk: T is a setting of the chain, not of the models."""
    base = prior.prior if isinstance(prior, AutocastPrior) else prior
    if not isinstance(base, LatentDiTPrior):
        raise ValueError(f"prior must be a LatentDiTPrior (or one under AutocastPrior), got {type(base).__name__}")
    if not _is_int(num_steps) or num_steps < 1:
        raise _bad("ddim_steps", num_steps, "an integer ≥ 1 (T: DDIM steps of the latent chain)")
    p = LatentDiTPrior(base.transformer, base.vae, base.scheduler, num_steps=num_steps,
                       checkpointing=base.checkpointing, class_label=base.class_label, clamp=base.clamp)
    return AutocastPrior(p, prior.dtype) if isinstance(prior, AutocastPrior) else p


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
    ``forward_features``/``forward_head`` pass through (so :mod:`equidiff.core.metrics` features see
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
        self.register_buffer("mean", mean_t.to(param_device(model)), persistent=False)
        self.register_buffer("std", std_t.to(param_device(model)), persistent=False)
        # the wrapper has no train-mode behaviour of its own: it takes the wrapped model's mode, so a frozen
        # classifier stays an eval-mode model that objectives accept (they refuse any module in train mode)
        self.training = model.training

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


def param_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
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


# --------------------------------------------------------------------------------------------
# GPU speed: bf16 autocast
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
