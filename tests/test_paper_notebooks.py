"""The chapters' notebooks (02, 03, 04) with profile="paper", run by papermill against tiny randomly initialised
models of the paper classes (equidiff.testing.write_tiny_models) and a few query images written here:
the same cells as the CPU profile, on the paper world's loaders. Their numbers mean nothing; the
tests check that every figure is computed or is null with a reason."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
import torch
from PIL import Image

from equidiff.testing import TINY_CLASSIFIER_KWARGS, write_tiny_models
from equidiff.worlds import load_world
from equidiff.worlds.imagenet.config import paper_parameters
from equidiff.worlds.imagenet.images import query_image_files
from equidiff.worlds.imagenet.loaders import ModelNotFoundError
from equidiff.worlds.settings import SETTINGS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paper_nb")
    cfg = write_tiny_models(folder / "models")
    fields = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists: papermill parameters are literals
    fields["cache_dir"] = str(folder / "empty_hub")  # no Inception weights anywhere: FID says why
    images = folder / "query"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(24, 20), (16, 30), (20, 20)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"q{i}.png")
    return folder, fields, images


def _run(name, out, **params):
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
                        parameters={"profile": "paper", "output_dir": str(out / name), **params},
                        kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    return json.loads((out / name / "metrics.json").read_text())


def _finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _stand_in_inception(folder, fields):
    """Inception's loader pointed at the tiny ResNet: FID's code path with weights present."""
    return {**fields, "inception_model": "resnet50.a1_in1k", "inception_path": fields["classifier_path"],
            "inception_kwargs": dict(TINY_CLASSIFIER_KWARGS)}


def test_neurons_notebook_paper_profile(world, tmp_path):
    folder, fields, images = world
    m = _run("02_neurons", tmp_path, paper_config=fields, query_images=str(images), n_samples=2, steps=2,
             ddim_steps=3, batch_size=2, device="cpu")
    assert m["profile"] == "paper" and m["paper_config"]["neurons"] == [3, 17, 30]
    assert len(m["query_images"]) == 3 and len(m["neurons"]) == 3
    for n in m["neurons"]:
        assert {"channel", "concept", "alignment", "query_index", "query_label", "l2_mean", "l2_std", "l1_mean",
                "fid", "fid_real_reference", "diversity", "diversity_same_class_reference", "same_class_rate",
                "success_rate", "seconds"} <= set(n)
        assert _finite(n["l2_mean"], n["l2_std"], n["l1_mean"], n["diversity"]) and n["l2_mean"] >= 0
        assert 0 <= n["success_rate"] <= 1 and 0 <= n["query_index"] < 3 and 0 <= n["query_label"] < 1000
        assert n["n_samples"] == 2
        # no Inception weights: FID is null and says why; figures without a paper-scale reference too
        assert n["fid"] is None and "inception_v3.tv_in1k" in n["fid_reason"] and "hf download" in n["fid_reason"]
        assert n["fid_real_reference"] is None and n["fid_real_reference_reason"]
        assert n["alignment"] is None and "SemanticLens" in n["alignment_reason"]  # tiny channels: not the thesis'
    assert [n["channel"] for n in m["neurons"]] == [3, 17, 30]
    for f in ("top_images.png", "figure_4_1.png", "figure_4_2.png"):
        assert (tmp_path / "02_neurons" / f).stat().st_size > 5_000


def test_classifier_notebook_paper_profile_with_fid(world, tmp_path):
    folder, fields, images = world
    config = tmp_path / "paper.json"  # paper_config as a JSON file; FID through a stand-in feature model
    config.write_text(json.dumps(_stand_in_inception(folder, fields)))
    m = _run("04_classifier", tmp_path, paper_config=str(config), query_images=str(images), query_index=1,
             n_samples=2, steps=2, ddim_steps=3, cutoffs=[0.3, 0.6], device="cpu")
    assert m["modes"] == ["class_probability", "distribution"]
    names = ["equidiff", "equidiff_no_lowpass", "pixel", "pixel_fourier"]  # guidance needs a pixel prior
    assert [r["name"] for r in m["methods"]] == names * 2
    for r in m["methods"]:
        assert {"name", "success_rate", "l2_mean", "kl_mean", "high_freq_share", "fid", "diversity", "seconds"} <= set(r)
        assert _finite(r["l2_mean"], r["kl_mean"], r["high_freq_share"], r["diversity"], r["fid"])
        assert 0 <= r["success_rate"] <= 1 and r["l2_mean"] >= 0 and r["kl_mean"] >= -1e-6 and r["n"] == 2
        assert r["fid_reason"] is None and "resnet50.a1_in1k pool features" == r["fid_features"]
    assert len(m["query"]["probs"]) == 1000 and m["query"]["index"] == 1
    assert m["query_images"][1].endswith("q1.png") and m["paper_config"]["batch_size"] == 4
    assert m["reference"]["fid"] is None and m["reference"]["fid_reason"]
    c = m["cutoff_curve"]
    assert c["cutoffs"] == [0.3, 0.6] and len(c["samples"]["mean"]) == 2
    for f in ("figure_4_4.png", "figure_4_5.png", "methods.png", "convergence.png"):
        assert (tmp_path / "04_classifier" / f).stat().st_size > 5_000


def test_bad_paper_parameter_stops_the_notebook_naming_it(world, tmp_path):
    _, fields, _ = world
    missing = tmp_path / "no_such_folder"
    with pytest.raises(pm.PapermillExecutionError) as err:
        _run("02_neurons", tmp_path, paper_config=fields, query_images=str(missing), n_samples=2, steps=1)
    assert f"query_images: folder or file {missing} does not exist" in str(err.value)


def test_paper_parameters_are_checked(world, tmp_path):
    from equidiff.chapters import classifier as outputs
    from equidiff.chapters import neurons

    _, fields, images = world
    with pytest.raises(ValueError, match="query_images must be a folder of images or a list of image files "
                                         "for profile 'paper'.*got None"):
        query_image_files(None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="query_images: no images in folder"):
        query_image_files(str(empty))
    assert [f.name for f in query_image_files([str(images / "q1.png")])] == ["q1.png"]
    with pytest.raises(FileNotFoundError, match="paper_config: file .*missing.json does not exist"):
        paper_parameters(str(tmp_path / "missing.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="paper_config must be a JSON file holding one object"):
        paper_parameters(str(tmp_path / "list.json"))
    with pytest.raises(ValueError, match="paper_config must be None, the path of a JSON file"):
        paper_parameters(3)
    with pytest.raises(ValueError, match=r"paper_config: unknown PaperConfig field\(s\) \['batchsize'\]"):
        paper_parameters({"batchsize": 2})
    with pytest.raises(ValueError, match="paper_config: batch_size must be an integer ≥ 1, got 0"):
        paper_parameters(fields, batch_size=0)
    cfg = paper_parameters(fields, batch_size=3, bf16=True, device="cpu", ddim_steps=2)
    assert (cfg.batch_size, cfg.bf16, cfg.device, cfg.ddim_steps) == (3, True, "cpu", 2)
    assert paper_parameters(fields).batch_size == fields["batch_size"]  # None keeps the config's
    # the CPU worlds refuse paper-only parameters instead of ignoring them
    with pytest.raises(ValueError, match="query_images is a parameter of the 'paper' world only; for the 'smoke' world"):
        load_world("smoke", query_images=str(images))
    w = load_world("paper", paper_config=fields, query_images=str(images))
    with pytest.raises(ValueError, match=r"query_index must be an integer in \[0, 2\] \(the 3 images"):
        outputs.load_query(w, 3)
    with pytest.raises(ValueError, match=r"neurons must be 'auto' or a non-empty list of channel integers in \[0, 31\]"):
        neurons.choose_neurons(w, neurons.neuron_table(w), [1656])
    with pytest.raises(ValueError, match="methods must be 'all' or names among .* in world 'paper'"):
        outputs.resolve_methods(["equidiff", "guidance"], w)


def test_profiles_accept_paper():
    assert SETTINGS["paper"]["neurons"]["n_samples"] == 32 and SETTINGS["paper"]["neurons"]["steps"] == 1024
    assert SETTINGS["paper"]["classifier"]["ddim_steps"] == 25
    with pytest.raises(ValueError, match=r"profile must be one of \('cpu', 'smoke', 'paper'\), got 'gpu'"):
        load_world("gpu")


# The per-feature fields of the digits world's metrics.json (equidiff.chapters.sae.run_feature): the paper profile
# keeps every one, null with <field>_reason where it cannot be computed.
SAE_FEATURE_FIELDS = (
    "feature", "concept", "selectivity", "firing_rate", "objective", "reduce", "m", "query_index", "query_label",
    "target_activation", "n_samples", "l2_mean", "l2_std", "l2_median", "l2_max", "l2_relative", "success_rate",
    "steps", "seconds", "sample_label_histogram", "real_label_histogram", "real_true_label_histogram",
    "sample_label_histogram_converged", "confidence_threshold", "sample_label_histogram_confident",
    "sample_confident_rate", "real_confident_rate", "start_confident_rate", "sample_vit_label_histogram",
    "sample_vit_concept_rate", "n_top", "sample_concept_rate", "real_concept_rate", "sample_classes", "real_classes",
    "sample_activation_mean",
)


def test_sae_notebook_paper_profile(world, tmp_path):
    folder, fields, images = world
    m = _run("03_sae", tmp_path, paper_config=fields, query_images=str(images), n_features=2, min_rate=0.0,
             max_rate=1.0, n_samples=2, steps=2, ddim_steps=3, tau=1e-9, batch_size=2, device="cpu")
    assert m["profile"] == "paper" and m["paper_config"]["sae_path"] == fields["sae_path"]
    # the SAE's layer, kind and width come from its folder (cfg.json), not the digits parameters (layer=2)
    assert (m["layer"], m["sae_kind"], m["expansion"]) == (1, "relu", 4)
    assert m["models"]["vit"] == "vit_base_patch32_clip_224.datacompxl" and m["models"]["sae_folder"] == "sae"
    assert m["models"]["classifier"] is None and "no judge classifier" in m["models"]["classifier_reason"]
    assert m["models"]["sae_hook_name"] == "blocks.1.hook_resid_post"
    q = m["sae"]  # quality on every token of the 3 query images: 16 patches of 8 px at 32 px + the class token
    assert (q["tokens_per_image"], q["n_test_tokens"], q["d_in"], q["d_sae"]) == (17, 51, 16, 64)
    assert _finite(q["variance_explained"], q["l0"]) and 0 <= q["dead_fraction"] <= 1 and "query images" in q["evaluated_on"]
    assert len(m["query_images"]) == 3 and len(m["features"]) == 2
    for f in m["features"]:
        assert set(SAE_FEATURE_FIELDS) <= set(f)
        for k in SAE_FEATURE_FIELDS:
            if f[k] is None:
                assert f[f"{k}_reason"], k  # every figure not computed says why
        assert f["concept"] is None and "no concept labels" in f["concept_reason"]
        assert f["sample_label_histogram"] is None and "no judge classifier" in f["sample_label_histogram_reason"]
        assert _finite(f["l2_mean"], f["l2_std"], f["target_activation"], f["sample_activation_mean"])
        assert f["n_samples"] == 2 and f["m"] == 1 and f["n_top"] == 3 and 0 <= f["query_index"] < 3
        assert f["success_rate"] == 0.0 and f["steps"] is None and "no sample reached τ" in f["steps_reason"]
        assert f["query_file"] == m["query_images"][f["query_index"]] and 0 <= f["firing_rate"] <= 1
        assert f["fid"] is None and "inception_v3.tv_in1k" in f["fid_reason"] and "hf download" in f["fid_reason"]
    # "auto": the features with the highest mean activation over the query images, best first
    assert m["features"][0]["feature"] != m["features"][1]["feature"]
    for name in ("top_images.png", "figure_4_3.png"):
        assert (tmp_path / "03_sae" / name).stat().st_size > 5_000
    assert not (tmp_path / "03_sae" / "label_histograms.png").exists()  # no labels: no histogram figure


def test_sae_paper_world_errors_and_choices(world, tmp_path):
    from equidiff.chapters import sae
    from equidiff.sae import choose_active_features, sae_feature

    _, fields, images = world

    def load(**changes):  # the paper world's SAE part: the SAE of sae_path on the ViT
        return sae.load_vit_sae(load_world("paper", paper_config={**fields, **changes}, query_images=str(images)))

    # the ViT's weights are missing: the error names the model, where it looked and the fetch command
    missing = tmp_path / "weights" / "vit.safetensors"
    with pytest.raises(ModelNotFoundError) as err:
        load(vit_path=str(missing))
    msg = str(err.value)
    assert "'vit_base_patch32_clip_224.datacompxl'" in msg and f"{missing} (the path given: does not exist)" in msg
    assert (f"hf download timm/vit_base_patch32_clip_224.datacompxl model.safetensors --local-dir {missing.parent}"
            in msg)
    hub = tmp_path / "empty_hub"
    with pytest.raises(ModelNotFoundError) as err:
        load(vit_path=None, cache_dir=str(hub))
    msg = str(err.value)
    assert f"{hub} (Hugging Face cache: no timm/vit_base_patch32_clip_224.datacompxl/model.safetensors" in msg
    assert f"hf download timm/vit_base_patch32_clip_224.datacompxl model.safetensors --cache-dir {hub}" in msg
    # the SAE: none named, a missing folder, another layer, a hook point this chapter does not read
    with pytest.raises(ValueError, match="sae_path: PaperConfig.sae_path must name a folder .* got None"):
        load(sae_path=None)
    with pytest.raises(FileNotFoundError, match=f"sae_path: SAE folder {tmp_path / 'nope'} does not exist"):
        load(sae_path=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"the SAE was trained on layer 1 \(blocks.1.hook_resid_post\), not layer 0"):
        load(sae_layer=0)
    other = tmp_path / "mlp_sae"
    shutil.copytree(fields["sae_path"], other)
    cfg = json.loads((other / "cfg.json").read_text())
    (other / "cfg.json").write_text(json.dumps({**cfg, "hook_name": "blocks.1.hook_mlp_out"}))
    with pytest.raises(ValueError, match="sae_path: the SAE reads 'blocks.1.hook_mlp_out'; this chapter reads the "
                                         "residual stream"):
        load(sae_path=str(other))
    # the digits worlds' SAE recipe parameters are refused at paper scale, by name
    w = load_world("paper", paper_config={**fields, "sae_features": [5, 7]}, query_images=str(images))
    with pytest.raises(ValueError, match="expansion is a parameter of the digits worlds"):
        sae.load_vit_sae(w, expansion=8)
    # the features: given, configured (PaperConfig.sae_features) or the most active; bad ones named
    part = sae.load_vit_sae(w)
    x = w.images[:2]  # the SAE reads the wrapped ViT's blocks[1] after CLIP normalisation and the resize
    wrapped, inner = (sae_feature(v, 1, part.sae, [5, 7], "mean") for v in (part.vit, part.vit.model))
    assert torch.allclose(wrapped(x), inner(part.vit.preprocess(x))) and wrapped(x).shape == (2, 2)
    table = sae.measure_features(w, part)
    assert [s.feature for s in sae.choose(w, part, table, "auto", n_features=1)] == [5, 7]
    assert [(s.feature, s.concept, s.selectivity) for s in sae.choose(w, part, table, [9, 2])] == [(9, None, None),
                                                                                                    (2, None, None)]
    with pytest.raises(ValueError, match=r"features must be 'auto' or a non-empty list of feature indices in \[0, 63\]"):
        sae.choose(w, part, table, [64])
    with pytest.raises(ValueError, match="readout must be"):
        sae.measure_features(w, part, readout="tokens")
    acts = sae.measure_features(w, part, readout="mean").activations  # (3, 64) image-level activations
    auto = choose_active_features(acts, "auto", k=3, min_rate=0.0, max_rate=1.0)
    means = acts.mean(0)
    assert [s.feature for s in auto] == [int(i) for i in torch.argsort(means, descending=True)[:3]]
    assert choose_active_features(acts, "auto", k=2, min_rate=0.0, max_rate=1.0, configured=(4,))[0].feature == 4
    with pytest.raises(ValueError, match=r"no SAE feature is active on a share of the 3 query images in \[0.4, 0.6\]"):
        choose_active_features(acts, "auto", min_rate=0.4, max_rate=0.6)
