"""Thesis Section 4.3 in the embedded world: sparse autoencoders (SAEs) on the digits ViT.

The thesis samples invariant sets of SAE features of a CLIP ViT, loaded with Prisma
[Joseph et al., 2025] (Figure 4.3: feature #6547, L2 ≈ 0.01). Here everything is small and
trained on the spot:

* **The model**: the digits ViT of :mod:`equidiff.zoo` (preset ``"digits-vit"``: 4 blocks, width
  64, 16 patch tokens of 4×4 pixels plus a class token). The SAE reads the residual stream after
  block ``layer`` — the output of ``vit.blocks[layer]``, shape ``(B, tokens, d_in)``; TransformerLens
  and Prisma call it ``blocks.{layer}.hook_resid_post``. It is collected with a forward hook that
  lives only inside :func:`equidiff.core.objectives.capture_activation` (removed on exit, also when the
  forward pass raises).
* **The SAE** (:class:`SparseAutoencoder`) follows SAELens' and Prisma's conventions:
  ``encode(x) = act((x − b_dec) W_enc + b_enc)``, ``decode(f) = f W_dec + b_dec`` with ``W_enc``
  ``[d_in, d_sae]``, ``W_dec`` ``[d_sae, d_in]`` whose rows (the feature directions) have unit norm;
  ``act`` is a ReLU (trained with an L1 penalty) or TopK (the k largest pre-activations, ReLU'd,
  the rest zero; Gao et al., 2024). It is trained on every token of every training image
  (class token included, as Prisma's all-patch SAEs are).
* **On disk** an SAE is the SAELens layout — ``cfg.json`` (``d_in``, ``d_sae``, ``architecture``,
  ``k``, ...) and ``sae_weights.safetensors`` (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``).
  :func:`load_sae` reads that, and Prisma's ``config.json`` variant; the SAEs trained here are
  cached in the same format and loaded back through the same function.
* **A feature's activation on an image** is, by default, its activation on the class token — the
  token the ViT classifies from (``reduce="cls"``; also ``"mean"`` or ``"max"`` over the tokens, or
  the whole per-token map ``"tokens"``). :func:`sae_feature` turns it into an
  :class:`~equidiff.core.objectives.Objective`; :func:`sae_code` is the "full SAE code" variant (all
  ``d_sae`` features at once). Read on the class token, features are far more selective for the
  digit classes than averaged over the tokens: on the default SAE, of the features active on 5–50 %
  of the training digits, 9 of 72 have a selectivity above 0.9 on the class token, 0 of 48 averaged.
* **Feature selection** (:func:`feature_table`, :func:`select_features`): the thesis picks
  "monosemantic features with high sparsity scores". Here a feature's *selectivity* for a concept
  (a digit class, or a stroke shape of :mod:`equidiff.neurons`) is the share of its total activation
  mass, over the training images, that falls on images with that concept: 1 means it fires on
  nothing else; a feature that ignored digit classes would score about 0.1. Its *firing rate* is
  the share of training images on which it is active at all.

:func:`run_feature` is Section 4.3's experiment for one feature: the query x* is the training
image that activates it most; ``n_samples`` members of IS(x*) = {x : f(x) = f(x*)} come from
:func:`equidiff.core.invariants.find_invariants` through the pixel DDIM prior; the digits classifier
labels the samples and the top-activating real images, to measure whether the samples "extend
beyond the training examples' concept" as the thesis reports.

**Paper scale** (``profile="paper"``, :func:`load_world`, :class:`SAEWorld`): a timm ViT with
pretrained weights (:func:`equidiff.worlds.imagenet.models.load_vit`; default the CLIP ViT-B/32 of Prisma's CLIP SAEs),
an SAE read by :func:`load_sae` from ``PaperConfig.sae_path`` on ``blocks.<L>.hook_resid_post``, the
latent DiT prior and the user's query images. There are no labels: features are given or are the
ones most active on the query images (:func:`choose_paper_features`); concept, selectivity and every
figure of the judge classifier are None with a ``<field>_reason`` in metrics.json; FID is Inception's
(:meth:`equidiff.worlds.imagenet.models.PaperModels.fid`), None with its reason when those weights are absent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from equidiff import cache
from equidiff._validate import bad as _bad, is_int as _is_int, is_num as _is_num
from equidiff.core.objectives import Objective, capture_activation, resolve_module

__all__ = [
    "SAE_KINDS",
    "REDUCTIONS",
    "CODE_VERSION",
    "PROFILES",
    "SparseAutoencoder",
    "SAETrainConfig",
    "TrainedSAE",
    "block_name",
    "collect_activations",
    "train_sae",
    "get_sae",
    "sae_folder",
    "load_sae",
    "evaluate_sae",
    "check_compatible",
    "encode_images",
    "sae_feature",
    "sae_code",
    "FeatureTable",
    "feature_table",
    "SelectedFeature",
    "select_features",
    "choose_features",
    "FeatureRun",
    "run_feature",
    "resolve_profile",
    "top_image_rows",
    "quality_report",
    "runs_html",
    "realism_summary",
    "label_histogram",
    "features_html",
    "SAEWorld",
    "load_world",
    "PaperSAEInputs",
    "load_paper_sae",
    "choose_paper_features",
    "run_paper_feature",
]

SAE_KINDS = ("relu", "topk")  # ReLU + L1 penalty, or TopK (Gao et al., 2024)
REDUCTIONS = ("mean", "max", "cls", "tokens")  # how a feature's per-token activations become one measurement
CODE_VERSION = "1"  # bump when SAE training changes in a way that changes the weights
SAE_CFG_FILENAME = "cfg.json"  # SAELens' config file name
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"  # SAELens' weights file name
PRISMA_CFG_FILENAME = "config.json"  # Prisma's (and Hugging Face's) config file name
WEIGHT_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")
CONFIDENT = 0.9  # classifier confidence that counts as "looks like a digit" (as zoo.quality_gate)

# Profiles of the chapter's notebook. "cpu": the embedded presets of equidiff.zoo at full size;
# "smoke": the same code path on the tiny presets (seconds; tests and CI). The notebook takes the
# model presets and budgets as explicit parameters; the profile is validated and recorded.
# A third profile, "paper", runs a timm ViT with an SAE from a local folder (load_world).
PROFILES = ("cpu", "smoke")


def _is_index(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0


# --------------------------------------------------------------------------------------------
# The SAE (SAELens / Prisma conventions)
# --------------------------------------------------------------------------------------------


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder in SAELens' and Prisma's parameterisation.

    ``encode(x) = act((x − b_dec) W_enc + b_enc)`` (``b_dec`` is subtracted only when
    ``apply_b_dec_to_input``, SAELens' default), ``decode(f) = f W_dec + b_dec``.
    Parameters: ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae,), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in,).
    ``kind``: ``"relu"`` or ``"topk"`` (keep the ``k`` largest pre-activations of each token, ReLU'd).
    ``hook_name``/``layer``: where the SAE reads, when known (e.g. ``"blocks.2.hook_resid_post"``, 2).
    """

    def __init__(self, d_in: int, d_sae: int, kind: str = "relu", k: Optional[int] = None,
                 apply_b_dec_to_input: bool = True, hook_name: Optional[str] = None,
                 layer: Optional[int] = None, model_name: Optional[str] = None):
        super().__init__()
        if not _is_int(d_in) or d_in < 1:
            raise _bad("d_in", d_in, "an integer ≥ 1")
        if not _is_int(d_sae) or d_sae < 1:
            raise _bad("d_sae", d_sae, "an integer ≥ 1")
        if kind not in SAE_KINDS:
            raise _bad("kind", kind, f"one of {SAE_KINDS}")
        if kind == "topk" and (not _is_int(k) or not (1 <= k <= d_sae)):
            raise _bad("k", k, f"an integer in [1, {d_sae}] (d_sae) for a TopK SAE")
        if kind == "relu" and k is not None:
            raise _bad("k", k, "None for a ReLU SAE (k belongs to TopK)")
        self.d_in, self.d_sae, self.kind, self.k = int(d_in), int(d_sae), kind, k
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.hook_name, self.layer, self.model_name = hook_name, layer, model_name
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))  # (d_in, d_sae)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))  # (d_sae,)
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))  # (d_sae, d_in): one feature direction per row
        self.b_dec = nn.Parameter(torch.zeros(d_in))  # (d_in,)

    # --- the maps ---
    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations (SAELens' ``hidden_pre``): ``(x − b_dec) W_enc + b_enc``, shape (..., d_sae)."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"SAE input must end in d_in={self.d_in} values, got shape {tuple(x.shape)}")
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """ReLU, or TopK: the ``k`` largest pre-activations of each row, ReLU'd; all others 0."""
        if self.kind == "relu":
            return torch.relu(pre)
        vals, idx = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (the SAE code), shape (..., d_sae)."""
        return self.activation(self.encode_pre(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``f W_dec + b_dec``, shape (..., d_in)."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # --- training helpers (as in SAELens / Prisma) ---
    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project each decoder row's gradient onto the row's tangent space (keeps unit norm to first order)."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)  # (d_sae, 1)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    # --- SAELens format ---
    def sae_lens_config(self) -> dict:
        """The ``cfg.json`` of this SAE, readable by SAELens (v6 field names, plus the older
        ``activation_fn_str`` / ``activation_fn_kwargs`` that SAELens ≤ 5 and Prisma read)."""
        cfg = {
            "architecture": "topk" if self.kind == "topk" else "standard",
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "activation_fn_str": self.kind,
            "activation_fn_kwargs": {"k": self.k} if self.kind == "topk" else {},
            "hook_name": self.hook_name,
            "hook_layer": self.layer,
            "model_name": self.model_name,
            "meta": {"hook_name": self.hook_name, "hook_layer": self.layer, "model_name": self.model_name},
        }
        if self.kind == "topk":
            cfg["k"] = self.k
        return cfg

    def save(self, folder: Union[str, os.PathLike]) -> Path:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` (SAELens' layout) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: getattr(self, k).detach().contiguous().cpu() for k in WEIGHT_KEYS},
                  str(folder / SAE_WEIGHTS_FILENAME))
        (folder / SAE_CFG_FILENAME).write_text(json.dumps(self.sae_lens_config(), indent=2))
        return folder

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.kind == "topk" else ""
        return f"d_in={self.d_in}, d_sae={self.d_sae}, kind={self.kind!r}{k}, hook_name={self.hook_name!r}"


# --------------------------------------------------------------------------------------------
# Loading SAEs from disk (SAELens cfg.json, Prisma config.json; safetensors weights)
# --------------------------------------------------------------------------------------------


def _config_file(folder: Path) -> Path:
    for name in (SAE_CFG_FILENAME, PRISMA_CFG_FILENAME):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"no SAE config in {folder}: expected {SAE_CFG_FILENAME!r} (SAELens) or {PRISMA_CFG_FILENAME!r} (Prisma)"
    )


def _weights_file(folder: Path, weights: Optional[str]) -> Path:
    if weights is not None:
        path = folder / weights
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        return path
    if (folder / SAE_WEIGHTS_FILENAME).is_file():
        return folder / SAE_WEIGHTS_FILENAME
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(found) == 1:
        return folder / found[0]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".pkl", ".gz"))
    hint = (f"; {pickles} are pickles, which this loader never opens (convert the four tensors to safetensors)"
            if pickles else "")
    raise FileNotFoundError(
        f"no SAE weights in {folder}: expected {SAE_WEIGHTS_FILENAME!r} or exactly one *.safetensors file, "
        f"found {found}{hint}"
    )


def _parse_config(cfg: dict, source: str) -> dict:
    """Normalise an SAELens / Prisma config dict to SparseAutoencoder's arguments."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{source} must hold a JSON object, got {type(cfg).__name__}")
    d_in = cfg.get("d_in")
    if not _is_int(d_in) or d_in < 1:
        raise ValueError(f"{source}: key 'd_in' must be an integer ≥ 1, got {d_in!r} (keys: {sorted(cfg)})")
    d_sae = cfg.get("d_sae")
    if d_sae is None and _is_int(cfg.get("expansion_factor")):  # Prisma: d_sae = d_in × expansion_factor
        d_sae = d_in * cfg["expansion_factor"]
    if not _is_int(d_sae) or d_sae < 1:
        raise ValueError(
            f"{source}: key 'd_sae' (or Prisma's 'expansion_factor') must be an integer ≥ 1, got {d_sae!r} "
            f"(keys: {sorted(cfg)})"
        )
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch == "topk" or (arch == "standard" and act == "topk"):
        kind = "topk"
        k = cfg.get("k", kwargs.get("k"))
        if not _is_int(k) or not (1 <= k <= d_sae):
            raise ValueError(f"{source}: a TopK SAE needs key 'k' (or activation_fn_kwargs.k), an integer in "
                             f"[1, {d_sae}], got {k!r}")
    elif arch == "standard" and act == "relu":
        kind, k = "relu", None
    else:
        raise ValueError(
            f"{source}: architecture {arch!r} with activation {act!r} is not supported; this loader reads "
            "'standard' (ReLU) and 'topk' SAEs"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None, False):
        raise ValueError(f"{source}: normalize_activations must be 'none' for this loader, got {norm!r}")
    meta = cfg.get("meta") or cfg.get("metadata") or {}
    hook = cfg.get("hook_name", cfg.get("hook_point", meta.get("hook_name")))
    layer = cfg.get("hook_layer", cfg.get("hook_point_layer", meta.get("hook_layer")))
    if layer is None and isinstance(hook, str):
        m = re.match(r"blocks\.(\d+)\.", hook)
        layer = int(m.group(1)) if m else None
    return {"d_in": d_in, "d_sae": d_sae, "kind": kind, "k": k,
            "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
            "hook_name": hook, "layer": layer if _is_int(layer) else None,
            "model_name": cfg.get("model_name", meta.get("model_name"))}


def load_sae(path: Union[str, os.PathLike], weights: Optional[str] = None,
             device: Union[str, torch.device] = "cpu") -> SparseAutoencoder:
    """Load an SAE saved in the SAELens layout (``cfg.json`` + ``sae_weights.safetensors``) or
    Prisma's (``config.json`` + a safetensors file). Never unpickles anything.

    The config must give ``d_in`` and ``d_sae`` (Prisma: or ``expansion_factor``), the
    architecture (``"standard"``/ReLU or ``"topk"`` with ``k``); the weights file must hold exactly
    ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), ``b_enc`` (d_sae,) and ``b_dec`` (d_in,).
    Anything that does not fit raises an error naming the file and the missing or mismatched key.
    Tensors are loaded as float32.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE folder {folder} does not exist")
    cfg_path = _config_file(folder)
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    args = _parse_config(raw, str(cfg_path))
    w_path = _weights_file(folder, weights)
    state = load_file(str(w_path))
    missing = [k for k in WEIGHT_KEYS if k not in state]
    if missing:
        raise ValueError(
            f"{w_path} is missing tensor(s) {missing}; an SAELens / Prisma SAE holds {list(WEIGHT_KEYS)}, "
            f"this file holds {sorted(state)}"
        )
    extra = sorted(set(state) - set(WEIGHT_KEYS))
    if extra:
        raise ValueError(
            f"{w_path} holds tensor(s) {extra} this loader does not understand (it reads {list(WEIGHT_KEYS)} "
            "of a ReLU or TopK SAE; e.g. 'threshold' belongs to a JumpReLU SAE)"
        )
    d_in, d_sae = args["d_in"], args["d_sae"]
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(
                f"{w_path}: tensor {key!r} has shape {tuple(state[key].shape)}, but {cfg_path.name} "
                f"(d_in={d_in}, d_sae={d_sae}) needs {shape}"
            )
    sae = SparseAutoencoder(**args)
    with torch.no_grad():
        for key in WEIGHT_KEYS:
            getattr(sae, key).copy_(state[key].float())
    return sae.to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------
# Activations of the ViT (hooks live only inside capture_activation)
# --------------------------------------------------------------------------------------------


def block_name(layer: int) -> str:
    """Module path of the residual stream after block ``layer`` of a timm ViT."""
    return f"blocks.{layer}"


def _vit_body(vit: nn.Module) -> nn.Module:
    """The timm VisionTransformer itself: ``vit``, or the ``.model`` of an input wrapper
    (:class:`equidiff.worlds.imagenet.models.ImageNetInput`, whose forward normalises [-1, 1] images first)."""
    if isinstance(vit, nn.Module) and getattr(vit, "blocks", None) is None and isinstance(
        getattr(vit, "model", None), nn.Module
    ):
        if getattr(vit.model, "blocks", None) is not None:
            return vit.model
    return vit


def _block(vit: nn.Module, layer) -> nn.Module:
    body = _vit_body(vit)
    blocks = getattr(body, "blocks", None)
    if blocks is None:
        raise TypeError(f"vit must be a timm VisionTransformer (with .blocks), got {type(vit).__name__}")
    if not _is_int(layer) or not (0 <= layer < len(blocks)):
        raise _bad("layer", layer, f"an integer in [0, {len(blocks) - 1}] (blocks of the ViT)")
    return resolve_module(body, block_name(layer))


def _run_to_block(vit: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The residual stream after ``blocks[layer]`` for images ``x``: (B, tokens, d). The hook is
    registered for this one forward pass only and removed even if the pass raises."""
    module = _block(vit, layer)
    with capture_activation(module) as store:
        vit(x)
    return store["output"]


@torch.no_grad()
def collect_activations(vit: nn.Module, images: torch.Tensor, layer: int, batch: int = 256) -> torch.Tensor:
    """Residual-stream activations after ``vit.blocks[layer]`` for every image: (N, tokens, d_in)."""
    _check_images(images)
    param = next(vit.parameters())
    out = []
    for i in range(0, len(images), batch):
        out.append(_run_to_block(vit, layer, images[i : i + batch].to(param.device, param.dtype)).cpu())
    return torch.cat(out)


def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise _bad("images", shape, "a tensor of grey images, shape (N, 1, H, W), values in [-1, 1]")
    return images


def check_compatible(sae: SparseAutoencoder, vit: nn.Module, layer: int) -> None:
    """Raise ``ValueError`` unless ``sae`` reads vectors as wide as ``vit.blocks[layer]``'s output."""
    body = _vit_body(vit)
    width = getattr(body, "embed_dim", None) or getattr(body, "num_features", None)
    _block(vit, layer)
    if width is not None and sae.d_in != width:
        raise ValueError(f"the SAE reads d_in={sae.d_in} values per token, but vit.blocks.{layer} outputs {width}")
    if sae.layer is not None and sae.layer != layer:
        raise ValueError(f"the SAE was trained on layer {sae.layer} ({sae.hook_name}), not layer {layer}")


# --------------------------------------------------------------------------------------------
# Training (deterministic, cached in the SAELens layout)
# --------------------------------------------------------------------------------------------


@dataclass
class SAETrainConfig:
    """An SAE on the digits ViT. Every field is validated; a bad value raises ``ValueError``."""

    vit: str = "digits-vit"  # zoo preset of the ViT whose activations are encoded
    layer: int = 2  # the SAE reads the residual stream after vit.blocks[layer] (hook_resid_post)
    kind: str = "relu"  # "relu" (ReLU + L1 penalty) or "topk" (TopK, no penalty)
    expansion: int = 4  # d_sae = expansion × d_in (SAELens / Prisma's expansion factor)
    l1_coefficient: float = 0.3  # ReLU only: weight of the L1 penalty (in units of the activations' scale)
    k: int = 8  # TopK only: active features per token
    train_steps: int = 3000  # optimiser steps
    batch_size: int = 512  # tokens per step
    lr: float = 2e-3  # Adam learning rate (linear warm-up, cosine decay)
    warmup_steps: int = 100  # linear warm-up steps
    views: int = 4  # copies of each training image (the first unshifted, the others shifted) to collect tokens from
    max_shift: int = 1  # shift of those copies, pixels in each direction (0: all copies identical)
    seed: int = 0  # seeds the init, the batches and the shifts

    def __post_init__(self):
        if not isinstance(self.vit, str) or not self.vit:
            raise _bad("vit", self.vit, "the name of a ViT preset of equidiff.zoo (e.g. 'digits-vit')")
        if not _is_int(self.layer) or self.layer < 0:
            raise _bad("layer", self.layer, "an integer ≥ 0 (a block of the ViT)")
        if self.kind not in SAE_KINDS:
            raise _bad("kind", self.kind, f"one of {SAE_KINDS}")
        if not _is_int(self.expansion) or self.expansion < 1:
            raise _bad("expansion", self.expansion, "an integer ≥ 1")
        if not _is_num(self.l1_coefficient) or self.l1_coefficient < 0:
            raise _bad("l1_coefficient", self.l1_coefficient, "a finite number ≥ 0")
        if not _is_int(self.k) or self.k < 1:
            raise _bad("k", self.k, "an integer ≥ 1")
        for name in ("train_steps", "batch_size", "views"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise _bad(name, getattr(self, name), "an integer ≥ 1")
        if not _is_num(self.lr) or self.lr <= 0:
            raise _bad("lr", self.lr, "a finite number > 0")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise _bad("warmup_steps", self.warmup_steps, "an integer ≥ 0")
        if not _is_int(self.max_shift) or not (0 <= self.max_shift <= 4):
            raise _bad("max_shift", self.max_shift, "an integer in [0, 4] (pixels)")
        if not _is_int(self.seed) or self.seed < 0:
            raise _bad("seed", self.seed, "an integer ≥ 0")


def _training_tokens(vit: nn.Module, cfg: SAETrainConfig) -> torch.Tensor:
    """Tokens to train on: every token of ``cfg.views`` (shifted) copies of the training digits, (M, d_in)."""
    from equidiff.worlds.digits.models import load_digits16, shift_augment

    images, _ = load_digits16("train")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    views = [images] + [shift_augment(images, cfg.max_shift, gen) for _ in range(cfg.views - 1)]
    acts = collect_activations(vit, torch.cat(views), cfg.layer)  # (V·N, T, d_in)
    return acts.reshape(-1, acts.shape[-1])


def train_sae(vit: nn.Module, cfg: SAETrainConfig, *, progress: bool = False, vit_name: Optional[str] = None):
    """Train an SAE on ``vit``'s activations after block ``cfg.layer``; returns ``(sae, info)``.

    Adam on the normalised reconstruction error ``||x − x̂||² / v`` (v: the tokens' mean squared
    distance from their mean, so 1 − loss is the variance explained) plus, for a ReLU SAE,
    ``l1_coefficient · Σ_i f_i / √v`` (the code's L1 norm in units of the activations' scale; the
    decoder rows have unit norm, so ``f_i`` is the length of feature i's contribution). Init as
    SAELens / Prisma: ``W_enc = W_dec^T`` with unit-norm random rows, ``b_dec`` = the mean token,
    ``b_enc = 0``. After every step the decoder rows are renormalised (their gradient's radial part
    removed first). All randomness from ``cfg.seed``.
    """
    from equidiff.worlds.digits.models import _Batches, _deterministic, _lr_lambda, _progress_bar

    if not isinstance(cfg, SAETrainConfig):
        raise TypeError(f"cfg must be an SAETrainConfig, got {type(cfg).__name__}")
    t0 = time.perf_counter()
    _block(vit, cfg.layer)
    tokens = _training_tokens(vit, cfg)  # (M, d_in)
    d_in = tokens.shape[1]
    mean = tokens.mean(0)
    v = float(((tokens - mean) ** 2).sum(1).mean())  # mean squared distance from the mean token
    gen = torch.Generator().manual_seed(cfg.seed)
    with _deterministic(cfg.seed):
        sae = SparseAutoencoder(d_in, cfg.expansion * d_in, cfg.kind, cfg.k if cfg.kind == "topk" else None,
                                hook_name=f"blocks.{cfg.layer}.hook_resid_post", layer=cfg.layer,
                                model_name=vit_name)
        with torch.no_grad():
            w = torch.randn(sae.d_sae, d_in, generator=gen)
            sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.t())
            sae.b_dec.copy_(mean)
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.train_steps))
        batches = _Batches(len(tokens), cfg.batch_size, gen)
        bar = _progress_bar(cfg.train_steps, f"training {cfg.kind} SAE on {vit_name or 'ViT'} block {cfg.layer}",
                            progress)
        history = []
        for step in range(cfg.train_steps):
            x = tokens[batches.next()]  # (B, d_in)
            f = sae.encode(x)  # (B, d_sae)
            mse = ((sae.decode(f) - x) ** 2).sum(1).mean() / v  # normalised reconstruction error
            loss = mse
            if cfg.kind == "relu":
                loss = loss + cfg.l1_coefficient * f.sum(1).mean() / v**0.5
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            sched.step()
            sae.set_decoder_norm_to_unit_norm()
            history.append(float(mse.detach()))
            bar.update(1)
            if step % 100 == 0 or step == cfg.train_steps - 1:
                bar.set_postfix(mse=f"{np.mean(history[-100:]):.3f}")
        bar.close()
    sae.eval().requires_grad_(False)
    info = {"train_seconds": time.perf_counter() - t0, "n_tokens": int(len(tokens)),
            "final_normalised_mse": float(np.mean(history[-100:]))}
    return sae, info


