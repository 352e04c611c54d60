"""The recipes of the embedded digits world's models: configs, presets, builders and deterministic training.

* **Diffusion prior** — a small pixel-space diffusers ``UNet2DModel`` trained as a DDPM
  (ε-prediction MSE) with diffusers' ``DDPMScheduler`` (1000 steps, cosine betas,
  ``clip_sample=True``), AdamW and an exponential moving average of the weights (diffusers'
  ``EMAModel``; the EMA weights are the ones saved). Seeded random shifts are available
  (``max_shift``, never flips: digits are not flip-invariant) but off by default: the digits
  are centred, and at this budget shifts cost more sample quality than they bought.
  Samples are in [-1, 1]. A DDIM chain inherits ``timestep_spacing="leading"`` (10 steps: t = 900,
  ..., 0). "trailing" (t = 999 first: ᾱ ≈ 0, the x0 estimate mostly clipped) lifts the unoptimised
  confident share a little (first prior 0.849 vs 0.815; current, trained under "trailing" and then
  relabelled, as training never reads the field: 0.906 vs 0.887) but starves z_T of gradient: neuron
  #40 reaches τ with 16 % vs 84 % of samples (first prior, budget 400) and 0 % vs 75 % (current, 300).
* **Classifier** — a small timm ResNet (``timm.models.resnet.ResNet``, ``pretrained=False``;
  BasicBlocks, SiLU activations, not in-place) whose stem runs at stride 1 without max-pool,
  so on 16×16 inputs its four stages run at 16, 8, 4 and 4 pixels (the last one dilated,
  timm's ``output_stride``): the last stage ``model.layer4`` — the "neuron" layer of later
  chapters; pre-activation = input of ``model.layer4[-1].act2`` — is a ``(B, 128, 4, 4)``
  map. It takes images in [-1, 1], the range of the diffusion samples. Besides cross-entropy
  on the digits it is trained towards the uniform distribution on synthetic non-digits
  (noise, blobs, constant images, pixel-shuffled digits: "outlier exposure"), so it is not
  confident on noise — without that, 48% of pure-noise images got confidence ≥ 0.9.
* **ViT** — a small timm ``VisionTransformer`` (``pretrained=False``; 4×4-pixel patches, so 16
  patch tokens plus a class token, 4 blocks of width 64) trained with cross-entropy on the digits
  (random 1-pixel shifts): the model whose residual stream the sparse autoencoders of
  :mod:`equidiff.sae` read (thesis Section 4.3). Test accuracy 0.978 after 1,200 steps
  (≈ 1.5 minutes on one CPU core).

Presets live in :data:`PRESETS` (name -> config constructor, as DiT's ``DiT_models``); the
``*-tiny`` presets train in about a second and exist for tests. All randomness of a training run
comes from its config's ``seed`` (:mod:`equidiff.training`): the same config gives the same
weights. :mod:`equidiff.worlds.digits.models` caches the trained models.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from equidiff._validate import bad as _bad, is_int as _is_int, is_num as _is_num
from equidiff.training import Batches, deterministic, load_checkpoint, lr_lambda, progress_bar, save_checkpoint
from equidiff.worlds.digits.data import IMAGE_SIZE, NUM_CLASSES, load_digits16, shift_augment, synthetic_outliers

__all__ = [
    "CODE_VERSION",
    "DDPMConfig",
    "ClassifierConfig",
    "ViTConfig",
    "PRESETS",
    "build_unet",
    "build_scheduler",
    "build_classifier",
    "build_vit",
    "train_ddpm",
    "train_classifier",
    "train_vit",
    "classifier_accuracy",
]

CODE_VERSION = "2"  # bump when training code or data changes the weights (2: real MNIST digits)
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_SPACINGS = ("leading", "trailing", "linspace")
_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


def _not_inplace(cls):
    """``cls`` ignoring timm's ``inplace=True``: in-place activations would overwrite tensors hooks hold."""

    class NotInplace(cls):
        def __init__(self, inplace: bool = False, **kwargs):
            super().__init__(**kwargs)

    NotInplace.__name__ = NotInplace.__qualname__ = cls.__name__
    return NotInplace


