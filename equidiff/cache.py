"""Where trained models live: ``<root>/<name>-<hash of config>/``, weights as safetensors.

**Shipped models.** The embedded world's models that the book and the tests load are trained once
by ``make models`` and committed in ``data/models/`` (each folder with its ``MODEL_CARD.md``;
``data/models/manifest.json`` lists them with their files' sha256). A folder name found there (or
listed in the manifest) is always loaded from there (:func:`resolve`): it is never retrained behind
the reader's back, and a missing or damaged one stops with a :class:`CacheError` that names the file
and says how to restore it (``git checkout``) or retrain it (``make models``).

**The cache.** Every other model (the tiny test presets, a config a reader changed) lives under the
cache root: ``$EQUIDIFF_CACHE`` if set, else ``data/cache`` in the repository. A model is
trained at most once per config: the hash covers the config and a code version, so changing
either retrains into a new folder and never loads stale weights.

This is the project's one cache writer. Every cache folder is written through
:func:`atomic_folder`: the files go into a temporary sibling folder, which is renamed into place
when it is complete, so an interrupted run never leaves a half-written folder behind and a folder
that exists is complete. Inside it, :func:`save_state` writes a module's weights as safetensors
(``model.safetensors``) with a ``config.json``; other formats (diffusers' ``save_pretrained``, an
SAE's SAELens layout) write their own files into the same temporary folder. Nothing is pickled.

Every file is verified (issue 18): the folder's record (``config.json``, or the caller's record
file) lists the sha256 of every other file in the folder (:func:`write_record`), and
:func:`check_folder` checks them before anything is loaded. A changed or truncated file, a missing
one, a missing or unreadable record, or a file that fails to load (:func:`loading`) stops with a
:class:`CacheError` naming the file and how to rebuild it (delete the folder and rerun: the next
load trains it again). A folder written before records carried sha256 (a record without
``"sha256"``) still loads as before; once it has loaded, :func:`seal` adds the sha256 of its files to
its record, so every later load verifies them (where the folder is read-only it is loaded
unverified, with a warning that says so). Folder names and weights do not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

__all__ = ["SHIPPED", "MANIFEST", "RETRAIN", "shipped_manifest", "is_shipped", "resolve", "shipped_hint",
           "missing_shipped", "cache_root", "config_hash", "model_dir", "atomic_folder", "write_json", "save_state", "load_state",
           "load_or_train", "CacheError", "RECORD", "sha256_file", "file_hashes", "write_record", "check_folder",
           "loading", "seal", "rebuild_hint", "loaded_models"]

RECORD = "config.json"  # the record of a cache folder: its config, training info and the sha256 of its other files

_REPO = Path(__file__).resolve().parent.parent
SHIPPED = _REPO / "data" / "models"  # the embedded world's trained models, committed with their cards (make models)
MANIFEST = "manifest.json"  # in SHIPPED: the folders the default path needs, with the sha256 of their files
RETRAIN = "make models"  # the command that retrains every shipped model from its recipe


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
    return resolve(f"{name}-{config_hash(config, version)}", cache_dir)


def shipped_manifest() -> dict:
    """``{folder name: entry}`` of the shipped models (``data/models/manifest.json``); {} when there is none."""
    path = SHIPPED / MANIFEST
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())["models"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheError(f"the shipped models' manifest {path} cannot be read ({e}); restore it with "
                         f"`git checkout -- {path.relative_to(_REPO)}` or rebuild it with `{RETRAIN}`") from e


def is_shipped(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a shipped model's folder (under ``data/models``)."""
    return Path(folder).parent.resolve() == SHIPPED.resolve()


def resolve(folder_name: str, cache_dir=None) -> Path:
    """Where the model folder ``folder_name`` lives: under ``cache_dir`` when one is given; else the
    shipped copy in ``data/models`` when there is one (or the manifest lists it: then a missing folder
    is an error, never a silent retraining); else under the cache root (:func:`cache_root`)."""
    if cache_dir is not None:
        return Path(cache_dir) / folder_name
    if (SHIPPED / folder_name).is_dir() or folder_name in shipped_manifest():
        return SHIPPED / folder_name
    return cache_root() / folder_name


def shipped_hint(folder: str | os.PathLike) -> str:
    """What repairs a shipped model folder: git restores the committed files, ``make models`` retrains them."""
    folder = Path(folder)
    try:
        rel = folder.resolve().relative_to(_REPO)
    except ValueError:
        rel = folder
    return (f"restore the shipped files with `git checkout -- {rel}`, or retrain every shipped model from "
            f"its recipe with `{RETRAIN}`")