@dataclass
class TrainedSAE:
    """An SAE of this project with the ViT it reads, as loaded from (or written to) its cache folder."""

    sae: SparseAutoencoder
    vit: object  # the equidiff.worlds.digits.models.ZooModel of the ViT
    config: SAETrainConfig
    path: Path  # the cache folder (SAELens layout + equidiff.json)
    info: dict  # train_seconds, n_tokens, final_normalised_mse
    trained_now: bool


def sae_folder(cfg: SAETrainConfig, vit_folder: Path, cache_dir=None) -> Path:
    """``<cache root>/<vit preset>-sae-<kind>-<hash>``; the hash covers the config and the ViT's own folder
    name (so a retrained ViT never pairs with a stale SAE)."""
    key = {**dataclasses.asdict(cfg), "vit_folder": Path(vit_folder).name}
    return cache.cache_root(cache_dir) / f"{cfg.vit}-sae-{cfg.kind}-{cache.config_hash(key, CODE_VERSION)}"


def get_sae(cfg: Optional[SAETrainConfig] = None, cache_dir=None, *, train_if_missing: bool = True,
            progress: bool = True) -> TrainedSAE:
    """The SAE for ``cfg`` from its cache folder (through :func:`load_sae`), trained and cached first if missing.

    The folder is written under a temporary name and renamed when complete.
    """
    from equidiff.worlds.digits.models import get_model

    cfg = cfg or SAETrainConfig()
    if not isinstance(cfg, SAETrainConfig):
        raise TypeError(f"cfg must be an SAETrainConfig, got {type(cfg).__name__}")
    vit = get_model(cfg.vit, cache_dir, train_if_missing=train_if_missing, progress=progress)
    if vit.kind != "vit":
        raise _bad("vit", cfg.vit, "the name of a ViT preset of equidiff.zoo (e.g. 'digits-vit')")
    _block(vit.model, cfg.layer)
    folder = sae_folder(cfg, vit.path, cache_dir)
    record = folder / "equidiff.json"
    if record.is_file():
        stored = json.loads(record.read_text())
        if stored.get("config") != json.loads(json.dumps(dataclasses.asdict(cfg))):
            raise ValueError(f"cache folder {folder} holds a different SAE config; delete it to retrain")
        return TrainedSAE(load_sae(folder), vit, cfg, folder, stored["info"], trained_now=False)
    if not train_if_missing:
        raise FileNotFoundError(f"no cached SAE at {folder}; call with train_if_missing=True to train it")
    sae, info = train_sae(vit.model, cfg, progress=progress, vit_name=cfg.vit)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save(tmp)
    (tmp / "equidiff.json").write_text(json.dumps(
        {"config": dataclasses.asdict(cfg), "vit_folder": vit.path.name, "code_version": CODE_VERSION,
         "info": info}, indent=2))
    try:
        os.rename(tmp, folder)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return TrainedSAE(load_sae(folder), vit, cfg, folder, info, trained_now=True)


