"""The shipped models (issue 15): committed in data/models with cards and sha256, never retrained silently."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from equidiff import cache
from equidiff.worlds.digits import models as zoo
from equidiff.worlds.digits import ship
from equidiff.worlds.digits.recipes import PRESETS, train_ddpm

TINY = "digits-classifier-tiny"


def test_every_shipped_file_matches_the_manifest():
    problems = ship.verify_shipped()
    assert problems == [], problems


def test_every_shipped_model_has_a_card_naming_its_files_and_the_retrain_command():
    manifest = json.loads((cache.SHIPPED / cache.MANIFEST).read_text())
    roles = {e["role"] for e in manifest["models"].values()}
    assert {"classifier", "ddpm", "vit", "sae", "shortcut_ddpm", "shortcut_classifier", "control_classifier",
            "circles_mlp", "toy_ddpm"} <= roles
    for folder, entry in manifest["models"].items():
        card = (cache.SHIPPED / folder / entry["card"]).read_text()
        assert "make models" in card and "CC BY-SA" not in folder
        for name, sha in entry["sha256"].items():
            assert f"`{name}`: `{sha}`" in card
    gates = [e["quality"] for e in manifest["models"].values() if e["role"] in ("ddpm", "shortcut_ddpm")]
    assert len(gates) == 2
    for q in gates:  # the record says what was measured, and its verdict follows from the gate's thresholds
        assert q["n"] >= 1000 and sum(q["class_counts"]) == q["n"]
        assert q["passed"] == (q["share_confident"] >= ship.GATE_SHARE and q["share_closer_than_real"] <= ship.GATE_COPIES)
        assert q["fid"] > q["fid_real_floor"] > 0


def test_the_cpu_world_loads_shipped_models_without_training(monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("a shipped model was retrained")

    monkeypatch.setattr(zoo, "train_ddpm", no_training)
    monkeypatch.setattr(zoo, "train_classifier", no_training)
    for name in ("digits-classifier", "digits-ddpm", "digits-vit"):
        m = zoo.get_model(name)
        assert cache.is_shipped(m.path) and not m.trained_now


@pytest.fixture
def fake_shipped(tmp_path, monkeypatch):
    """A data/models of one tiny classifier, in a temporary folder."""
    root = tmp_path / "models"
    trained = zoo.get_model(TINY, tmp_path / "cache", progress=False)
    shutil.copytree(trained.path, root / trained.path.name)
    cache.write_json(root / cache.MANIFEST, {"models": {trained.path.name: {"sha256": {}}}})
    monkeypatch.setattr(cache, "SHIPPED", root)
    return root / trained.path.name


def test_a_missing_shipped_model_is_an_error_naming_make_models(fake_shipped):
    shutil.rmtree(fake_shipped)
    with pytest.raises(cache.CacheError, match="is missing.*make models"):
        zoo.get_model(TINY)


def test_a_corrupted_shipped_file_names_the_file_git_and_make_models(fake_shipped):
    assert cache.is_shipped(zoo.get_model(TINY).path)  # found there, not retrained
    weights = fake_shipped / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(cache.CacheError, match=r"model\.safetensors is corrupt.*git checkout.*make models"):
        zoo.get_model(TINY)


def test_ddpm_training_killed_and_resumed_ends_with_the_same_weights(tmp_path):
    cfg = dataclasses.replace(PRESETS["digits-ddpm-tiny"](), train_steps=7)
    whole, _, _ = train_ddpm(cfg)

    class Killed(Exception):
        pass

    def kill_at_5(step):
        if step == 5:
            raise Killed

    ckpt = tmp_path / "run.ckpt.pt"
    with pytest.raises(Killed):
        train_ddpm(cfg, checkpoint=ckpt, checkpoint_every=2, on_step=kill_at_5)
    resumed, _, info = train_ddpm(cfg, checkpoint=ckpt, checkpoint_every=2)
    assert info["resumed_from"] == 4
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    other = dataclasses.replace(cfg, seed=1)
    with pytest.raises(ValueError, match="another config"):
        train_ddpm(other, checkpoint=ckpt)


def test_ddpm_training_does_not_read_the_sampler_spacing():
    """timestep_spacing only shapes the k-step sampler: the shipped prior was trained under "trailing" and
    relabelled "leading" (see its card), which is exact only if training gives the same weights for both."""
    cfg = dataclasses.replace(PRESETS["digits-ddpm-tiny"](), train_steps=3)
    a, _, _ = train_ddpm(dataclasses.replace(cfg, timestep_spacing="leading"))
    b, _, _ = train_ddpm(dataclasses.replace(cfg, timestep_spacing="trailing"))
    c, _, _ = train_ddpm(dataclasses.replace(cfg, timestep_spacing="leading", seed=1))
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


@pytest.mark.slow
def test_make_models_recipe_on_the_tiny_presets(tmp_path):
    out = ship.train_all("smoke", tmp_path)
    assert ship.verify_shipped(tmp_path) == []
    assert len(out["models"]) == 9 and set(out["gates"]) == {"ddpm", "shortcut_ddpm"}
    assert not (tmp_path / ".retrain").exists()


def test_rewriting_the_cards_keeps_a_machine_noted_earlier(tmp_path):
    from types import SimpleNamespace

    here = {"cpu": "Test CPU", "cores": 2}
    zoo = SimpleNamespace(path=tmp_path, info={"train_seconds": 1.0})  # a record without the machine
    assert ship._machine_line(zoo, here, trained_here=False) == ship.NOT_RECORDED
    noted = ship._machine_line(zoo, here, trained_here=True)
    assert noted == "cpu Test CPU, cores 2, noted when the card was written"
    # the card written then is what a later rewrite without --trained-here reads back
    (tmp_path / "MODEL_CARD.md").write_text(f"# Model card: x\n\n{ship.MACHINE_PREFIX}{noted}\n")
    assert ship._machine_line(zoo, {"cpu": "Other CPU"}, trained_here=False) == noted
    # a card that recorded nothing gives nothing to keep
    (tmp_path / "MODEL_CARD.md").write_text(f"{ship.MACHINE_PREFIX}{ship.NOT_RECORDED}\n")
    assert ship._machine_line(zoo, here, trained_here=False) == ship.NOT_RECORDED
    # the training record's machine wins over any card
    trained = SimpleNamespace(path=tmp_path, info={"machine": {"cpu": "AMD EPYC", "cores": 2}})
    assert ship._machine_line(trained, here, trained_here=True) == "cpu AMD EPYC, cores 2"