def missing_shipped(folder: str | os.PathLike) -> CacheError:
    """The error for a shipped model folder that is not there."""
    return CacheError(f"the shipped model {folder} is missing (data/models/{MANIFEST} lists it); "
                      f"{shipped_hint(folder)}")


class CacheError(RuntimeError):
    """A cache folder that cannot be trusted: a file whose sha256 differs from its record, a truncated
    or missing file, a missing or unreadable record. The message names the file and how to rebuild it."""


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike, record: str = RECORD) -> Iterator[Path]:
    """Write a cache folder atomically: ``with atomic_folder(folder) as tmp:`` write the files into
    ``tmp``; when the block ends, ``tmp`` is renamed to ``folder``.

    ``tmp`` is ``<parent>/.<folder name>.tmp-<pid>`` (created empty). If the block raises, ``tmp`` is
    removed and nothing is renamed. If ``folder`` already exists when the block ends: when it holds
    its ``record`` (another process finished first) it is kept and ``tmp`` removed; when it does not
    (a half-written or half-deleted folder) it is moved aside, ``tmp`` renamed into its place and the
    broken folder removed, so a repair never fails on what it repairs.
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
        os.rename(tmp, folder)  # replaces an empty folder too
    except OSError:
        if (folder / record).is_file():  # another process finished first: keep its folder
            shutil.rmtree(tmp, ignore_errors=True)
            _note_written(folder, record)
            return
        if not folder.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        aside = folder.parent / f".{folder.name}.broken-{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(folder, aside)
        os.rename(tmp, folder)
        shutil.rmtree(aside, ignore_errors=True)
    _note_written(folder, record)


def _note_written(folder: Path, record: str) -> None:
    """A model trained now is used like a loaded one: note it in :func:`loaded_models` (from its record)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        _note_loaded(folder, json.loads((folder / record).read_text()).get("sha256"))