# --------------------------------------------------------------------------------------------
# Quality of an SAE
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, tokens: torch.Tensor, batch: int = 4096) -> dict:
    """Variance explained, mean L0 and dead-feature fraction of ``sae`` on ``tokens`` (M, d_in).

    * ``variance_explained`` = 1 − Σ||x − x̂||² / Σ||x − mean(x)||² over the tokens;
    * ``l0``: mean number of active features (activation > 0) per token;
    * ``dead_fraction``: share of the ``d_sae`` features never active on any of the tokens.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] != sae.d_in:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise _bad("tokens", shape, f"a tensor (M, {sae.d_in}) of activations")
    err = tot = l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    mean = tokens.mean(0)
    for i in range(0, len(tokens), batch):
        x = tokens[i : i + batch]
        f = sae.encode(x)
        err += float(((sae.decode(f) - x) ** 2).sum())
        tot += float(((x - mean) ** 2).sum())
        active = f > 0
        l0 += float(active.sum())
        fired |= active.any(0).cpu()
    return {"variance_explained": 1.0 - err / tot, "l0": l0 / len(tokens),
            "dead_fraction": float((~fired).float().mean()), "n_tokens": int(len(tokens)),
            "d_in": sae.d_in, "d_sae": sae.d_sae, "kind": sae.kind, "k": sae.k}


# --------------------------------------------------------------------------------------------
# Objectives: SAE features of the ViT
# --------------------------------------------------------------------------------------------


def _reduce(codes: torch.Tensor, reduce: str) -> torch.Tensor:
    """(B, T, m) per-token activations -> (B, m) ("mean", "max", "cls") or (B, T·m) ("tokens")."""
    if reduce == "mean":
        return codes.mean(1)
    if reduce == "max":
        return codes.amax(1)
    if reduce == "cls":
        return codes[:, 0]
    return codes.transpose(1, 2).flatten(1)  # "tokens": feature-major, (B, m·T)


def _features_list(features, d_sae: int) -> list[int]:
    feats = [features] if _is_index(features) else features
    if not isinstance(feats, (list, tuple)) or not feats or not all(_is_index(f) and f < d_sae for f in feats):
        raise _bad("features", features, f"a feature index or a non-empty list of indices in [0, {d_sae - 1}]")
    return [int(f) for f in feats]


def _check_reduce(reduce) -> None:
    if reduce not in REDUCTIONS:
        raise _bad("reduce", reduce, f"one of {REDUCTIONS}")


def encode_images(vit: nn.Module, layer: int, sae: SparseAutoencoder, x: torch.Tensor,
                  surrogate_gradient: bool = False) -> torch.Tensor:
    """The SAE code of every token of images ``x``: (B, tokens, d_sae), differentiable in ``x``.

    ``surrogate_gradient=True`` keeps the values but passes the gradient straight through the
    activation function (the gradient of the pre-activation, as if the activation were the
    identity; a straight-through estimator). A feature that is inactive (ReLU / TopK output 0) on
    a sample then still tells the optimiser which way raises it; the exact gradient there is 0, so a
    sample that starts where the feature is silent would never move. Measured values, and so every
    loss and success rate, are the exact activations either way.
    """
    pre = sae.encode_pre(_run_to_block(vit, layer, x))  # (B, T, d_sae)
    act = sae.activation(pre)
    if surrogate_gradient:
        return pre + (act - pre).detach()
    return act


def sae_feature(vit: nn.Module, layer: int, sae: SparseAutoencoder, features, reduce: str = "cls",
                name: Optional[str] = None, surrogate_gradient: bool = True) -> Objective:
    """SAE feature activation(s) of the ViT as an objective: (B, m).

    ``features``: one index or a list; ``reduce``: ``"cls"`` (default; the feature's activation on
    the class token, the ViT's summary of the image: one value per feature), ``"mean"`` (averaged
    over all tokens), ``"max"`` or ``"tokens"`` (the whole per-token map: tokens values per
    feature). The ViT's block output is read with a hook that exists only during each call.
    ``surrogate_gradient``: see :func:`encode_images` (values are exact either way).
    """
    check_compatible(sae, vit, layer)
    _check_reduce(reduce)
    feats = _features_list(features, sae.d_sae)
    idx = torch.as_tensor(feats)

    def fn(x: torch.Tensor) -> torch.Tensor:
        codes = encode_images(vit, layer, sae, x, surrogate_gradient)
        return _reduce(codes[..., idx.to(x.device)], reduce)

    what = f"feature {feats[0]}" if len(feats) == 1 else f"features {feats}"
    return Objective(fn, f"SAE {what} of {name or type(vit).__name__}.blocks.{layer} ({reduce})")


def sae_code(vit: nn.Module, layer: int, sae: SparseAutoencoder, reduce: str = "cls",
             name: Optional[str] = None, surrogate_gradient: bool = True) -> Objective:
    """The full SAE code as an objective: all ``d_sae`` feature activations, (B, d_sae) (or (B, d_sae·T)
    with ``reduce="tokens"``): the invariant set of every feature at once."""
    check_compatible(sae, vit, layer)
    _check_reduce(reduce)
    return Objective(lambda x: _reduce(encode_images(vit, layer, sae, x, surrogate_gradient), reduce),
                     f"full SAE code ({sae.d_sae} features) of {name or type(vit).__name__}.blocks.{layer} ({reduce})")


# --------------------------------------------------------------------------------------------
# Feature selection (Section 4.3.1: monosemantic features)
# --------------------------------------------------------------------------------------------


@dataclass
class FeatureTable:
    """Every SAE feature's image-level activation, firing rate and selectivity over a labelled image set."""

    activations: torch.Tensor  # (N, d_sae) image-level activations (reduce over tokens)
    images: torch.Tensor  # (N, 1, H, W)
    digit_labels: torch.Tensor  # (N,) true digit classes
    concepts: list  # K concept names
    concept_labels: np.ndarray  # (N, K) bool
    firing_rate: np.ndarray  # (d_sae,) share of images on which the feature is active (> 0)
    selectivity: np.ndarray  # (d_sae, K) share of the feature's activation mass on images with the concept
    reduce: str  # how tokens were reduced

    def best_concept(self, feature: int, concepts: Optional[Sequence[str]] = None) -> tuple[str, float]:
        """The concept (among ``concepts``, default all) ``feature`` is most selective for, and its selectivity."""
        feature = self._check_feature(feature)
        names = list(self.concepts) if concepts is None else list(concepts)
        cols = [self.concepts.index(c) for c in names]
        j = int(np.argmax(self.selectivity[feature, cols]))
        return names[j], float(self.selectivity[feature, cols[j]])

    def top_activating(self, feature: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (into ``images``) of the ``n`` images that activate ``feature`` most, and the activations."""
        feature = self._check_feature(feature)
        if not _is_int(n) or not (1 <= n <= len(self.activations)):
            raise _bad("n", n, f"an integer in [1, {len(self.activations)}]")
        vals, idx = torch.topk(self.activations[:, feature], n)
        return idx, vals

    def _check_feature(self, feature) -> int:
        d = self.activations.shape[1]
        if not _is_index(feature) or feature >= d:
            raise _bad("feature", feature, f"an integer in [0, {d - 1}] (features of the SAE)")
        return int(feature)


@torch.no_grad()
def feature_table(vit: nn.Module, layer: int, sae: SparseAutoencoder, images: torch.Tensor, labels,
                  reduce: str = "cls", batch: int = 256) -> FeatureTable:
    """Image-level activations of every feature on ``images`` and their firing rates and selectivities
    for the digit classes and the stroke concepts of :func:`equidiff.chapters.neurons.concept_labels`."""
    from equidiff.chapters.neurons import concept_labels

    _check_images(images)
    if reduce == "tokens":
        raise _bad("reduce", reduce, "'mean', 'max' or 'cls' (one value per image and feature)")
    _check_reduce(reduce)
    check_compatible(sae, vit, layer)
    acts = []
    for i in range(0, len(images), batch):
        acts.append(_reduce(encode_images(vit, layer, sae, images[i : i + batch]), reduce).cpu())
    acts = torch.cat(acts)  # (N, d_sae)
    concepts, names = concept_labels(images, labels)
    a = acts.double().numpy()
    mass = a.sum(0)  # (d_sae,)
    sel = np.divide(a.T @ concepts.astype(np.float64), mass[:, None],
                    out=np.zeros((a.shape[1], concepts.shape[1])), where=mass[:, None] > 0)
    rate = (a > 0).mean(0)
    return FeatureTable(acts, images, torch.as_tensor(np.asarray(labels)), names, concepts, rate, sel, reduce)


@dataclass
class SelectedFeature:
    feature: int  # index into the SAE's features
    concept: str  # the concept it is most selective for (None at paper scale: no labels)
    selectivity: float  # share of its activation mass on images with that concept (None at paper scale)
    firing_rate: float  # share of images on which it is active


def select_features(table: FeatureTable, k: int = 2, concepts: Optional[Sequence[str]] = None,
                    min_rate: float = 0.02, max_rate: float = 0.5) -> list[SelectedFeature]:
    """``k`` monosemantic features for ``k`` different concepts: among the features whose firing rate
    lies in [min_rate, max_rate] (neither almost dead nor firing on everything), greedily take the
    (feature, concept) pair of highest selectivity, then the next with a new concept and feature."""
    from equidiff.chapters.neurons import concept_columns, greedy_distinct_pairs

    names, cols = concept_columns(table.concepts, concepts, k, "feature")
    if not _is_num(min_rate) or not _is_num(max_rate) or not (0 <= min_rate < max_rate <= 1):
        raise _bad("min_rate, max_rate", (min_rate, max_rate), "numbers with 0 ≤ min_rate < max_rate ≤ 1")
    ok = (table.firing_rate >= min_rate) & (table.firing_rate <= max_rate)
    s = np.where(ok[:, None], table.selectivity[:, cols], -1.0)  # (d_sae, K')
    chosen = [SelectedFeature(f, names[j], float(s[f, j]), float(table.firing_rate[f]))
              for f, j in greedy_distinct_pairs(s, k, floor=0.0)]  # -1 marks features outside the rate window
    if not chosen:
        raise ValueError(f"no feature has a firing rate in [{min_rate}, {max_rate}]; widen the range")
    return chosen


def choose_features(table: FeatureTable, features="auto", concept_set: str = "digits", k: int = 2,
                    min_rate: float = 0.02, max_rate: float = 0.5) -> list[SelectedFeature]:
    """The notebook's choice: ``"auto"`` = :func:`select_features` among ``concept_set`` (``"all"``,
    ``"digits"`` or ``"strokes"``); or a list of feature indices, each paired with the concept of
    ``concept_set`` it is most selective for."""
    from equidiff.chapters.neurons import CONCEPT_SETS

    if concept_set not in CONCEPT_SETS:
        raise _bad("concept_set", concept_set, f"one of {tuple(CONCEPT_SETS)}")
    allowed = list(CONCEPT_SETS[concept_set])
    if isinstance(features, str) and features == "auto":
        return select_features(table, k, allowed, min_rate, max_rate)
    d = table.activations.shape[1]
    if not isinstance(features, (list, tuple)) or not features or not all(_is_index(f) and f < d for f in features):
        raise _bad("features", features, f"'auto' or a non-empty list of feature indices in [0, {d - 1}]")
    out = []
    for f in features:
        c, s = table.best_concept(int(f), allowed)
        out.append(SelectedFeature(int(f), c, s, float(table.firing_rate[int(f)])))
    return out


def features_html(table: FeatureTable, chosen: Sequence[SelectedFeature]) -> str:
    """The chosen features as an HTML table: concept, selectivity, firing rate, top activation."""
    from equidiff.chapters.neurons import html_table

    rows = []
    for s in chosen:
        _, vals = table.top_activating(s.feature, 1)
        rows.append((f"#{s.feature}", s.concept, f"{s.selectivity:.2f}", f"{s.firing_rate:.3f}", f"{float(vals[0]):.3f}"))
    note = ("selectivity: share of the feature's activation mass (summed over the training images) on images "
            "with the concept; firing rate: share of training images on which the feature is active.")
    return html_table(("Feature", "concept", "selectivity", "firing rate", "top activation"), rows, note)


def top_image_rows(table: FeatureTable, chosen: Sequence[SelectedFeature], n: int = 8) -> list[dict]:
    """Rows for :func:`equidiff.report.figures.sae_top_images`: each feature's ``n`` top-activating images."""
    rows = []
    for s in chosen:
        idx, vals = table.top_activating(s.feature, n)
        rows.append({"feature": s.feature, "concept": s.concept, "selectivity": s.selectivity,
                     "firing_rate": s.firing_rate, "images": table.images[idx], "values": vals,
                     "labels": table.digit_labels[idx]})
    return rows


