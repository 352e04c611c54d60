"""Where an SAE reads a ViT: the residual stream after one block, through a scoped forward hook.

The SAE reads the residual stream after block ``layer`` — the output of ``vit.blocks[layer]``, shape
``(B, tokens, d_in)``; TransformerLens and Prisma call it ``blocks.{layer}.hook_resid_post``. It is
collected with a forward hook that lives only inside :func:`equidiff.core.objectives.capture_activation`
(removed on exit, also when the forward pass raises): a leaked hook is a bug.

Any timm ``VisionTransformer`` works — the digits ViT of the embedded world, or a CLIP ViT wrapped
for [-1, 1] images (an input wrapper whose ``.model`` is the ViT, as
``equidiff.worlds.imagenet.loaders.ImageNetInput``). :class:`ViTSAE` is an SAE together with the ViT
and the block it reads: what a world's ``"sae"`` part is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from equidiff._validate import bad, check_images, is_int
from equidiff.core.objectives import capture_activation, resolve_module
from equidiff.sae.model import SparseAutoencoder

__all__ = ["ViTSAE", "block_name", "vit_body", "vit_block", "run_to_block", "collect_activations",
           "check_compatible", "resid_layer", "RESID_HOOK"]

RESID_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_post")  # the hook point this package reads


@dataclass
class ViTSAE:
    """An SAE with the ViT whose residual stream it reads (a world's ``"sae"`` part)."""

    vit: nn.Module  # the ViT: [-1, 1] images (B, C, H, W) in; blocks at .blocks or .model.blocks
    layer: int  # the SAE reads the output of vit.blocks[layer] (blocks.<layer>.hook_resid_post)
    sae: SparseAutoencoder
    vit_name: str  # the ViT's name in objective captions ("digits ViT", a timm model name)
    description: str = ""  # one line naming the models and where the SAE came from (printed by the chapter)
    record: dict = field(default_factory=dict)  # metrics.json "models" fields (presets, folders, accuracies)
    features: tuple = ()  # features a loaded SAE's config names for features="auto" (PaperConfig.sae_features)

    @property
    def expansion(self):
        """d_sae / d_in (an int when it divides, as SAELens' and Prisma's expansion factor)."""
        d_sae, d_in = self.sae.d_sae, self.sae.d_in
        return d_sae // d_in if d_sae % d_in == 0 else d_sae / d_in


def block_name(layer: int) -> str:
    """Module path of the residual stream after block ``layer`` of a timm ViT."""
    return f"blocks.{layer}"


def vit_body(vit: nn.Module) -> nn.Module:
    """The timm VisionTransformer itself: ``vit``, or the ``.model`` of an input wrapper (whose forward
    normalises [-1, 1] images first)."""
    if isinstance(vit, nn.Module) and getattr(vit, "blocks", None) is None and isinstance(
        getattr(vit, "model", None), nn.Module
    ):
        if getattr(vit.model, "blocks", None) is not None:
            return vit.model
    return vit


def vit_block(vit: nn.Module, layer) -> nn.Module:
    """``vit.blocks[layer]`` (of the wrapped ViT), after checking ``layer``."""
    body = vit_body(vit)
    blocks = getattr(body, "blocks", None)
    if blocks is None:
        raise TypeError(f"vit must be a timm VisionTransformer (with .blocks), got {type(vit).__name__}")
    if not is_int(layer) or not (0 <= layer < len(blocks)):
        raise bad("layer", layer, f"an integer in [0, {len(blocks) - 1}] (blocks of the ViT)")
    return resolve_module(body, block_name(layer))


def run_to_block(vit: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The residual stream after ``blocks[layer]`` for images ``x``: (B, tokens, d). The hook is
    registered for this one forward pass only and removed even if the pass raises."""
    module = vit_block(vit, layer)
    with capture_activation(module) as store:
        vit(x)
    return store["output"]


@torch.no_grad()
def collect_activations(vit: nn.Module, images: torch.Tensor, layer: int, batch: int = 256) -> torch.Tensor:
    """Residual-stream activations after ``vit.blocks[layer]`` for every image: (N, tokens, d_in), float32
    on CPU. Images are moved to the ViT's device ``batch`` at a time."""
    check_images(images, channels=None)
    param = next(vit.parameters())
    out = []
    for i in range(0, len(images), batch):
        out.append(run_to_block(vit, layer, images[i : i + batch].to(param.device, param.dtype)).float().cpu())
    return torch.cat(out)


def check_compatible(sae: SparseAutoencoder, vit: nn.Module, layer: int) -> None:
    """Raise ``ValueError`` unless ``sae`` reads vectors as wide as ``vit.blocks[layer]``'s output."""
    body = vit_body(vit)
    width = getattr(body, "embed_dim", None) or getattr(body, "num_features", None)
    vit_block(vit, layer)
    if width is not None and sae.d_in != width:
        raise ValueError(f"the SAE reads d_in={sae.d_in} values per token, but vit.blocks.{layer} outputs {width}")
    if sae.layer is not None and sae.layer != layer:
        raise ValueError(f"the SAE was trained on layer {sae.layer} ({sae.hook_name}), not layer {layer}")


def resid_layer(sae: SparseAutoencoder, vit: nn.Module, sae_layer: Optional[int] = None) -> int:
    """The ViT block whose output an SAE loaded from a folder reads: ``sae_layer`` when given, else the
    layer its config names (``hook_name`` / ``hook_layer``); checked with :func:`check_compatible`.
    The errors name ``sae_path`` (the SAE's folder) and ``sae_layer``, the parameters a user sets."""
    hook = sae.hook_name
    if hook is not None and not RESID_HOOK.fullmatch(str(hook)):
        raise ValueError(f"sae_path: the SAE reads {hook!r}; this chapter reads the residual stream after a ViT "
                         "block (blocks.<L>.hook_resid_post, the output of vit.blocks[L])")
    layer = sae_layer if sae_layer is not None else sae.layer
    if layer is None:
        raise ValueError("sae_layer: the SAE's config names no hook layer (hook_name / hook_layer); set "
                         "PaperConfig.sae_layer to the ViT block whose output it reads")
    check_compatible(sae, vit, layer)
    return int(layer)
