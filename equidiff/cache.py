"""Where trained models live: ``<cache root>/<name>-<hash of config>/``, weights as safetensors.

The root is ``$EQUIDIFF_CACHE`` if set, else ``data/cache`` in the repository. A model is
trained at most once per config: the hash covers the config and a code version, so changing
either retrains into a new folder and never loads stale weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["cache_root", "config_hash", "model_dir", "save_state", "load_state", "load_or_train"]

_REPO = Path(__file__).resolve().parent.parent


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("EQUIDIFF_CACHE")
    return Path(env) if env else _REPO / "data" / "cache"


def config_hash(config, version: str = "1") -> str:
    d = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    blob = json.dumps({"config": d, "version": version}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def model_dir(name: str, config, version: str = "1", cache_dir=None) -> Path:
    return cache_root(cache_dir) / f"{name}-{config_hash(config, version)}"


def save_state(module: torch.nn.Module, folder: Path, config, extra: dict | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` (config + extra, e.g. measured accuracy)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    d = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    (folder / "config.json").write_text(json.dumps({"config": d, **(extra or {})}, indent=2))


def load_state(module: torch.nn.Module, folder: Path) -> dict:
    """Load weights into ``module``; returns the stored config.json contents."""
    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    return json.loads((folder / "config.json").read_text())


def load_or_train(name: str, config, version: str, module: torch.nn.Module, train, cache_dir=None):
    """``(model, info)`` from the cache folder of ``config``, or ``train()`` and cache its result.

    ``module`` is a freshly built model to load the weights into; ``train()`` returns
    ``(model, info)``. ``info`` is what training recorded (e.g. accuracy, seconds).
    """
    folder = model_dir(name, config, version, cache_dir)
    if (folder / "model.safetensors").exists():
        info = load_state(module, folder)
        return module.eval(), {k: v for k, v in info.items() if k != "config"}
    model, info = train()
    save_state(model, folder, config, info)
    return model, info