@torch.no_grad()
def quality_report(vit: nn.Module, layer: int, sae: SparseAutoencoder) -> dict:
    """The SAE's quality on the digits: variance explained and mean L0 on every token of the 360 test
    images (held out from SAE training), dead-feature fraction over every token of the 1,437 training images."""
    from equidiff.worlds.digits.models import load_digits16

    check_compatible(sae, vit, layer)
    test, _ = load_digits16("test")
    train, _ = load_digits16("train")
    t = collect_activations(vit, test, layer)
    q = evaluate_sae(sae, t.reshape(-1, t.shape[-1]))
    d = collect_activations(vit, train, layer)
    dead = evaluate_sae(sae, d.reshape(-1, d.shape[-1]))["dead_fraction"]
    return {"variance_explained": q["variance_explained"], "l0": q["l0"], "dead_fraction": dead,
            "tokens_per_image": int(t.shape[1]), "n_test_tokens": q["n_tokens"], "d_in": sae.d_in,
            "d_sae": sae.d_sae, "kind": sae.kind, "k": sae.k, "layer": layer}


def runs_html(runs: Sequence["FeatureRun"], tau: float) -> str:
    """One row per feature: selectivity, L2 (mean ± std), relative L2, success, labels of real vs samples."""
    from equidiff.chapters.neurons import html_table

    rows = []
    for r in runs:
        m = r.metrics
        rate = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        rows.append((f"#{r.feature}", r.concept, f"{m['selectivity']:.2f}", f"{m['target_activation']:.3g}",
                     f"{m['l2_mean']:.2g} ± {m['l2_std']:.2g}", f"{m['l2_relative']:.2g}",
                     f"{m['success_rate']:.2f}", rate(m["real_concept_rate"]), rate(m["sample_concept_rate"]),
                     f"{m['real_classes']} / {m['sample_classes']}", f"{m['sample_confident_rate']:.2f}"))
    note = (f"L2 = Σ(L(x) − L(x*))² per sample (the Algorithm 1 loss), mean ± standard deviation over the "
            f"samples; relative: mean L2 / Σ L(x*)²; τ = {tau:g}. Concept rate: share the digits classifier puts "
            "in the feature's digit class, for the top real images and for the invariant samples; classes: how "
            "many of the ten digit classes occur among them (real / samples); confident: share of the samples the "
            "classifier labels with probability ≥ 0.9 (it was trained to be unsure on non-digits).")
    return html_table(("Feature", "concept", "selectivity", "target f(x*)", "L2", "L2 relative", "below τ",
                       "concept rate, real", "concept rate, samples", "classes real / samples",
                       "samples confident"), rows, note)