# module-level names, so that models holding them pickle (the neuron chapter sends models to worker processes)
SiLU, ReLU, GELU = _not_inplace(nn.SiLU), _not_inplace(nn.ReLU), _not_inplace(nn.GELU)
_NOT_INPLACE = {"silu": SiLU, "relu": ReLU, "gelu": GELU}


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def _check_channels(name: str, value) -> tuple:
    if not isinstance(value, (tuple, list)) or not value or not all(_is_int(c) and c >= 1 for c in value):
        raise _bad(name, value, "a non-empty tuple of integers ≥ 1")
    return tuple(value)


def _check_common_training(cfg) -> None:
    if not _is_int(cfg.train_steps) or cfg.train_steps < 1:
        raise _bad("train_steps", cfg.train_steps, "an integer ≥ 1")
    if not _is_int(cfg.batch_size) or cfg.batch_size < 1:
        raise _bad("batch_size", cfg.batch_size, "an integer ≥ 1")
    if not _is_num(cfg.lr) or cfg.lr <= 0:
        raise _bad("lr", cfg.lr, "a finite number > 0")
    if not _is_int(cfg.warmup_steps) or cfg.warmup_steps < 0:
        raise _bad("warmup_steps", cfg.warmup_steps, "an integer ≥ 0")
    if not _is_num(cfg.weight_decay) or cfg.weight_decay < 0:
        raise _bad("weight_decay", cfg.weight_decay, "a finite number ≥ 0")
    if not _is_int(cfg.max_shift) or not (0 <= cfg.max_shift <= IMAGE_SIZE // 4):
        raise _bad("max_shift", cfg.max_shift, f"an integer in [0, {IMAGE_SIZE // 4}] (pixels)")
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise _bad("seed", cfg.seed, "an integer ≥ 0")


@dataclass
class DDPMConfig:
    """A pixel-space DDPM on the 16×16 digits. Every field is validated; a bad value raises ``ValueError``."""

    # --- UNet2DModel architecture ---
    block_out_channels: tuple = (32, 64, 128)  # channels per resolution level (16, 8, 4 pixels); one level per entry
    attention: tuple = (False, False, False)  # self-attention in that level's down/up blocks (the 4×4 mid block always has one)
    layers_per_block: int = 1  # ResNet blocks per down block (up blocks get one more)
    norm_num_groups: int = 8  # GroupNorm groups; must divide every entry of block_out_channels
    # --- DDPMScheduler (the noise schedule; a DDIM sampler is built from its config) ---
    num_train_timesteps: int = 1000  # diffusion steps of the forward process
    beta_schedule: str = "squaredcos_cap_v2"  # "linear", "scaled_linear" or "squaredcos_cap_v2" (cosine)
    timestep_spacing: str = "leading"  # k-step sampler: "leading" (900, ..., 0), "trailing", "linspace"; see the module docstring
    # --- training (ε-prediction MSE, AdamW, linear warm-up + cosine decay) ---
    train_steps: int = 16000  # optimiser steps (256 epochs of the 4,000 training digits at batch 64)
    batch_size: int = 64  # images per step
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 200  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max global gradient norm (> 0)
    ema_decay: float = 0.999  # EMA of the weights (diffusers EMAModel), in [0, 1); 0 = no EMA
    max_shift: int = 0  # random shift augmentation, pixels in each direction (0 = none; never flips)
    seed: int = 0  # seeds weight init, batch order, noise, timesteps and shifts

    def __post_init__(self):
        self.block_out_channels = _check_channels("block_out_channels", self.block_out_channels)
        if not isinstance(self.attention, (tuple, list)) or not all(isinstance(a, bool) for a in self.attention):
            raise _bad("attention", self.attention, "a tuple of True/False, one per entry of block_out_channels")
        self.attention = tuple(self.attention)
        if len(self.attention) != len(self.block_out_channels):
            raise _bad(
                "attention", self.attention,
                f"a tuple of {len(self.block_out_channels)} True/False (one per entry of block_out_channels)",
            )
        if 2 ** (len(self.block_out_channels) - 1) > IMAGE_SIZE:
            raise _bad("block_out_channels", self.block_out_channels, f"at most {int(math.log2(IMAGE_SIZE)) + 1} levels")
        if not _is_int(self.layers_per_block) or self.layers_per_block < 1:
            raise _bad("layers_per_block", self.layers_per_block, "an integer ≥ 1")
        if not _is_int(self.norm_num_groups) or self.norm_num_groups < 1 or any(
            c % self.norm_num_groups for c in self.block_out_channels
        ):
            raise _bad(
                "norm_num_groups", self.norm_num_groups,
                f"an integer ≥ 1 dividing every entry of block_out_channels {self.block_out_channels}",
            )
        if not _is_int(self.num_train_timesteps) or not (2 <= self.num_train_timesteps <= 4000):
            raise _bad("num_train_timesteps", self.num_train_timesteps, "an integer in [2, 4000]")
        if self.beta_schedule not in _BETA_SCHEDULES:
            raise _bad("beta_schedule", self.beta_schedule, f"one of {_BETA_SCHEDULES}")
        if self.timestep_spacing not in _SPACINGS:
            raise _bad("timestep_spacing", self.timestep_spacing, f"one of {_SPACINGS}")
        _check_common_training(self)
        if not _is_num(self.grad_clip) or self.grad_clip <= 0:
            raise _bad("grad_clip", self.grad_clip, "a finite number > 0")
        if not _is_num(self.ema_decay) or not (0 <= self.ema_decay < 1):
            raise _bad("ema_decay", self.ema_decay, "a number in [0, 1) (0 = no EMA)")


@dataclass
class ClassifierConfig:
    """A timm ResNet for the 16×16 digits. Every field is validated; a bad value raises ``ValueError``."""

    # --- architecture (timm.models.resnet.ResNet, BasicBlocks, deep 3×3 stem at stride 1, no max-pool) ---
    channels: tuple = (16, 32, 64, 128)  # channels of the 4 stages (stem: channels[0] // 2, then channels[0]); first even
    layers: tuple = (1, 1, 1, 1)  # BasicBlocks per stage (4 entries)
    last_stage_size: int = 4  # side of the last stage's map: 2, 4 or 8 (stages at 16, 8, 4, then 2 or dilated 4 / 8)
    act: str = "silu"  # activation: "silu" (smooth, no dead zones for gradients), "relu" or "gelu"
    # --- training (cross-entropy, AdamW, linear warm-up + cosine decay) ---
    train_steps: int = 1500  # optimiser steps (24 epochs of the 4,000 training digits)
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # peak learning rate
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.05  # AdamW weight decay
    label_smoothing: float = 0.0  # cross-entropy label smoothing in [0, 1)
    outlier_weight: float = 0.5  # ≥ 0: weight of outlier exposure (cross-entropy to uniform on non-digits); 0 = off
    outlier_batch: int = 16  # ≥ 1: synthetic non-digits per step (see synthetic_outliers)
    max_shift: int = 2  # random shift augmentation, pixels in each direction (0 = none; never flips)
    seed: int = 0  # seeds weight init, batch order and shifts

    def __post_init__(self):
        self.channels = _check_channels("channels", self.channels)
        if len(self.channels) != 4:
            raise _bad("channels", self.channels, "a tuple of 4 integers ≥ 1 (timm's ResNet has 4 stages)")
        if self.channels[0] % 2:
            raise _bad("channels", self.channels, "a tuple whose first entry is even (the stem is channels[0] // 2 wide)")
        if (
            not isinstance(self.layers, (tuple, list))
            or len(self.layers) != 4
            or not all(_is_int(n) and n >= 1 for n in self.layers)
        ):
            raise _bad("layers", self.layers, "a tuple of 4 integers ≥ 1 (BasicBlocks per stage)")
        self.layers = tuple(self.layers)
        if not _is_int(self.last_stage_size) or self.last_stage_size not in (2, 4, 8):
            raise _bad("last_stage_size", self.last_stage_size, "one of (2, 4, 8)")
        if self.act not in _ACTIVATIONS:
            raise _bad("act", self.act, f"one of {tuple(_ACTIVATIONS)}")
        _check_common_training(self)
        if not _is_num(self.label_smoothing) or not (0 <= self.label_smoothing < 1):
            raise _bad("label_smoothing", self.label_smoothing, "a number in [0, 1)")
        if not _is_num(self.outlier_weight) or self.outlier_weight < 0:
            raise _bad("outlier_weight", self.outlier_weight, "a finite number ≥ 0 (0 = no outlier exposure)")
        if not _is_int(self.outlier_batch) or self.outlier_batch < 1:
            raise _bad("outlier_batch", self.outlier_batch, "an integer ≥ 1")


@dataclass
class ViTConfig:
    """A small timm VisionTransformer for the 16×16 digits (the SAE chapter's model, thesis Section 4.3).

    Every field is validated; a bad value raises ``ValueError``.
    """

    # --- architecture (timm.models.vision_transformer.VisionTransformer, class token, pretrained=False) ---
    patch_size: int = 4  # side of a patch in pixels: 2, 4 or 8 (16 / patch_size patches per side, plus the class token)
    embed_dim: int = 64  # width of the residual stream (the SAE's d_in); a multiple of num_heads
    depth: int = 4  # transformer blocks (model.blocks[0] ... model.blocks[depth - 1])
    num_heads: int = 4  # attention heads per block
    mlp_ratio: float = 2.0  # hidden width of each block's MLP, in units of embed_dim (> 0)
    # --- training (cross-entropy, AdamW, linear warm-up + cosine decay) ---
    train_steps: int = 2500  # optimiser steps (40 epochs of the 4,000 training digits)
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # peak learning rate
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.05  # AdamW weight decay
    label_smoothing: float = 0.0  # cross-entropy label smoothing in [0, 1)
    max_shift: int = 1  # random shift augmentation, pixels in each direction (0 = none; never flips)
    seed: int = 0  # seeds weight init, batch order and shifts

    def __post_init__(self):
        if not _is_int(self.patch_size) or self.patch_size not in (2, 4, 8):
            raise _bad("patch_size", self.patch_size, "one of (2, 4, 8) (pixels; it must divide 16)")
        if not _is_int(self.num_heads) or self.num_heads < 1:
            raise _bad("num_heads", self.num_heads, "an integer ≥ 1")
        if not _is_int(self.embed_dim) or self.embed_dim < 1 or self.embed_dim % self.num_heads:
            raise _bad("embed_dim", self.embed_dim, f"an integer ≥ 1 divisible by num_heads ({self.num_heads})")
        if not _is_int(self.depth) or self.depth < 1:
            raise _bad("depth", self.depth, "an integer ≥ 1")
        if not _is_num(self.mlp_ratio) or self.mlp_ratio <= 0:
            raise _bad("mlp_ratio", self.mlp_ratio, "a finite number > 0")
        _check_common_training(self)
        if not _is_num(self.label_smoothing) or not (0 <= self.label_smoothing < 1):
            raise _bad("label_smoothing", self.label_smoothing, "a number in [0, 1)")


PRESETS: dict[str, Callable[[], Union[DDPMConfig, ClassifierConfig, ViTConfig]]] = {
    # The embedded world's models (trained once, ~minutes on a laptop CPU, then cached).
    "digits-ddpm": lambda: DDPMConfig(),
    "digits-ddpm-small": lambda: DDPMConfig(block_out_channels=(16, 32, 64), train_steps=12000),  # first prior; shortcut world
    "digits-classifier": lambda: ClassifierConfig(),
    # Tiny variants of the same code path, trained in about a second: for tests only.
    "digits-ddpm-tiny": lambda: DDPMConfig(
        block_out_channels=(8, 16), attention=(False, True), norm_num_groups=4,
        num_train_timesteps=100, train_steps=4, batch_size=8, warmup_steps=1,
    ),
    "digits-classifier-tiny": lambda: ClassifierConfig(
        channels=(8, 8, 16, 16), layers=(1, 1, 1, 1), train_steps=4, batch_size=16, warmup_steps=1,
    ),
    # The ViT of the SAE chapter (thesis Section 4.3): ~2 minutes on one CPU core, then cached.
    "digits-vit": lambda: ViTConfig(),
    "digits-vit-tiny": lambda: ViTConfig(embed_dim=16, depth=2, num_heads=2, train_steps=4, batch_size=16,
                                         warmup_steps=1),
}


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def build_unet(cfg: DDPMConfig):
    """A randomly initialised ``UNet2DModel`` for ``cfg`` (seed the global RNG first for a repeatable init)."""
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=cfg.block_out_channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_scheduler(cfg: DDPMConfig):
    """The ``DDPMScheduler`` of ``cfg``: ε-prediction, predicted x0 clipped to [-1, 1] (``clip_sample=True``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
        timestep_spacing=cfg.timestep_spacing,
    )


def build_classifier(cfg: ClassifierConfig) -> nn.Module:
    """A randomly initialised timm ResNet: 16×16 one-channel images in [-1, 1] → 10 logits.

    timm's ``ResNet`` with BasicBlocks, ``cfg.channels`` / ``cfg.layers`` per stage, activation
    ``cfg.act`` and its "deep" stem (three 3×3 convs of widths ``channels[0] // 2``,
    ``channels[0] // 2``, ``channels[0]``). Two changes for 16×16 inputs, CIFAR-style: the
    stem's first conv runs at stride 1 instead of 2 and the stem max-pool is removed, so the
    stages run at 16, 8, 4 and (``last_stage_size``) 2 pixels, or the last stages keep 4 (or 8)
    pixels with dilated convolutions (timm's ``output_stride``, DeepLab-style). The last stage,
    ``model.layer4``, is the layer whose channels later chapters read as neurons: a
    ``(B, channels[3], 4, 4)`` map by default; its pre-activation is the input of
    ``model.layer4[-1].act2``. Activations are not in-place, so hooks see intact tensors.
    """
    from timm.models.resnet import BasicBlock, ResNet

    model = ResNet(
        block=BasicBlock,
        layers=cfg.layers,
        channels=cfg.channels,
        num_classes=NUM_CLASSES,
        in_chans=1,
        stem_type="deep",
        stem_width=cfg.channels[0] // 2,
        # timm counts the stem as stride 4; ours is stride 1, so the real last-stage stride is
        # output_stride / 4 and the map side 16 / (output_stride / 4) = 64 / output_stride.
        output_stride=64 // cfg.last_stage_size,
        act_layer=_NOT_INPLACE[cfg.act],
    )
    model.conv1[0].stride = (1, 1)  # stem conv at stride 1 (timm: 2)
    model.maxpool = nn.Identity()  # no stem pooling (timm: 3×3 stride-2 max-pool)
    return model


def build_vit(cfg: ViTConfig) -> nn.Module:
    """A randomly initialised timm ``VisionTransformer``: 16×16 one-channel images in [-1, 1] → 10 logits.

    ``(16 / patch_size)²`` patch tokens plus a class token (17 tokens at the default patch size 4),
    learned position embeddings, pre-norm blocks with GELU MLPs (not in-place), classification from
    the class token (``global_pool="token"``). The output of ``model.blocks[i]`` is the residual
    stream after block ``i``, shape ``(B, tokens, embed_dim)`` — TransformerLens / Prisma's
    ``blocks.{i}.hook_resid_post``, where the SAEs of :mod:`equidiff.sae` read.
    """
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=IMAGE_SIZE,
        patch_size=cfg.patch_size,
        in_chans=1,
        num_classes=NUM_CLASSES,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        class_token=True,
        global_pool="token",
    )


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _config_identity(cfg) -> dict:
    """What a training checkpoint must belong to: the config and the code version."""
    return {"config": json.loads(json.dumps(asdict(cfg))), "code_version": CODE_VERSION}


def _training_data(data: Optional[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` checked, or the digits training split when ``data`` is None."""
    if data is None:
        return load_digits16("train")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise _bad("data", type(data).__name__, "None or a pair (images (N, 1, 16, 16), labels (N,))")
    images, labels = data
    if (not isinstance(images, torch.Tensor) or images.dim() != 4
            or tuple(images.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE)):
        raise _bad("data", tuple(getattr(images, "shape", ())),
                   f"images of shape (N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}) as a torch.Tensor")
    if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],):
        raise _bad("data", tuple(getattr(labels, "shape", ())), f"labels of shape ({images.shape[0]},)")
    return images.float(), labels.long()


def train_ddpm(cfg: DDPMConfig, *, device: Union[str, torch.device] = "cpu", progress: bool = False,
               data: Optional[tuple] = None, checkpoint: Optional[Union[str, os.PathLike]] = None,
               checkpoint_every: int = 500, on_step: Optional[Callable[[int], None]] = None):
    """Train the digits DDPM deterministically; returns ``(unet, scheduler, info)``.

    ε-prediction MSE on the training split (random shifts of up to ``max_shift`` pixels), AdamW
    with warm-up and cosine decay, gradient clipping, EMA of the weights (the returned weights are
    the EMA's). All randomness comes from ``cfg.seed``: the same config gives the same weights.
    ``data``: ``(images, labels)`` to train on instead of the digits training split (e.g. the
    planted-shortcut world of :mod:`equidiff.worlds.digits.shortcut`); images ``(N, 1, 16, 16)`` in [-1, 1].
    ``checkpoint``: a file where the whole training state is saved every ``checkpoint_every`` steps
    (atomically); a run started with an existing checkpoint of the same config continues from it and
    ends with the same weights as an uninterrupted run. ``on_step(step)`` is called after each step.
    ``info``: ``train_seconds`` (this run's, plus earlier runs' when resumed), ``final_loss``
    (mean of the last 100 steps), ``n_params``, ``resumed_from`` (a step, or None).
    """
    if not isinstance(cfg, DDPMConfig):
        raise TypeError(f"cfg must be a DDPMConfig, got {type(cfg).__name__}")
    if not _is_int(checkpoint_every) or checkpoint_every < 1:
        raise _bad("checkpoint_every", checkpoint_every, "an integer ≥ 1 (optimiser steps)")
    from diffusers.training_utils import EMAModel

    t0 = time.perf_counter()
    images, _ = _training_data(data)
    images = images.to(device)  # (N, 1, 16, 16) in [-1, 1]
    scheduler = build_scheduler(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)  # batches, shifts, noise, timesteps
    ckpt = Path(checkpoint) if checkpoint is not None else None
    state = load_checkpoint(ckpt, _config_identity(cfg)) if ckpt is not None else None
    resumed = state is not None
    with deterministic(cfg.seed):
        unet = build_unet(cfg).to(device).train()
        opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.train_steps))
        ema = EMAModel(unet.parameters(), decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
        batches = Batches(len(images), cfg.batch_size, gen)
        losses, start, earlier = [], 0, 0.0
        if resumed:  # continue where the checkpoint left off
            unet.load_state_dict(state["unet"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            gen.set_state(state["gen"])
            batches.perm, batches.pos = state["perm"], int(state["pos"])
            losses, start = state["losses"].tolist(), int(state["step"])
            earlier = float(state.get("seconds", 0.0))
        bar = progress_bar(cfg.train_steps, "training digits DDPM", progress)
        bar.update(start)
        for step in range(start, cfg.train_steps):
            idx = batches.next()
            x0 = shift_augment(images[idx.to(device)], cfg.max_shift, gen)  # (B, 1, 16, 16)
            noise = torch.randn(x0.shape, generator=gen).to(device)  # (B, 1, 16, 16)
            t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=gen).to(device)  # (B,)
            xt = scheduler.add_noise(x0, noise, t)  # forward process q(x_t | x_0)
            loss = torch.nn.functional.mse_loss(unet(xt, t).sample, noise)  # ε-prediction
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.step(unet.parameters())
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % 50 == 0 or step == cfg.train_steps - 1:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            done = step + 1
            if ckpt is not None and done % checkpoint_every == 0 and done < cfg.train_steps:
                save_checkpoint(ckpt, {
                    "step": done, "identity": _config_identity(cfg), "unet": unet.state_dict(),
                    "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
                    "ema": ema.state_dict() if ema is not None else None, "perm": batches.perm, "pos": batches.pos,
                    "losses": torch.tensor(losses, dtype=torch.float64),
                    "seconds": earlier + time.perf_counter() - t0})
            if on_step is not None:
                on_step(done)
        bar.close()
        if ema is not None:
            ema.copy_to(unet.parameters())
    unet.eval().requires_grad_(False)
    info = {
        "train_seconds": earlier + time.perf_counter() - t0,
        "final_loss": float(np.mean(losses[-100:])),
        "n_params": sum(p.numel() for p in unet.parameters()),
        "resumed_from": start if resumed else None,
    }
    return unet, scheduler, info


@torch.no_grad()
def classifier_accuracy(model: nn.Module, split: str = "test", batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on a split of :func:`load_digits16` (model put in eval mode)."""
    images, labels = load_digits16(split)
    param = next(model.parameters())
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(param.device, param.dtype)
        correct += int((model(x).argmax(1).cpu() == labels[i : i + batch_size]).sum())
    return correct / len(images)


def _optimizer_step(opt, sched, loss, losses: list, bar, step: int, total: int) -> None:
    """One training step of a classifier: backward, optimiser and schedule, loss log, progress bar."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    losses.append(float(loss.detach()))
    bar.update(1)
    if step % 50 == 0 or step == total - 1:
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")


def _classifier_info(model, t0: float, losses: list) -> dict:
    """What training a classifier reports: time, final loss, size, train and test accuracy."""
    return {
        "train_seconds": time.perf_counter() - t0,
        "final_loss": float(np.mean(losses[-100:])),
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_accuracy": classifier_accuracy(model, "train"),
        "test_accuracy": classifier_accuracy(model, "test"),
    }


def train_classifier(cfg: ClassifierConfig, *, device: Union[str, torch.device] = "cpu", progress: bool = False,
                     data: Optional[tuple] = None):
    """Train the digits classifier deterministically; returns ``(model, info)``.

    Cross-entropy on the training split (random shifts of up to ``max_shift`` pixels) plus
    outlier exposure (cross-entropy to the uniform distribution on :func:`synthetic_outliers`,
    weight ``outlier_weight``), AdamW with warm-up and cosine decay. ``info``: ``train_seconds``,
    ``final_loss`` (mean of the last 100 steps, outlier term included: its floor is
    ``outlier_weight · ln 10``, 1.15 by default), ``n_params``, ``train_accuracy``, ``test_accuracy``
    (both on the plain digits splits). ``data``: ``(images, labels)`` to train on instead of the
    digits training split, as for :func:`train_ddpm`.
    """
    if not isinstance(cfg, ClassifierConfig):
        raise TypeError(f"cfg must be a ClassifierConfig, got {type(cfg).__name__}")
    t0 = time.perf_counter()
    images, labels = _training_data(data)
    images, labels = images.to(device), labels.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)  # batches, shifts
    with deterministic(cfg.seed):
        model = build_classifier(cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.train_steps))
        batches = Batches(len(images), cfg.batch_size, gen)
        losses = []
        bar = progress_bar(cfg.train_steps, "training digits classifier", progress)
        for step in range(cfg.train_steps):
            idx = batches.next().to(device)
            x = shift_augment(images[idx], cfg.max_shift, gen)  # (B, 1, 16, 16)
            b = x.shape[0]
            if cfg.outlier_weight > 0:
                x = torch.cat([x, synthetic_outliers(cfg.outlier_batch, gen, images).to(device)])
            logits = model(x)  # (B [+ outliers], 10)
            loss = torch.nn.functional.cross_entropy(logits[:b], labels[idx], label_smoothing=cfg.label_smoothing)
            if cfg.outlier_weight > 0:
                # outlier exposure: cross-entropy to the uniform distribution on non-digits
                out = logits[b:]
                loss = loss + cfg.outlier_weight * (out.logsumexp(1) - out.mean(1)).mean()
            _optimizer_step(opt, sched, loss, losses, bar, step, cfg.train_steps)
        bar.close()
    model.eval().requires_grad_(False)
    return model, _classifier_info(model, t0, losses)


def train_vit(cfg: ViTConfig, *, device: Union[str, torch.device] = "cpu", progress: bool = False):
    """Train the digits ViT deterministically; returns ``(model, info)``.

    Cross-entropy on the training split (random shifts of up to ``max_shift`` pixels), AdamW with
    warm-up and cosine decay. ``info``: ``train_seconds``, ``final_loss`` (mean of the last 100
    steps), ``n_params``, ``train_accuracy``, ``test_accuracy``.
    """
    if not isinstance(cfg, ViTConfig):
        raise TypeError(f"cfg must be a ViTConfig, got {type(cfg).__name__}")
    t0 = time.perf_counter()
    images, labels = load_digits16("train")
    images, labels = images.to(device), labels.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)  # batches, shifts
    with deterministic(cfg.seed):
        model = build_vit(cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.train_steps))
        batches = Batches(len(images), cfg.batch_size, gen)
        losses = []
        bar = progress_bar(cfg.train_steps, "training digits ViT", progress)
        for step in range(cfg.train_steps):
            idx = batches.next().to(device)
            x = shift_augment(images[idx], cfg.max_shift, gen)  # (B, 1, 16, 16)
            loss = torch.nn.functional.cross_entropy(model(x), labels[idx], label_smoothing=cfg.label_smoothing)
            _optimizer_step(opt, sched, loss, losses, bar, step, cfg.train_steps)
        bar.close()
    model.eval().requires_grad_(False)
    return model, _classifier_info(model, t0, losses)
