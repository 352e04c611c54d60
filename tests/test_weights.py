"""Issue 18: cached weights are verified. Faults injected into copies of tiny cache folders (flipped
bytes, truncation, a missing record) stop with a CacheError naming the file and how to rebuild it;
folders written before records carried sha256 still load, bit-identically, and are sealed; a repair
replaces a broken folder instead of crashing on it. Tiny presets in temporary caches only."""

import json
import re
import shutil

import pytest
import torch

from equidiff import cache
from equidiff.sae import SAETrainConfig
from equidiff.worlds import digits as zoo
from equidiff.worlds.digits import sae as DS

TINY_DDPM = "digits-ddpm-tiny"
TINY_CLF = "digits-classifier-tiny"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny DDPM, classifier and an SAE on the tiny ViT, trained once into a temporary cache."""
    root = tmp_path_factory.mktemp("weights-cache")
    ddpm = zoo.get_model(TINY_DDPM, root, progress=False)
    clf = zoo.get_model(TINY_CLF, root, progress=False)
    sae_cfg = SAETrainConfig(vit="digits-vit-tiny", layer=1, kind="relu", expansion=2, train_steps=5,
                             batch_size=128, warmup_steps=1, views=1)
    sae = DS.get_sae(sae_cfg, root, progress=False)
    return {"root": root, "ddpm": ddpm, "clf": clf, "sae": sae, "sae_cfg": sae_cfg}


def _copy(trained, tmp_path, *keys):
    """A fresh cache root holding copies of the named folders (the ViT comes with the SAE)."""
    for k in keys:
        src = trained[k].path
        shutil.copytree(src, tmp_path / src.name)
        if k == "sae":
            shutil.copytree(trained[k].vit.path, tmp_path / trained[k].vit.path.name)
    return tmp_path


def _flip(path, n=4096):
    """XOR ``n`` bytes (at most a quarter of the file) in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    n = min(n, len(data) // 4)
    mid = len(data) // 2 - n // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _unseal(folder, record="config.json"):
    """Make ``folder`` look written before this change: its record without "sha256"."""
    stored = json.loads((folder / record).read_text())
    del stored["sha256"]
    (folder / record).write_text(json.dumps(stored, indent=2))


def _no_training(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a damaged cache folder must not be retrained silently")

    for name in ("train_ddpm", "train_classifier", "train_vit"):
        monkeypatch.setattr(zoo.models, name, refuse)
    monkeypatch.setattr(DS, "train_sae", refuse)


def _rebuild(folder, call):
    return re.escape(f"delete the folder {folder} and rerun: {call}")


# ------------------------------------------------------------------------------ the records


def test_every_cached_file_has_its_sha256_in_the_record(trained):
    for key, record in (("ddpm", "config.json"), ("clf", "config.json"), ("sae", "equidiff.json")):
        folder = trained[key].path
        stored = json.loads((folder / record).read_text())
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert sorted(stored["sha256"]) == [f for f in files if f != record], key
        for name, digest in stored["sha256"].items():
            assert digest == cache.sha256_file(folder / name)
    assert "sha256" not in trained["clf"].info and "sha256" not in trained["sae"].info


# ------------------------------------------------------------------------------ flipped bytes, truncation


@pytest.mark.parametrize("key,file", [("clf", "model.safetensors"),
                                      ("ddpm", "unet/diffusion_pytorch_model.safetensors")])
@pytest.mark.parametrize("fault", [_flip, _truncate])
def test_a_damaged_zoo_file_is_refused_naming_it(trained, tmp_path, monkeypatch, key, file, fault):
    root = _copy(trained, tmp_path, key)
    folder = root / trained[key].path.name
    fault(folder / file)
    _no_training(monkeypatch)
    name = trained[key].name
    with pytest.raises(cache.CacheError, match=re.escape(f"{folder / file} is corrupt: its sha256 is ")
                       + r"[0-9a-f]{16}…, its record " + re.escape(str(folder / "config.json")) + r" says .*"
                       + _rebuild(folder, f"get_model({name!r}) trains it again")):
        zoo.get_model(name, root, progress=False)


@pytest.mark.parametrize("key,file", [("clf", "model.safetensors"),
                                      ("ddpm", "unet/diffusion_pytorch_model.safetensors")])
def test_a_truncated_file_of_an_old_folder_names_the_file(trained, tmp_path, monkeypatch, key, file):
    """Without a recorded sha256 (a folder of before), truncation still names the file, not only
    safetensors' 'incomplete metadata'; the record is not sealed with the damaged file's hash."""
    root = _copy(trained, tmp_path, key)
    folder = root / trained[key].path.name
    _unseal(folder)
    _truncate(folder / file)
    _no_training(monkeypatch)
    target = folder / file if key == "clf" else folder / "unet"  # diffusers loads the unet folder
    with pytest.raises(cache.CacheError, match=re.escape(f"{target} cannot be loaded (") + r".*"
                       + r"truncated: " + _rebuild(folder, f"get_model({trained[key].name!r}) trains it again")):
        zoo.get_model(trained[key].name, root, progress=False)
    assert "sha256" not in json.loads((folder / "config.json").read_text())


def test_a_damaged_sae_is_refused_naming_the_file(trained, tmp_path, monkeypatch):
    root = _copy(trained, tmp_path, "sae")
    folder = root / trained["sae"].path.name
    _flip(folder / "sae_weights.safetensors")
    _no_training(monkeypatch)
    with pytest.raises(cache.CacheError, match=re.escape(f"{folder / 'sae_weights.safetensors'} is corrupt")
                       + r".*" + _rebuild(folder, "get_sae")):
        DS.get_sae(trained["sae_cfg"], root, progress=False)


def test_a_damaged_circles_style_model_is_refused(tmp_path, monkeypatch):
    """cache.load_or_train (the circles MLP and the 2D prior): flipped bytes and a missing record."""
    def train():
        torch.manual_seed(0)
        return torch.nn.Linear(64, 64), {"accuracy": 0.5}

    model, info = cache.load_or_train("lin", {"w": 64}, "1", torch.nn.Linear(64, 64), train, tmp_path)
    folder = cache.model_dir("lin", {"w": 64}, "1", tmp_path)
    again, info2 = cache.load_or_train("lin", {"w": 64}, "1", torch.nn.Linear(64, 64), train, tmp_path)
    assert info2 == info == {"accuracy": 0.5} and torch.equal(again.weight, model.weight)
    _flip(folder / "model.safetensors")
    with pytest.raises(cache.CacheError, match=re.escape(f"{folder / 'model.safetensors'} is corrupt")
                       + r".*" + _rebuild(folder, "the next call trains lin again")):
        cache.load_or_train("lin", {"w": 64}, "1", torch.nn.Linear(64, 64), train, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(cache.CacheError, match=re.escape(f"{folder / 'config.json'} is missing")):
        cache.load_or_train("lin", {"w": 64}, "1", torch.nn.Linear(64, 64), train, tmp_path)


# ------------------------------------------------------------------------------ a missing record


@pytest.mark.parametrize("key", ["clf", "ddpm", "sae"])
def test_a_folder_without_its_record_stops_instead_of_retraining(trained, tmp_path, monkeypatch, key):
    """Before: a zoo folder without config.json retrained and then crashed with 'Directory not empty'
    on every run; an SAE folder without equidiff.json retrained silently on every run."""
    root = _copy(trained, tmp_path, key)
    folder = root / trained[key].path.name
    record = "equidiff.json" if key == "sae" else "config.json"
    (folder / record).unlink()
    _no_training(monkeypatch)
    how = "get_sae" if key == "sae" else f"get_model({trained[key].name!r}) trains it again"
    with pytest.raises(cache.CacheError, match=re.escape(f"cache folder {folder} is incomplete: its record "
                                                         f"{folder / record} is missing") + r".*"
                       + _rebuild(folder, how)):
        if key == "sae":
            DS.get_sae(trained["sae_cfg"], root, progress=False)
        else:
            zoo.get_model(trained[key].name, root, progress=False)


def test_deleting_the_folder_rebuilds_it(trained, tmp_path):
    """What the message says works: the folder removed, the next get_model call trains it again."""
    root = _copy(trained, tmp_path, "clf")
    folder = root / trained["clf"].path.name
    (folder / "config.json").unlink()
    with pytest.raises(cache.CacheError):
        zoo.get_model(TINY_CLF, root, progress=False)
    shutil.rmtree(folder)
    again = zoo.get_model(TINY_CLF, root, progress=False)
    assert again.trained_now and again.path == folder
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.model(x), trained["clf"].model(x))  # training is deterministic


def test_a_repair_replaces_a_broken_folder_instead_of_crashing(tmp_path):
    """atomic_folder onto a half-written folder (files, no record): replaced, nothing left behind.
    Onto a complete one (another process finished first): that one is kept."""
    folder = tmp_path / "model-abc"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"half")
    (folder / "sub").mkdir()
    (folder / "sub" / "x.bin").write_bytes(b"junk")
    with cache.atomic_folder(folder) as tmp:
        (tmp / "model.safetensors").write_bytes(b"whole")
        cache.write_record(tmp, {"config": {}})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert cache.check_folder(folder)["sha256"] == {"model.safetensors": cache.sha256_file(folder / "model.safetensors")}
    assert [p.name for p in tmp_path.iterdir()] == ["model-abc"]  # no temporary or broken folder left
    with cache.atomic_folder(folder) as tmp:
        (tmp / "model.safetensors").write_bytes(b"other")
        cache.write_record(tmp, {"config": {}})
    assert (folder / "model.safetensors").read_bytes() == b"whole"
    assert cache.check_folder(tmp_path / "absent") is None
    (tmp_path / "empty").mkdir()
    assert cache.check_folder(tmp_path / "empty") is None  # an empty folder is trained into, not refused


# ------------------------------------------------------------------------------ folders of before


@pytest.mark.parametrize("key", ["clf", "ddpm", "sae"])
def test_an_old_folder_loads_bit_identically_and_is_sealed(trained, tmp_path, key):
    """A folder written before records carried sha256 loads as before (same weights, same outputs),
    gets the sha256 of its files on that first load, and is verified from then on."""
    root = _copy(trained, tmp_path, key)
    record = "equidiff.json" if key == "sae" else "config.json"
    folder = root / trained[key].path.name
    if key == "sae":
        _unseal(root / trained["sae"].vit.path.name)
    _unseal(folder, record)
    before = json.loads((folder / record).read_text())
    load = ((lambda: DS.get_sae(trained["sae_cfg"], root, progress=False)) if key == "sae"
            else (lambda: zoo.get_model(trained[key].name, root, progress=False)))
    got = load()
    assert not got.trained_now and got.path.name == trained[key].path.name  # same folder name
    ref = trained[key]
    pairs = (zip(got.sae.state_dict().values(), ref.sae.state_dict().values()) if key == "sae"
             else zip(got.model.state_dict().values(), ref.model.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in pairs)
    sealed = json.loads((folder / record).read_text())
    assert {k: v for k, v in sealed.items() if k != "sha256"} == before  # only the hashes were added
    assert sealed["sha256"] == cache.file_hashes(folder, record)
    weights = {"clf": "model.safetensors", "ddpm": "unet/diffusion_pytorch_model.safetensors",
               "sae": "sae_weights.safetensors"}[key]
    _flip(folder / weights)
    with pytest.raises(cache.CacheError, match=re.escape(f"{folder / weights} is corrupt")):
        load()


def test_an_old_read_only_folder_loads_unverified_with_a_warning(trained, tmp_path, monkeypatch):
    root = _copy(trained, tmp_path, "clf")
    folder = root / trained["clf"].path.name
    _unseal(folder)

    def read_only(path, obj):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "write_json", read_only)  # the record cannot be rewritten
    with pytest.warns(UserWarning, match=r"no sha256 in its record config.json .* loaded unverified"):
        got = zoo.get_model(TINY_CLF, root, progress=False)
    assert not got.trained_now
    assert "sha256" not in json.loads((folder / "config.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temporary file left