def realism_summary(run: "FeatureRun") -> str:
    """One line per run: how digit-like the starting and invariant samples are (classifier confidence
    ≥ 0.9), and how often the classifier and the ViT itself put the samples in the feature's digit class."""
    m = run.metrics
    f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    d = run.concept.split()[-1] if run.concept.startswith("digit ") else None
    line = (f"#{run.feature} ({run.concept}): confident digits: starting samples {m['start_confident_rate']:.2f}, "
            f"invariant samples {m['sample_confident_rate']:.2f}, top real images {m['real_confident_rate']:.2f}")
    if d is not None:
        line += (f"; samples called '{d}' by the classifier {f(m['sample_concept_rate'])}, "
                 f"by the ViT {f(m['sample_vit_concept_rate'])}")
    return line


# --------------------------------------------------------------------------------------------
# Section 4.3 experiment for one feature (Figure 4.3)
# --------------------------------------------------------------------------------------------


def resolve_profile(profile: str) -> str:
    """Check a profile name: ``"cpu"``/``"smoke"`` (the digits world) or ``"paper"`` (a timm ViT with an
    SAE from a local folder and the latent DiT; :func:`load_world`)."""
    if profile != "paper" and profile not in PROFILES:
        raise _bad("profile", profile, f"one of {PROFILES + ('paper',)}")
    return profile


def label_histogram(labels, n_classes: int = 10) -> list[int]:
    """Counts of each class 0..n_classes-1 among ``labels``."""
    t = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    return torch.bincount(t, minlength=n_classes)[:n_classes].tolist()


@dataclass
class FeatureRun:
    """One feature's invariant set (Section 4.3) and its metrics."""

    feature: int
    concept: str
    selectivity: float
    firing_rate: float
    objective: str  # "feature" (the feature's activation) or "code" (the full SAE code)
    query: torch.Tensor  # (1, C, H, W) the top-activating training image x* (paper: query image)
    query_index: int
    top_images: torch.Tensor  # (n_top, C, H, W) the top-activating training (paper: query) images, x* first
    top_values: torch.Tensor  # (n_top,) their activations
    top_predicted: torch.Tensor  # (n_top,) the classifier's labels of them (None at paper scale: no judge)
    result: object  # InvariantResult
    predicted: torch.Tensor  # (n_samples,) the classifier's label of each sample (None at paper scale)
    confidence: torch.Tensor  # (n_samples,) the classifier's probability for that label (None at paper scale)
    sample_values: torch.Tensor  # (n_samples,) the feature's activation on each sample
    metrics: dict = field(default_factory=dict)


def run_feature(vit, layer: int, sae: SparseAutoencoder, classifier, ddpm, table: FeatureTable, feature: int, *,
                concept: Optional[str] = None, objective: str = "feature", reduce: Optional[str] = None,
                surrogate_gradient: bool = True,
                n_samples: int = 32, steps: int = 60, ddim_steps: int = 10, tau: float = 0.01, lr: float = 0.1,
                optimizer: str = "adam", lowpass_cutoff: Optional[float] = None, n_top: int = 32,
                seed: int = 0) -> FeatureRun:
    """Thesis Section 4.3 / Figure 4.3 for one SAE feature.

    1. query x* = the image of ``table.images`` with the highest activation of ``feature``;
    2. objective: the feature's activation (``objective="feature"``, one value) or the full SAE code
       (``objective="code"``, ``d_sae`` values), both reduced over tokens by ``reduce``;
    3. ``n_samples`` invariant samples from ``find_invariants`` through ``PixelDDIMPrior``
       (``ddim_steps`` DDIM steps, predicted x0 clamped; ``optimizer`` with ``lr``; threshold ``tau``;
       budget ``steps``; with ``lowpass_cutoff`` the dual loss of Algorithm 1, which also asks the
       low-pass filtered sample to match);
    4. metrics: per-sample L2 = Σ(L(x) − L(x*))² (the Algorithm 1 loss), success rate, and the
       digits classifier's labels of the samples and of the ``n_top`` top-activating real images.

    ``vit``/``classifier``: modules or :class:`equidiff.worlds.digits.models.ZooModel`; ``ddpm`` needs ``.model`` and
    ``.scheduler``. ``reduce`` defaults to the readout ``table`` was computed with.
    ``surrogate_gradient``: pass the gradient straight through the SAE's activation function, so a
    sample on which the feature is silent still moves (see :func:`encode_images`); every loss and
    success rate is measured on the exact activations.
    """
    from equidiff.core.priors import PixelDDIMPrior
    from equidiff.core.invariants import InvariantConfig, find_invariants
    from equidiff.core.metrics import l1_l2

    vit_m = getattr(vit, "model", vit)
    clf = getattr(classifier, "model", classifier)
    if objective not in ("feature", "code"):
        raise _bad("objective", objective, "'feature' (the feature's activation) or 'code' (the full SAE code)")
    if not _is_int(n_samples) or n_samples < 1:
        raise _bad("n_samples", n_samples, "an integer ≥ 1")
    if not _is_int(ddim_steps) or ddim_steps < 1:
        raise _bad("ddim_steps", ddim_steps, "an integer ≥ 1")
    feature = table._check_feature(feature)
    if concept is None:
        concept, sel = table.best_concept(feature)
    else:
        if concept not in table.concepts:
            raise _bad("concept", concept, f"one of {table.concepts}")
        sel = float(table.selectivity[feature, table.concepts.index(concept)])

    # Step 1: the query and the real images that activate the feature most (the left panel of Fig. 4.3).
    top_idx, top_vals = table.top_activating(feature, min(n_top, len(table.images)))
    qi = int(top_idx[0])
    query = table.images[qi : qi + 1]  # (1, 1, H, W)
    # Step 2: the objective.
    reduce = table.reduce if reduce is None else reduce  # by default, the readout the features were chosen by
    if objective == "feature":
        obj = sae_feature(vit_m, layer, sae, feature, reduce, "digits ViT", surrogate_gradient)
    else:
        obj = sae_code(vit_m, layer, sae, reduce, "digits ViT", surrogate_gradient)
    # Step 3: EquiDiff (Algorithm 1) through the deterministic DDIM prior.
    prior = PixelDDIMPrior(ddpm.model, ddpm.scheduler, num_steps=ddim_steps, checkpointing=True, clamp=True)
    cfg = InvariantConfig(n_samples=n_samples, steps=steps, tau=tau, optimizer=optimizer, lr=lr, seed=seed,
                          lowpass_cutoff=lowpass_cutoff)
    result = find_invariants(obj, query, prior, cfg)

    # Step 4: metrics.
    _, l2 = l1_l2(result.measurements, result.target)  # (N,)
    x = result.x.clamp(-1, 1)
    with torch.no_grad():
        conf, predicted = torch.softmax(clf(x), 1).max(1)  # (N,), (N,)
        top_conf, top_pred = torch.softmax(clf(table.images[top_idx]), 1).max(1)
        conf, predicted, top_conf, top_pred = conf.cpu(), predicted.cpu(), top_conf.cpu(), top_pred.cpu()
        vit_pred = vit_m(x).argmax(1).cpu()  # what the ViT itself calls the samples
        # the unoptimised starting samples prior(z_T): how digit-like the prior is before Algorithm 1 moves it
        start_conf = torch.softmax(clf(prior(result.z_init).clamp(-1, 1)), 1).max(1).values.cpu()
        single = sae_feature(vit_m, layer, sae, feature, reduce=reduce)
        sample_values = single(x)[:, 0].cpu()
    done = result.steps_to_converge[result.converged].float()
    conv = result.converged
    digit = int(concept.split()[-1]) if concept.startswith("digit ") else None
    sample_hist = label_histogram(predicted)
    real_hist = label_histogram(top_pred)
    metrics = {
        "feature": feature,
        "concept": concept,
        "selectivity": sel,
        "firing_rate": float(table.firing_rate[feature]),
        "objective": objective,
        "reduce": reduce,
        "m": int(result.target.numel()),
        "query_index": qi,
        "query_label": int(table.digit_labels[qi]),
        "target_activation": float(top_vals[0]),
        "n_samples": n_samples,
        "l2_mean": float(l2.mean()),
        "l2_std": float(l2.std()) if n_samples > 1 else 0.0,
        "l2_median": float(l2.median()),
        "l2_max": float(l2.max()),
        "l2_relative": float(l2.mean() / (result.target**2).sum().clamp(min=1e-12)),
        "success_rate": result.success_rate,
        "steps": float(done.median()) if done.numel() else None,
        "seconds": result.seconds,
        # the classifier's labels of all samples, and of the n_top most-activating training digits
        "sample_label_histogram": sample_hist,
        "real_label_histogram": real_hist,
        "real_true_label_histogram": label_histogram(table.digit_labels[top_idx]),
        "sample_label_histogram_converged": label_histogram(predicted[conv]),
        # the classifier is trained to be unsure on non-digits (outlier exposure): confidence ≥ 0.9 is the
        # quality gate's "looks like a digit"; the histogram of the confidently labelled samples only
        "confidence_threshold": CONFIDENT,
        "sample_label_histogram_confident": label_histogram(predicted[conf >= CONFIDENT]),
        "sample_confident_rate": float((conf >= CONFIDENT).float().mean()),
        "real_confident_rate": float((top_conf >= CONFIDENT).float().mean()),
        "start_confident_rate": float((start_conf >= CONFIDENT).float().mean()),
        "sample_vit_label_histogram": label_histogram(vit_pred),
        "sample_vit_concept_rate": (float((vit_pred == digit).float().mean()) if digit is not None else None),
        "n_top": int(len(top_idx)),
        # share of the samples / top real images the classifier puts in the feature's digit class
        "sample_concept_rate": (float((predicted == digit).float().mean()) if digit is not None else None),
        "real_concept_rate": (float((top_pred == digit).float().mean()) if digit is not None else None),
        "sample_classes": int(sum(1 for c in sample_hist if c > 0)),
        "real_classes": int(sum(1 for c in real_hist if c > 0)),
        "sample_activation_mean": float(sample_values.mean()),
    }
    return FeatureRun(feature, concept, sel, float(table.firing_rate[feature]), objective, query, qi,
                      table.images[top_idx], top_vals, top_pred, result, predicted, conf, sample_values, metrics)


