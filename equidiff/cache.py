"""Where trained models live: ``<cache root>/<name>-<hash of config>/``, weights as safetensors.

The root is ``$EQUIDIFF_CACHE`` if set, else ``data/cache`` in the repository. A model is
trained at most once per config: the hash covers the config and a code version, so changing
either retrains into a new folder and never loads stale weights.

This is the project's one cache writer. Every cache folder is written through
:func:`atomic_folder`: the files go into a temporary sibling folder, which is renamed into place
when it is complete, so an interrupted run never leaves a half-written folder behind and a folder
that exists is complete. Inside it, :func:`save_state` writes a module's weights as safetensors
(``model.safetensors``) with a ``config.json``; other formats (diffusers' ``save_pretrained``, an
SAE's SAELens layout) write their own files into the same temporary folder. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

__all__ = ["cache_root", "config_hash", "model_dir", "atomic_folder", "write_json", "save_state", "load_state",
           "load_or_train"]

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


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Write a cache folder atomically: ``with atomic_folder(folder) as tmp:`` write the files into
    ``tmp``; when the block ends, ``tmp`` is renamed to ``folder``.

    ``tmp`` is ``<parent>/.<folder name>.tmp-<pid>`` (created empty). If the block raises, ``tmp`` is
    removed and nothing is renamed. If ``folder`` already exists when the block ends (another
    process finished first), its folder is kept and ``tmp`` removed.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, folder)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.is_dir():
            raise


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON (the format of every ``config.json`` of the cache)."""
    Path(path).write_text(json.dumps(obj, indent=2))


def save_state(module: torch.nn.Module, folder: Path, config, extra: dict | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` (config + extra, e.g. measured accuracy) into
    ``folder`` (an :func:`atomic_folder`'s temporary folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    d = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    write_json(folder / "config.json", {"config": d, **(extra or {})})


def load_state(module: torch.nn.Module, folder: Path) -> dict:
    """Load weights into ``module``; returns the stored config.json contents."""
    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    return json.loads((folder / "config.json").read_text())


def load_or_train(name: str, config, version: str, module: torch.nn.Module, train, cache_dir=None):
    """``(model, info)`` from the cache folder of ``config``, or ``train()`` and cache its result.

    ``module`` is a freshly built model to load the weights into; ``train()`` returns
    ``(model, info)``. ``info`` is what training recorded (e.g. accuracy, seconds). The folder is
    written atomically (:func:`atomic_folder`).
    """
    folder = model_dir(name, config, version, cache_dir)
    if (folder / "model.safetensors").exists():
        info = load_state(module, folder)
        return module.eval(), {k: v for k, v in info.items() if k != "config"}
    model, info = train()
    with atomic_folder(folder) as tmp:
        save_state(model, tmp, config, info)
    return model, info
