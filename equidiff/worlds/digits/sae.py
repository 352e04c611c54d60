"""The digits world's SAE recipe: an SAE on the digits ViT, trained here and cached (thesis Section 4.3, embedded).

The thesis samples invariant sets of SAE features of a CLIP ViT, loaded with Prisma (Figure 4.3:
feature #6547, L2 ≈ 0.01). The embedded world trains everything on the spot:

* **The ViT**: the zoo's digits ViT (preset ``"digits-vit"``: 4 blocks, width 64, 16 patch tokens of
  4×4 pixels plus a class token; ``"digits-vit-tiny"`` in the smoke world).
* **The tokens** (:func:`training_tokens`): every token (class token included, as Prisma's all-patch
  SAEs are) of the 4,000 training digits and ``views − 1`` shifted copies of them.
* **The SAE** (:func:`get_sae`): :func:`equidiff.sae.train_sae` on those tokens, cached in SAELens'
  layout (``cfg.json`` + ``sae_weights.safetensors``, plus ``equidiff.json`` with the training config)
  under ``<cache root>/<vit preset>-sae-<kind>-<hash>`` (:func:`sae_folder`), written atomically
  through :func:`equidiff.cache.atomic_folder` and read back through :func:`equidiff.sae.load_sae`,
  the loader of real SAELens / Prisma SAEs. ``equidiff.json`` records the sha256 of the SAELens files,
  checked on every load; a changed or truncated file, or a folder without ``equidiff.json``, raises
  :class:`equidiff.cache.CacheError` naming the file (delete the folder; :func:`get_sae` trains it again).

:func:`sae_loader` makes the world's ``"sae"`` part (:class:`equidiff.sae.ViTSAE`) from the
notebook's SAE parameters (None: the world's value, :data:`equidiff.worlds.settings.SETTINGS`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from equidiff import cache
from equidiff._validate import bad
from equidiff.training import machine
from equidiff.sae import SAETrainConfig, SparseAutoencoder, ViTSAE, collect_activations, load_sae, train_sae, vit_block
from equidiff.worlds.digits.data import load_digits16, shift_augment
from equidiff.worlds.digits.models import get_model

__all__ = ["CODE_VERSION", "TrainedSAE", "sae_folder", "training_tokens", "get_sae", "sae_loader"]

CODE_VERSION = "1"  # bump when SAE training changes the weights (the ViT folder name in the hash covers its data)
RECORD = "equidiff.json"  # the training record beside the SAELens files of a cached SAE


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
    return cache.resolve(f"{cfg.vit}-sae-{cfg.kind}-{cache.config_hash(key, CODE_VERSION)}", cache_dir)


def training_tokens(vit: torch.nn.Module, cfg: SAETrainConfig) -> torch.Tensor:
    """Tokens to train on: every token of ``cfg.views`` (shifted) copies of the training digits, (M, d_in)."""
    images, _ = load_digits16("train")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    views = [images] + [shift_augment(images, cfg.max_shift, gen) for _ in range(cfg.views - 1)]
    acts = collect_activations(vit, torch.cat(views), cfg.layer)  # (V·N, T, d_in)
    return acts.reshape(-1, acts.shape[-1])


def get_sae(cfg: Optional[SAETrainConfig] = None, cache_dir=None, *, train_if_missing: bool = True,
            progress: bool = True) -> TrainedSAE:
    """The SAE for ``cfg`` from its cache folder (through :func:`equidiff.sae.load_sae`), trained on
    :func:`training_tokens` and cached first if missing."""
    cfg = cfg or SAETrainConfig()
    if not isinstance(cfg, SAETrainConfig):
        raise TypeError(f"cfg must be an SAETrainConfig, got {type(cfg).__name__}")
    vit = get_model(cfg.vit, cache_dir, train_if_missing=train_if_missing, progress=progress)
    if vit.kind != "vit":
        raise bad("vit", cfg.vit, "the name of a ViT preset of equidiff.worlds.digits.recipes.PRESETS (e.g. 'digits-vit')")
    vit_block(vit.model, cfg.layer)
    folder = sae_folder(cfg, vit.path, cache_dir)
    rebuild = cache.rebuild_hint(folder, "get_sae (the SAE chapter's first cell) trains it again")
    if cache_dir is None and cache.is_shipped(folder) and not folder.is_dir():
        raise cache.missing_shipped(folder)
    stored = cache.check_folder(folder, RECORD, rebuild)  # None: no folder; raises if incomplete or damaged
    if stored is not None:
        if stored.get("config") != json.loads(json.dumps(dataclasses.asdict(cfg))):
            raise ValueError(f"cache folder {folder} holds a different SAE config; delete it to retrain")
        with cache.loading(folder / "sae_weights.safetensors", rebuild):  # SAELens layout (sae.save)
            sae = load_sae(folder)
        cache.seal(folder, stored, RECORD)  # a folder written before weights were verified: record their sha256
        return TrainedSAE(sae, vit, cfg, folder, stored["info"], trained_now=False)
    if not train_if_missing:
        raise FileNotFoundError(f"no cached SAE at {folder}; call with train_if_missing=True to train it")
    t0 = time.perf_counter()
    tokens = training_tokens(vit.model, cfg)  # (M, d_in)
    sae, info = train_sae(tokens, cfg, progress=progress, vit_name=cfg.vit)
    info["train_seconds"] = time.perf_counter() - t0  # tokens included
    info["machine"] = machine()
    with cache.atomic_folder(folder, RECORD) as tmp:
        sae.save(tmp)
        cache.write_record(tmp, {"config": dataclasses.asdict(cfg), "vit_folder": vit.path.name,
                                 "code_version": CODE_VERSION, "info": info}, RECORD)  # last: it hashes the others
    with cache.loading(folder / "sae_weights.safetensors", rebuild):  # SAELens layout (sae.save)
        sae = load_sae(folder)
    return TrainedSAE(sae, vit, cfg, folder, info, trained_now=True)


def sae_loader(presets: dict, classifier, defaults: dict, cache_dir=None, progress: bool = False):
    """The digits world's ``"sae"`` loader: ``load(layer, sae_kind, expansion, sae_steps, vit_preset, seed)``
    -> :class:`equidiff.sae.ViTSAE`, the SAE of :func:`get_sae` on the zoo's ViT. A parameter left None
    takes the world's value (``defaults``: its ``SETTINGS[profile]["sae"]``; ``vit_preset``: ``presets["vit"]``).
    ``presets``: the world's zoo preset names; ``classifier``: its judge's ZooModel (for the summary line)."""

    def load(layer=None, sae_kind=None, expansion=None, sae_steps=None, vit_preset=None, seed=0) -> ViTSAE:
        vit = vit_preset if vit_preset is not None else presets["vit"]
        cfg = SAETrainConfig(vit=vit, layer=defaults["layer"] if layer is None else layer,
                             kind=defaults["sae_kind"] if sae_kind is None else sae_kind,
                             expansion=defaults["expansion"] if expansion is None else expansion,
                             train_steps=defaults["sae_steps"] if sae_steps is None else sae_steps, seed=seed)
        trained = get_sae(cfg, cache_dir, progress=progress)
        acc = trained.vit.info["test_accuracy"]
        return ViTSAE(
            trained.vit.model, cfg.layer, trained.sae, "digits ViT",
            description=(f"ViT {vit}: test accuracy {acc:.3f}; classifier {presets['classifier']}: "
                         f"{classifier.info['test_accuracy']:.3f}"),
            record={"vit": vit, "vit_test_accuracy": acc, "classifier": presets["classifier"],
                    "ddpm": presets["ddpm"], "sae_folder": trained.path.name},
        )

    return load