# --------------------------------------------------------------------------------------------
# One notebook, two worlds: the digits (cpu, smoke) and a CLIP ViT + SAE + latent DiT (paper)
# --------------------------------------------------------------------------------------------

# Why a figure of the digits world is null at paper scale (metrics.json: <field> null, <field>_reason).
_NO_LABELS = ("the query images carry no concept labels at paper scale (the digits world measures selectivity "
              "for digit classes and stroke shapes of labelled training images)")
_NO_JUDGE = ("no judge classifier at paper scale (the digits world labels samples and real images with a "
             "separate digits classifier; the paper world loads none)")
_NO_VIT_LABELS = "the ViT's head does not name concepts (a CLIP ViT's head is an image embedding)"
_PAPER_REASONS = {
    "concept": _NO_LABELS, "selectivity": _NO_LABELS, "query_label": _NO_JUDGE,
    "sample_label_histogram": _NO_JUDGE, "real_label_histogram": _NO_JUDGE,
    "real_true_label_histogram": "the query images carry no labels",
    "sample_label_histogram_converged": _NO_JUDGE, "confidence_threshold": _NO_JUDGE,
    "sample_label_histogram_confident": _NO_JUDGE, "sample_confident_rate": _NO_JUDGE,
    "real_confident_rate": _NO_JUDGE, "start_confident_rate": _NO_JUDGE,
    "sample_vit_label_histogram": _NO_VIT_LABELS, "sample_vit_concept_rate": _NO_VIT_LABELS,
    "sample_concept_rate": _NO_LABELS, "real_concept_rate": _NO_LABELS,
    "sample_classes": _NO_JUDGE, "real_classes": _NO_JUDGE,
    "steps": "no sample reached τ within the step budget",
    "vit_test_accuracy": "the paper world has no labelled test set for the ViT",
    "classifier": _NO_JUDGE,
}


def _with_reasons(d: dict) -> dict:
    """``d`` plus ``<field>_reason`` for every field that is None and has no reason yet."""
    out = dict(d)
    for k, v in d.items():
        if v is None and f"{k}_reason" not in d and k in _PAPER_REASONS:
            out[f"{k}_reason"] = _PAPER_REASONS[k]
    return out


@dataclass
class PaperSAEInputs:
    """What the chapter's paper profile starts from: the prior, the ViT, its SAE and the user's images."""

    models: object  # equidiff.worlds.imagenet.models.PaperModels: prior, config, device (classifier None: no judge here)
    vit: nn.Module  # equidiff.worlds.imagenet.models.ImageNetInput around the timm ViT ([-1, 1] images in)
    sae: SparseAutoencoder
    layer: int  # the SAE reads the residual stream after vit.blocks[layer]
    images: torch.Tensor  # (N, 3, S, S) in [-1, 1], S = config.image_size
    files: list  # N paths

    @property
    def config(self):
        return self.models.config


def _paper_layer(sae: SparseAutoencoder, cfg, vit: nn.Module) -> int:
    """The ViT block the SAE reads: ``PaperConfig.sae_layer``, else the SAE config's hook layer."""
    hook = sae.hook_name
    if hook is not None and not re.fullmatch(r"blocks\.\d+\.hook_resid_post", str(hook)):
        raise ValueError(f"sae_path: the SAE reads {hook!r}; this chapter reads the residual stream after a ViT "
                         "block (blocks.<L>.hook_resid_post, the output of vit.blocks[L])")
    layer = cfg.sae_layer if cfg.sae_layer is not None else sae.layer
    if layer is None:
        raise ValueError("sae_layer: the SAE's config names no hook layer (hook_name / hook_layer); set "
                         "PaperConfig.sae_layer to the ViT block whose output it reads")
    check_compatible(sae, vit, layer)
    return int(layer)


def load_paper_sae(paper_config=None, query_images=None, *, batch_size=None, bf16=None, device=None,
                   ddim_steps=None) -> PaperSAEInputs:
    """Check the notebook's paper parameters and load, in this order (cheap checks first), the SAE
    (``PaperConfig.sae_path``, :func:`load_sae`), the ViT (:func:`equidiff.worlds.imagenet.models.load_vit`), the
    latent DiT prior and the query images (resized and centre-cropped to ``image_size``). Nothing
    downloads unless the config's ``allow_download``; a missing model raises
    :class:`equidiff.worlds.imagenet.models.ModelNotFoundError` naming it, where it looked and the fetch command."""
    from equidiff.worlds.imagenet.models import (AutocastPrior, PaperModels, load_latent_prior, load_query_images, load_vit,
                        paper_parameters, query_image_files, resolve_device)

    cfg = paper_parameters(paper_config, batch_size=batch_size, bf16=bf16, device=device, ddim_steps=ddim_steps)
    files = query_image_files(query_images)
    if cfg.sae_path is None:
        raise ValueError("sae_path: PaperConfig.sae_path must name a folder holding an SAE in the SAELens "
                         "(cfg.json + sae_weights.safetensors) or Prisma (config.json + one .safetensors) layout, "
                         "got None")
    dev = resolve_device(cfg.device)
    try:
        sae = load_sae(cfg.sae_path, device=dev)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"sae_path: {err}") from None
    vit = load_vit(cfg.vit_model, cfg.vit_path, cache_dir=cfg.cache_dir, allow_download=cfg.allow_download,
                   input_size=cfg.vit_input_size, model_kwargs=cfg.vit_kwargs, device=dev)
    layer = _paper_layer(sae, cfg, vit)
    prior = load_latent_prior(cfg.dit_model, cfg.dit_path, cache_dir=cfg.cache_dir, allow_download=cfg.allow_download,
                              num_steps=cfg.ddim_steps, checkpointing=cfg.checkpointing, clamp=cfg.clamp, device=dev)
    if cfg.bf16:
        prior = AutocastPrior(prior)
    images, files = load_query_images(files, size=cfg.image_size)
    return PaperSAEInputs(PaperModels(prior, None, cfg, dev, sae=sae), vit, sae, layer, images, files)


