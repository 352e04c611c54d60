"""The sparse autoencoder (SAE) of thesis Section 4.3, in SAELens' and Prisma's conventions and file formats.

* **The model** (:class:`SparseAutoencoder`): ``encode(x) = act((x − b_dec) W_enc + b_enc)``,
  ``decode(f) = f W_dec + b_dec`` with ``W_enc`` ``[d_in, d_sae]``, ``W_dec`` ``[d_sae, d_in]`` whose rows
  (the feature directions) have unit norm; ``act`` is a ReLU (trained with an L1 penalty) or TopK (the k
  largest pre-activations, ReLU'd, the rest zero; Gao et al., 2024).
* **On disk** an SAE is the SAELens layout — ``cfg.json`` (``d_in``, ``d_sae``, ``architecture``, ``k``,
  ...) and ``sae_weights.safetensors`` (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``). :func:`load_sae` reads
  that, and Prisma's ``config.json`` variant (the thesis loads its CLIP SAEs with Prisma [Joseph et al.,
  2025]); the SAEs trained in this project are cached in the same format and read back through the same
  function. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from equidiff._validate import bad, is_int

__all__ = ["SAE_KINDS", "WEIGHT_KEYS", "SAE_CFG_FILENAME", "SAE_WEIGHTS_FILENAME", "PRISMA_CFG_FILENAME",
           "SparseAutoencoder", "parse_config", "load_sae"]

SAE_KINDS = ("relu", "topk")  # ReLU + L1 penalty, or TopK (Gao et al., 2024)
SAE_CFG_FILENAME = "cfg.json"  # SAELens' config file name
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"  # SAELens' weights file name
PRISMA_CFG_FILENAME = "config.json"  # Prisma's (and Hugging Face's) config file name
WEIGHT_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")


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
        if not is_int(d_in) or d_in < 1:
            raise bad("d_in", d_in, "an integer ≥ 1")
        if not is_int(d_sae) or d_sae < 1:
            raise bad("d_sae", d_sae, "an integer ≥ 1")
        if kind not in SAE_KINDS:
            raise bad("kind", kind, f"one of {SAE_KINDS}")
        if kind == "topk" and (not is_int(k) or not (1 <= k <= d_sae)):
            raise bad("k", k, f"an integer in [1, {d_sae}] (d_sae) for a TopK SAE")
        if kind == "relu" and k is not None:
            raise bad("k", k, "None for a ReLU SAE (k belongs to TopK)")
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


def parse_config(cfg: dict, source: str) -> dict:
    """Normalise an SAELens / Prisma config dict to :class:`SparseAutoencoder`'s arguments; ``source``
    (the file) names where a bad key came from."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{source} must hold a JSON object, got {type(cfg).__name__}")
    d_in = cfg.get("d_in")
    if not is_int(d_in) or d_in < 1:
        raise ValueError(f"{source}: key 'd_in' must be an integer ≥ 1, got {d_in!r} (keys: {sorted(cfg)})")
    d_sae = cfg.get("d_sae")
    if d_sae is None and is_int(cfg.get("expansion_factor")):  # Prisma: d_sae = d_in × expansion_factor
        d_sae = d_in * cfg["expansion_factor"]
    if not is_int(d_sae) or d_sae < 1:
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
        if not is_int(k) or not (1 <= k <= d_sae):
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
            "hook_name": hook, "layer": layer if is_int(layer) else None,
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
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE folder {folder} does not exist")
    cfg_path = _config_file(folder)
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    args = parse_config(raw, str(cfg_path))
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
