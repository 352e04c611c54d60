"""Tiny *randomly initialised* models of the paper world's classes, for tests and benchmarks.

:func:`write_tiny_models` saves a 1-layer DiT, a small VAE, a tiny timm ``resnet50``, a tiny CLIP-class
ViT and a random SAE on it to a folder and returns the :class:`~equidiff.worlds.imagenet.config.PaperConfig`
that loads them through the same code as the real weights. Their outputs mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from equidiff.sae import SparseAutoencoder
from equidiff.worlds.imagenet.config import PaperConfig, VIT_MODEL
from equidiff.worlds.imagenet.loaders import PathLike

__all__ = ["TINY_CLASSIFIER_KWARGS", "TINY_VIT_KWARGS", "TINY_SAE_LAYER", "write_tiny_models"]

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
