"""The paper world's settings: the models it names and :class:`PaperConfig` (thesis Section 4.1.1, Appendix .3).

:func:`paper_parameters` turns a notebook's paper parameters (``paper_config`` as None, a JSON file
or a dict, plus ``batch_size``, ``bf16``, ``device``, ``ddim_steps``) into a checked
:class:`PaperConfig`; every bad value raises ``ValueError`` naming the parameter or field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from equidiff._validate import bad as _bad, is_int as _is_int

__all__ = ["PAPER_NEURONS", "DIT_MODEL", "CLASSIFIER_MODEL", "INCEPTION_MODEL", "VIT_MODEL", "PaperConfig",
           "paper_parameters"]

# Thesis Section 4.2.1: ResNet-50 last-stage neurons and the concepts SemanticLens gave them.
PAPER_NEURONS = {1656: "zebra striping", 1052: "honeycomb", 421: "gyromitra"}
DIT_MODEL = "facebook/DiT-XL-2-256"  # diffusers' DiT: the stand-in for the thesis' LightningDiT
CLASSIFIER_MODEL = "resnet50.a1_in1k"  # timm's default pretrained resnet50 (the thesis does not name its weights)
INCEPTION_MODEL = "inception_v3.tv_in1k"  # torchvision's Inception-v3 weights, as timm ships them
# The ViT of the SAE chapter: timm's CLIP ViT-B/32 trained on DataComp-XL, the model Prisma's CLIP-B/32 SAEs
# read (open_clip laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K). The thesis names neither its ViT nor its SAE.
VIT_MODEL = "vit_base_patch32_clip_224.datacompxl"


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