def rebuild_hint(folder: str | os.PathLike, how: str = "the next call trains it again") -> str:
    """What rebuilds a cache folder: deleting it (``how`` says what then retrains it); for a shipped
    model, restoring it from git or ``make models``."""
    if is_shipped(folder):
        return shipped_hint(folder)
    return f"delete the folder {folder} and rerun: {how}"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(folder: str | os.PathLike, record: str = RECORD) -> dict:
    """``{relative path: sha256}`` of every file under ``folder`` except its ``record``."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != record}


def write_record(folder: str | os.PathLike, obj: dict, record: str = RECORD) -> None:
    """Write the folder's record: ``obj`` plus ``"sha256"``, the hashes of every other file in it (write
    the other files first)."""
    write_json(Path(folder) / record, {**obj, "sha256": file_hashes(folder, record)})


def check_folder(folder: str | os.PathLike, record: str = RECORD, rebuild: str | None = None) -> dict | None:
    """The verified record of a cache folder, or None when there is none to load (no folder, or an empty one).

    Raises :class:`CacheError` naming the file (and ``rebuild``, default :func:`rebuild_hint`) when the
    folder has files but no record, the record is not JSON, or a file its ``"sha256"`` lists is missing
    or has another hash. A record without ``"sha256"`` (written before weights were verified) is
    returned unchecked; :func:`seal` it once its files have loaded.
    """
    folder = Path(folder)
    rebuild = rebuild or rebuild_hint(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    path = folder / record
    if not path.is_file():
        raise CacheError(f"cache folder {folder} is incomplete: its record {path} is missing (an interrupted "
                         f"copy or a partly deleted folder); {rebuild}")
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheError(f"the record {path} of a cache folder cannot be read ({e}); {rebuild}") from e
    if not isinstance(stored, dict):
        raise CacheError(f"the record {path} of a cache folder is not a JSON object; {rebuild}")
    for name, want in (stored.get("sha256") or {}).items():
        p = folder / name
        if not p.is_file():
            raise CacheError(f"{p} is missing (its record {path} lists it); {rebuild}")
        got = sha256_file(p)
        if got != want:
            raise CacheError(f"{p} is corrupt: its sha256 is {got[:16]}…, its record {path} says {want[:16]}… "
                             f"(changed, truncated or damaged on disk); {rebuild}")
    return stored


@contextlib.contextmanager
def loading(path: str | os.PathLike, rebuild: str):
    """Turn a failure to load ``path`` (e.g. safetensors' ``incomplete metadata`` of a truncated file,
    which names no file) into a :class:`CacheError` naming the file and how to rebuild it."""
    try:
        yield
    except CacheError:
        raise
    except Exception as e:  # SafetensorError, OSError, RuntimeError of load_state_dict, JSON errors…
        raise CacheError(f"{path} cannot be loaded ({type(e).__name__}: {e}); it may be damaged or "
                         f"truncated: {rebuild}") from e


# What this process loaded: {folder name: sha256 of its weights}, in load order (see loaded_models).
_LOADED: dict[str, str] = {}


def _weights_sha256(hashes: dict) -> str:
    """One sha256 for a model folder from its record's ``{file: sha256}``: the weights file's own sha256
    (the one ``*.safetensors`` every folder here has, as its MODEL_CARD.md lists it); for a folder with
    none or several, the sha256 of the sorted ``file sha256`` lines."""
    weights = sorted(k for k in hashes if k.endswith(".safetensors"))
    if len(weights) == 1:
        return str(hashes[weights[0]])
    return hashlib.sha256("".join(f"{k} {hashes[k]}\n" for k in sorted(hashes)).encode()).hexdigest()


def _note_loaded(folder: str | os.PathLike, hashes: dict | None) -> None:
    if hashes:
        _LOADED[Path(folder).name] = _weights_sha256(hashes)


def loaded_models() -> dict[str, str]:
    """``{folder name: sha256 of its weights}`` of every shipped or cached model folder this process has
    loaded (or trained and written) so far, in that order: the record of what a notebook run used,
    written into its ``metrics.json`` (``"loaded_models"``) by :func:`equidiff.report.record.write_metrics` and shown
    in the book's "Reproduce this page" box. The sha256 are those the folder's record lists (verified
    when it loaded), so nothing is hashed again."""
    return dict(_LOADED)


def seal(folder: str | os.PathLike, stored: dict, record: str = RECORD) -> dict:
    """Add the sha256 of the folder's files to a record that has none (a folder written before weights
    were verified), after its files loaded; later loads verify them. A read-only folder is left as it is,
    with a warning that it was loaded unverified. Returns the record.

    Every loader calls this once the folder's files loaded, so it also notes the folder in
    :func:`loaded_models`."""
    if "sha256" in stored:
        _note_loaded(folder, stored["sha256"])
        return stored
    folder = Path(folder)
    sealed = {**stored, "sha256": file_hashes(folder, record)}
    tmp = folder / f".{record}.tmp-{os.getpid()}"
    try:
        write_json(tmp, sealed)
        os.replace(tmp, folder / record)  # atomic: readers see the old record or the new one
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        warnings.warn(f"cache folder {folder} has no sha256 in its record {record} (written before weights "
                      f"were verified) and it cannot be added ({e}): loaded unverified", stacklevel=3)
        _note_loaded(folder, sealed["sha256"])
        return stored
    _note_loaded(folder, sealed["sha256"])
    return sealed


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
    write_record(folder, {"config": d, **(extra or {})})  # config.json with the sha256 of model.safetensors


def load_state(module: torch.nn.Module, folder: Path, rebuild: str | None = None) -> dict:
    """Load weights into ``module``; returns the stored config.json contents. The files are verified
    first (:func:`check_folder`) and a folder without hashes is sealed (:func:`seal`) once it loaded;
    any fault raises :class:`CacheError` naming the file and ``rebuild``."""
    folder = Path(folder)
    rebuild = rebuild or rebuild_hint(folder)
    stored = check_folder(folder, RECORD, rebuild)
    if stored is None:
        raise CacheError(f"cache folder {folder} is missing or empty; {rebuild}")
    weights = folder / "model.safetensors"
    with loading(weights, rebuild):
        module.load_state_dict(load_file(str(weights)))
    return seal(folder, stored)


def load_or_train(name: str, config, version: str, module: torch.nn.Module, train, cache_dir=None):
    """``(model, info)`` from the cache folder of ``config``, or ``train()`` and cache its result.

    ``module`` is a freshly built model to load the weights into; ``train()`` returns
    ``(model, info)``. ``info`` is what training recorded (e.g. accuracy, seconds). The folder is
    written atomically (:func:`atomic_folder`) and verified on every load (:func:`load_state`): a
    damaged, truncated or incomplete folder raises :class:`CacheError` instead of loading or retraining.
    """
    folder = model_dir(name, config, version, cache_dir)
    if cache_dir is None and is_shipped(folder) and not folder.is_dir():
        raise missing_shipped(folder)
    if folder.is_dir() and any(folder.iterdir()):  # load_state verifies it (an empty folder is retrained)
        info = load_state(module, folder, rebuild_hint(folder, f"the next call trains {name} again"))
        return module.eval(), {k: v for k, v in info.items() if k not in ("config", "sha256")}
    model, info = train()
    with atomic_folder(folder) as tmp:
        save_state(model, tmp, config, info)
    return model, info