@torch.no_grad()
def _image_codes(vit: nn.Module, layer: int, sae: SparseAutoencoder, images: torch.Tensor, reduce: str,
                 batch: int, device) -> torch.Tensor:
    """Image-level SAE codes (N, d_sae) of RGB images in [-1, 1] (exact activations), on CPU."""
    out = []
    for i in range(0, len(images), batch):
        out.append(_reduce(encode_images(vit, layer, sae, images[i: i + batch].to(device)), reduce).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def _image_tokens(vit: nn.Module, layer: int, images: torch.Tensor, batch: int, device) -> tuple[torch.Tensor, int]:
    """Residual-stream tokens after ``blocks[layer]`` of every image, (N·T, d_in) on CPU, and T."""
    out = [_run_to_block(vit, layer, images[i: i + batch].to(device)).float().cpu()
           for i in range(0, len(images), batch)]
    t = torch.cat(out)  # (N, T, d_in)
    return t.reshape(-1, t.shape[-1]), int(t.shape[1])


def choose_paper_features(activations: torch.Tensor, features="auto", k: int = 3, min_rate: float = 0.05,
                          max_rate: float = 0.5, configured: Sequence[int] = ()) -> list[SelectedFeature]:
    """Features at paper scale, where there are no concept labels: a list of indices as given, or
    ``"auto"``: ``configured`` (``PaperConfig.sae_features``) when non-empty, else the ``k`` features
    with the highest mean activation over the query images among those active on a share of them in
    [``min_rate``, ``max_rate``] (sparse features, as the digits world's firing-rate window).
    ``activations``: (N, d_sae) image-level activations of the query images. Concept and selectivity
    are None (no labels)."""
    n, d = activations.shape
    rate = (activations > 0).float().mean(0)  # (d_sae,) share of query images on which each feature fires
    if isinstance(features, str) and features == "auto" and configured:
        if not all(_is_index(f) and f < d for f in configured):
            raise _bad("sae_features", tuple(configured), f"feature indices in [0, {d - 1}] (features of the SAE)")
        features = list(configured)
    if isinstance(features, str) and features == "auto":
        if not _is_int(k) or k < 1:
            raise _bad("k", k, "an integer ≥ 1")
        if not _is_num(min_rate) or not _is_num(max_rate) or not (0 <= min_rate < max_rate <= 1):
            raise _bad("min_rate, max_rate", (min_rate, max_rate), "numbers with 0 ≤ min_rate < max_rate ≤ 1")
        ok = (rate >= min_rate) & (rate <= max_rate) & (activations.amax(0) > 0)
        if not bool(ok.any()):
            raise ValueError(f"no SAE feature is active on a share of the {n} query images in [{min_rate}, {max_rate}] "
                             "(min_rate, max_rate); widen the range or give features as a list")
        score = torch.where(ok, activations.mean(0), torch.tensor(float("-inf")))
        order = torch.argsort(score, descending=True, stable=True)[: min(k, int(ok.sum()))]
        features = [int(f) for f in order]
    if not isinstance(features, (list, tuple)) or not features or not all(_is_index(f) and f < d for f in features):
        raise _bad("features", features, f"'auto' or a non-empty list of feature indices in [0, {d - 1}]")
    return [SelectedFeature(int(f), None, None, float(rate[int(f)])) for f in features]


def run_paper_feature(inputs: PaperSAEInputs, activations: torch.Tensor, selected: SelectedFeature, *,
                      objective: str = "feature", reduce: str = "cls", surrogate_gradient: bool = True,
                      n_samples: int = 32, steps: int = 512, ddim_steps: Optional[int] = None, tau: float = 0.01,
                      lr: float = 0.8, optimizer: str = "newton", lowpass_cutoff: Optional[float] = None,
                      n_top: int = 32, seed: int = 0) -> FeatureRun:
    """Thesis Section 4.3 / Figure 4.3 for one SAE feature at paper scale, with :func:`run_feature`'s
    metric names. The query x* is the user's image on which the feature is largest (``activations``:
    (N, d_sae) of the query images); the objective reads the SAE on the ViT's ``blocks[layer]``
    (bf16 autocast when configured); samples come from the latent DiT in batches of
    ``PaperConfig.batch_size``. Figures that need labels or a judge classifier are None with
    ``<field>_reason``; ``fid`` is the Inception FID against ``fid_reference`` (or the query images),
    None with ``fid_reason`` when Inception's weights are missing. ``ddim_steps`` must match the prior's."""
    from equidiff.core.invariants import InvariantConfig
    from equidiff.core.metrics import l1_l2
    from equidiff.worlds.imagenet.models import autocast_objective, fid_against_reference

    models, cfg = inputs.models, inputs.config
    if objective not in ("feature", "code"):
        raise _bad("objective", objective, "'feature' (the feature's activation) or 'code' (the full SAE code)")
    if not _is_int(n_samples) or n_samples < 1:
        raise _bad("n_samples", n_samples, "an integer ≥ 1")
    if ddim_steps is not None and ddim_steps != cfg.ddim_steps:
        raise _bad("ddim_steps", ddim_steps, f"the prior's T ({cfg.ddim_steps}): pass it to load_world")
    _check_reduce(reduce)
    feature = _features_list(selected.feature, inputs.sae.d_sae)[0]
    # Step 1: the query and the user's images that activate the feature most.
    top_vals, top_idx = torch.topk(activations[:, feature], min(n_top, len(activations)))
    qi = int(top_idx[0])
    query = inputs.images[qi: qi + 1]  # (1, 3, S, S)
    # Step 2: the objective.
    name = cfg.vit_model
    if objective == "feature":
        obj = sae_feature(inputs.vit, inputs.layer, inputs.sae, feature, reduce, name, surrogate_gradient)
    else:
        obj = sae_code(inputs.vit, inputs.layer, inputs.sae, reduce, name, surrogate_gradient)
    if cfg.bf16:
        obj = autocast_objective(obj)
    # Step 3: EquiDiff (Algorithm 1) through the latent DiT.
    icfg = InvariantConfig(n_samples=n_samples, steps=steps, tau=tau, optimizer=optimizer, lr=lr, seed=seed,
                           lowpass_cutoff=lowpass_cutoff)
    result = models.find_invariants(obj, query, icfg)
    # Step 4: metrics, with the names of run_feature's.
    _, l2 = l1_l2(result.measurements.float().cpu(), result.target.float().cpu())  # (N,)
    x = result.x.detach().clamp(-1, 1).float()
    single = sae_feature(inputs.vit, inputs.layer, inputs.sae, feature, reduce, surrogate_gradient=False)
    with torch.no_grad():
        sample_values = torch.cat([single(x[i: i + cfg.batch_size].to(models.device))[:, 0].float().cpu()
                                   for i in range(0, len(x), cfg.batch_size)])
    fid = fid_against_reference(models, x.cpu(), inputs.images, f"FID, SAE feature #{feature}")
    done = result.steps_to_converge[result.converged].float()
    target = result.target.float().cpu()
    metrics = {
        "feature": feature, "concept": None, "selectivity": None, "firing_rate": selected.firing_rate,
        "objective": objective, "reduce": reduce, "m": int(target.numel()), "query_index": qi, "query_label": None,
        "target_activation": float(top_vals[0]), "n_samples": n_samples,
        "l2_mean": float(l2.mean()), "l2_std": float(l2.std()) if n_samples > 1 else 0.0,
        "l2_median": float(l2.median()), "l2_max": float(l2.max()),
        "l2_relative": float(l2.mean() / (target**2).sum().clamp(min=1e-12)),
        "success_rate": result.success_rate, "steps": float(done.median()) if done.numel() else None,
        "seconds": result.seconds,
        **{k: None for k in ("sample_label_histogram", "real_label_histogram", "real_true_label_histogram",
                             "sample_label_histogram_converged", "confidence_threshold",
                             "sample_label_histogram_confident", "sample_confident_rate", "real_confident_rate",
                             "start_confident_rate", "sample_vit_label_histogram", "sample_vit_concept_rate")},
        "n_top": int(len(top_idx)), "sample_concept_rate": None, "real_concept_rate": None,
        "sample_classes": None, "real_classes": None,
        "sample_activation_mean": float(sample_values.mean()),
        # paper only: where the numbers come from
        "query_file": str(inputs.files[qi]),
        "firing_rate_images": f"the {len(activations)} query images",
        "fid": fid.value, "fid_reason": fid.reason, "fid_features": fid.features, "fid_note": fid.note,
        "fid_n_reference": fid.n_reference,
    }
    return FeatureRun(feature, None, None, selected.firing_rate, objective, query, qi, inputs.images[top_idx],
                      top_vals, None, result, None, None, sample_values, _with_reasons(metrics))


def _paper_feature_figure(runs: Sequence[FeatureRun], n_real: int = 8, cols: int = 8):
    """Figure 4.3 at paper scale: per feature, the top-activating query images (left) and the invariant
    samples with their loss (right; red frame: above τ). No labels: there is no judge classifier."""
    from equidiff.report.figures.common import pyplot, red_frame, show_image

    plt = pyplot()
    real_cols = 4
    heights = [max(int(np.ceil(len(r.result.x) / cols)), int(np.ceil(min(n_real, len(r.top_images)) / real_cols)))
               for r in runs]
    fig = plt.figure(figsize=(1.05 * (cols + real_cols) + 0.6, 1.3 * sum(heights) + 0.75 * len(runs)),
                     constrained_layout=True)
    sub = fig.subfigures(len(runs), 1, height_ratios=[h + 0.6 for h in heights], squeeze=False)[:, 0]
    for sf, run, h in zip(sub, runs, heights):
        left, right = sf.subfigures(1, 2, width_ratios=[real_cols, cols + 0.6])
        res, k = run.result, min(n_real, len(run.top_images))
        gl, gr = left.add_gridspec(h, real_cols), right.add_gridspec(h, cols)
        for i in range(k):
            show_image(left.add_subplot(gl[i // real_cols, i % real_cols]), run.top_images[i],
                 f"{float(run.top_values[i]):.2f}", fontsize=6.5)
        left.suptitle(f"real: top {k} query images", fontsize=9)
        for i in range(len(res.x)):
            ax = right.add_subplot(gr[i // cols, i % cols])
            show_image(ax, res.x[i].clamp(-1, 1), f"{float(res.loss[i]):.0e}", fontsize=6.5)  # unclamped in the loop
            if not bool(res.converged[i]):
                red_frame(ax)
        what = "its activation" if run.objective == "feature" else "the full SAE code"
        right.suptitle(f"feature #{run.feature} (target {run.metrics['target_activation']:.2f}): {len(res.x)} "
                       f"invariant samples of {what}, {int(res.converged.sum())} below τ = {res.config.tau:g}",
                       fontsize=9)
    return fig


class SAEWorld:
    """The chapter's models and images behind one interface, so the notebook runs the same cells in
    every profile. ``"cpu"``/``"smoke"``: the digits ViT, its SAE (trained here and cached), the digits
    classifier as judge and the digits DDPM — exactly the calls the chapter always made; ``"paper"``:
    a timm ViT, an SAE from ``PaperConfig.sae_path``, the latent DiT and the user's query images
    (:func:`load_paper_sae`), with no concept labels and no judge: those figures are None with a reason."""

    def __init__(self, profile: str, *, vit=None, classifier=None, ddpm=None, trained=None, presets=None,
                 paper: Optional[PaperSAEInputs] = None):
        self.profile, self.vit, self.classifier, self.ddpm, self.trained = profile, vit, classifier, ddpm, trained
        self.presets = presets or {}  # cpu: the zoo preset names of the ViT, classifier and DDPM
        self.paper = paper
        self.table = None  # cpu: the FeatureTable over the training digits (after choose)
        self.activations = None  # paper: (N, d_sae) image-level activations of the query images (after choose)

    @property
    def is_paper(self) -> bool:
        return self.paper is not None

    @property
    def sae(self) -> SparseAutoencoder:
        return self.paper.sae if self.is_paper else self.trained.sae

    @property
    def layer(self) -> int:
        return self.paper.layer if self.is_paper else self.trained.config.layer

    @property
    def expansion(self):
        """d_sae / d_in (an int when it divides, as SAELens' and Prisma's expansion factor)."""
        if not self.is_paper:
            return self.trained.config.expansion
        d_sae, d_in = self.sae.d_sae, self.sae.d_in
        return d_sae // d_in if d_sae % d_in == 0 else d_sae / d_in

    def quality_report(self) -> dict:
        """cpu: :func:`quality_report` on the digits; paper: the same figures on the query images' tokens."""
        if not self.is_paper:
            return quality_report(self.vit.model, self.layer, self.sae)
        p = self.paper
        tokens, per_image = _image_tokens(p.vit, p.layer, p.images, p.config.batch_size, p.models.device)
        q = evaluate_sae(self.sae, tokens.to(p.models.device))
        return {"variance_explained": q["variance_explained"], "l0": q["l0"], "dead_fraction": q["dead_fraction"],
                "tokens_per_image": per_image, "n_test_tokens": q["n_tokens"], "d_in": self.sae.d_in,
                "d_sae": self.sae.d_sae, "kind": self.sae.kind, "k": self.sae.k, "layer": self.layer,
                "evaluated_on": f"every token of the {len(p.images)} query images (the digits world: held-out test "
                                "digits); dead_fraction counts features silent on these tokens only"}

    def summary(self, quality: dict) -> str:
        """The chapter's two lines about the models and the SAE's quality."""
        q, s = quality, self.sae
        if not self.is_paper:
            vit, clf = self.presets["vit"], self.presets["classifier"]
            head = (f"ViT {vit}: test accuracy {self.vit.info['test_accuracy']:.3f}; classifier {clf}: "
                    f"{self.classifier.info['test_accuracy']:.3f}")
        else:
            c = self.paper.config
            head = (f"ViT {c.vit_model}; SAE {c.sae_path} ({s.hook_name or f'blocks.{self.layer}'}, trained on "
                    f"{s.model_name or 'an unnamed model'}); prior {c.dit_model}; {len(self.paper.images)} query images")
        return head + (f"\nSAE ({s.kind}, d_sae = {s.d_sae}, block {self.layer}): variance explained "
                       f"{q['variance_explained']:.3f}, L0 {q['l0']:.1f} of {s.d_sae}, dead {q['dead_fraction']:.3f}")

    def choose(self, features="auto", concept_set: str = "digits", k: int = 2, min_rate: float = 0.02,
               max_rate: float = 0.5, readout: str = "cls") -> list[SelectedFeature]:
        """cpu: :func:`feature_table` over the training digits, then :func:`choose_features`; paper: the
        query images' activations, then :func:`choose_paper_features` (``concept_set`` is the digits')."""
        if not self.is_paper:
            from equidiff.worlds.digits.models import load_digits16

            train_x, train_y = load_digits16("train")
            self.table = feature_table(self.vit.model, self.layer, self.sae, train_x, train_y, reduce=readout)
            return choose_features(self.table, features, concept_set, k=k, min_rate=min_rate, max_rate=max_rate)
        if readout == "tokens" or readout not in REDUCTIONS:
            raise _bad("readout", readout, "'mean', 'max' or 'cls' (one value per image and feature)")
        p = self.paper
        self.activations = _image_codes(p.vit, p.layer, p.sae, p.images, readout, p.config.batch_size, p.models.device)
        return choose_paper_features(self.activations, features, k, min_rate, max_rate, p.config.sae_features)

    def features_html(self, chosen: Sequence[SelectedFeature]) -> str:
        if not self.is_paper:
            return features_html(self.table, chosen)
        from equidiff.chapters.neurons import html_table

        rows = []
        for s in chosen:
            a = self.activations[:, s.feature]
            i = int(a.argmax())
            rows.append((f"#{s.feature}", f"{float(a.mean()):.3f}", f"{s.firing_rate:.3f}", f"{float(a[i]):.3f}",
                         Path(self.paper.files[i]).name))
        n = len(self.activations)
        note = (f"mean activation and firing rate (share of images on which the feature is active) over the {n} "
                "query images; no concept or selectivity: the query images carry no labels.")
        return html_table(("Feature", "mean activation", "firing rate", "top activation", "top image"), rows, note)

    def top_images_figure(self, chosen: Sequence[SelectedFeature], n: int = 8):
        from equidiff.report import figures as plots

        if not self.is_paper:
            return plots.sae_top_images(top_image_rows(self.table, chosen, n=n))
        rows = []
        for s in chosen:
            vals, idx = torch.topk(self.activations[:, s.feature], min(n, len(self.activations)))
            rows.append({"feature": s.feature, "firing_rate": s.firing_rate, "images": self.paper.images[idx],
                         "values": vals, "indices": idx})
        return plots.sae_top_images(rows, cols=n)

    def run(self, selected: SelectedFeature, **kwargs) -> FeatureRun:
        """:func:`run_feature` (cpu, smoke) or :func:`run_paper_feature` (paper) for one chosen feature."""
        if self.table is None and self.activations is None:
            raise RuntimeError("choose the features first (SAEWorld.choose), which measures them on the images")
        if not self.is_paper:
            return run_feature(self.vit, self.layer, self.sae, self.classifier, self.ddpm, self.table,
                               selected.feature, concept=selected.concept, **kwargs)
        return run_paper_feature(self.paper, self.activations, selected, **kwargs)

    def run_line(self, run: FeatureRun) -> str:
        m = run.metrics
        what = f" ({run.concept})" if run.concept is not None else ""
        return (f"#{run.feature}{what}: {m['success_rate']:.2f} below τ, L2 {m['l2_mean']:.2g} ± {m['l2_std']:.2g} "
                f"(target f(x*) = {m['target_activation']:.3g}), {m['seconds']:.0f} s")

    def runs_html(self, runs: Sequence[FeatureRun], tau: float) -> str:
        if not self.is_paper:
            return runs_html(runs, tau)
        from equidiff.chapters.neurons import html_table

        f = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
        rows = [(f"#{r.feature}", f"{r.metrics['target_activation']:.3g}",
                 f"{r.metrics['l2_mean']:.2g} ± {r.metrics['l2_std']:.2g}", f"{r.metrics['l2_relative']:.2g}",
                 f"{r.metrics['success_rate']:.2f}", f"{r.metrics['sample_activation_mean']:.3g}",
                 f(r.metrics["fid"], ".1f")) for r in runs]
        reasons = sorted({r.metrics["fid_reason"] for r in runs if r.metrics.get("fid_reason")})
        note = (f"L2 = Σ(L(x) − L(x*))² per sample (the Algorithm 1 loss), mean ± standard deviation; relative: mean "
                f"L2 / Σ L(x*)²; τ = {tau:g}. FID in Inception-v3 pool features against the query images (or "
                "PaperConfig.fid_reference). No concept rates: there are no labels and no judge classifier at paper "
                "scale." + (" FID not computed: " + " ".join(reasons) if reasons else ""))
        return html_table(("Feature", "target f(x*)", "L2", "L2 relative", "below τ", "sample activation (mean)",
                           "FID"), rows, note)

    def feature_figure(self, runs: Sequence[FeatureRun]):
        from equidiff.report import figures as plots

        return _paper_feature_figure(runs) if self.is_paper else plots.sae_feature_figure(runs)

    def label_histograms(self, runs: Sequence[FeatureRun]):
        """cpu: :func:`equidiff.report.figures.sae_label_histograms`; paper: None (no labels; :meth:`label_lines` says why)."""
        from equidiff.report import figures as plots

        return None if self.is_paper else plots.sae_label_histograms(runs)

    def label_lines(self, runs: Sequence[FeatureRun]) -> str:
        if self.is_paper:
            return f"no label histograms at paper scale: {_NO_JUDGE}."
        return "\n".join(f"#{r.feature} ({r.concept}): real top {r.metrics['n_top']} "
                         f"{r.metrics['real_label_histogram']}, samples {r.metrics['sample_label_histogram']}"
                         for r in runs)

    def realism_lines(self, runs: Sequence[FeatureRun]) -> str:
        if not self.is_paper:
            return "\n".join(realism_summary(r) for r in runs)
        return "\n".join(f"#{r.feature}: the samples' activation {r.metrics['sample_activation_mean']:.3g} (mean) "
                         f"against the query's {r.metrics['target_activation']:.3g}; {_NO_JUDGE}" for r in runs)

    def models_summary(self) -> dict:
        if not self.is_paper:
            return {"vit": self.presets["vit"], "vit_test_accuracy": self.vit.info["test_accuracy"],
                    "classifier": self.presets["classifier"], "ddpm": self.presets["ddpm"],
                    "sae_folder": self.trained.path.name}
        c = self.paper.config
        return _with_reasons({"vit": c.vit_model, "vit_test_accuracy": None, "classifier": None, "ddpm": c.dit_model,
                              "sae_folder": Path(c.sae_path).name, "sae_path": c.sae_path,
                              "sae_hook_name": self.sae.hook_name, "sae_model_name": self.sae.model_name})

    def paper_metrics(self) -> dict:
        """Extra metrics.json fields of the paper profile (the config, the device, the query files); {} otherwise."""
        if not self.is_paper:
            return {}
        return {"paper_config": self.paper.config.to_dict(), "device": str(self.paper.models.device),
                "query_images": [str(f) for f in self.paper.files]}


def load_world(profile: str = "cpu", *, vit_preset: str = "digits-vit", classifier_preset: str = "digits-classifier",
               ddpm_preset: str = "digits-ddpm", layer: int = 2, sae_kind: str = "relu", expansion: int = 4,
               sae_steps: int = 3000, seed: int = 0, paper_config=None, query_images=None, batch_size=None,
               bf16=None, device=None, ddim_steps=None) -> SAEWorld:
    """The chapter's world for ``profile``. cpu/smoke: the zoo presets and the SAE trained (or read from
    the cache) for ``layer``, ``sae_kind``, ``expansion``, ``sae_steps`` and ``seed``; the paper
    parameters must stay None. paper: :func:`load_paper_sae` (the SAE's layer, kind and width come from
    its folder; the digits parameters are not used; ``ddim_steps``: the latent chain's T)."""
    resolve_profile(profile)
    if profile != "paper":
        from equidiff.worlds.imagenet.models import reject_paper_parameters
        from equidiff.worlds.digits.models import get_model

        reject_paper_parameters(profile, paper_config=paper_config, query_images=query_images,
                                batch_size=batch_size, bf16=bf16, device=device)
        vit = get_model(vit_preset, progress=False)
        clf = get_model(classifier_preset, progress=False)
        ddpm = get_model(ddpm_preset, progress=False)
        trained = get_sae(SAETrainConfig(vit=vit_preset, layer=layer, kind=sae_kind, expansion=expansion,
                                         train_steps=sae_steps, seed=seed), progress=False)
        return SAEWorld(profile, vit=vit, classifier=clf, ddpm=ddpm, trained=trained,
                        presets={"vit": vit_preset, "classifier": classifier_preset, "ddpm": ddpm_preset})
    inputs = load_paper_sae(paper_config, query_images, batch_size=batch_size, bf16=bf16, device=device,
                            ddim_steps=ddim_steps)
    return SAEWorld(profile, paper=inputs)
