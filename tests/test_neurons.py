"""Neuron chapter (thesis Section 4.2): concepts, alignment, selection, the protocol on tiny models of
the digits world (``smoke``) and of the paper world (random ResNet-50 + latent DiT), one code path."""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from equidiff.chapters import neurons, neurons_prose
from equidiff.core import units
from equidiff.core.metrics import classifier_features, diversity, l1_l2
from equidiff.core.objectives import neuron_map
from equidiff.report.tables import html_table
from equidiff.run import pool
from equidiff.worlds import load_world
from equidiff.worlds.digits import concepts
from equidiff.worlds.settings import SETTINGS


def _blank():
    return -torch.ones(16, 16)


def _ring():
    x = _blank()
    x[3:13, 3:13] = 1.0
    x[5:11, 5:11] = -1.0  # a 2-pixel ring around a 6×6 hole
    return x


def _bar():
    x = _blank()
    x[7:9, 2:14] = 1.0  # two rows of 12 ink pixels
    return x


def _stroke():
    x = _blank()
    x[1:15, 7:9] = 1.0  # a column of 14 ink pixels
    return x


def _stack(*ims):
    return torch.stack(ims)[:, None]  # (N, 1, 16, 16)


def test_concepts_on_drawn_shapes():
    c, names = concepts.concept_labels(_stack(_ring(), _bar(), _stroke(), _blank()))
    assert names == list(concepts.STROKE_CONCEPTS)
    col = {n: c[:, i] for i, n in enumerate(names)}
    assert col["closed loop"].tolist() == [True, False, False, False]
    assert col["two loops"].tolist() == [False, False, False, False]
    assert col["horizontal bar"].tolist() == [True, True, False, False]  # the ring's top row: 10 pixels
    assert col["vertical stroke"].tolist() == [False, False, True, False]


def test_two_loops_and_open_ring():
    eight = _blank()
    eight[1:15, 5:11] = 1.0
    eight[3:6, 7:9] = -1.0
    eight[10:13, 7:9] = -1.0
    assert concepts.closed_loops(eight.numpy()) == 2
    broken = _ring()
    broken[3:5, 7:9] = -1.0  # a gap opens the ring to the border
    assert concepts.closed_loops(broken.numpy()) == 0


def test_concepts_with_labels_put_digits_first():
    c, names = concepts.concept_labels(_stack(_ring(), _bar()), labels=torch.tensor([0, 7]))
    assert names[:10] == [f"digit {d}" for d in range(10)] and len(names) == 14
    assert c[0, 0] and c[1, 7] and c[:, :10].sum() == 2
    with pytest.raises(ValueError, match="labels must be one label per image"):
        concepts.concept_labels(_stack(_ring(), _bar()), labels=[0])
    with pytest.raises(ValueError, match=r"images must be a tensor of grey images, shape \(N, 1, H, W\)"):
        concepts.concept_labels(torch.zeros(2, 3, 16, 16))


def test_alignment_is_a_correlation_and_finds_a_planted_neuron():
    rng = np.random.default_rng(0)
    concepts = rng.random((500, 3)) < 0.3
    acts = rng.normal(size=(500, 6))
    acts[:, 4] = 2.0 * concepts[:, 1] + 0.1 * rng.normal(size=500)  # channel 4 codes concept 1
    r = units.alignment_scores(acts, concepts)
    assert r.shape == (6, 3)
    assert np.all(r >= -1) and np.all(r <= 1)
    assert np.unravel_index(np.argmax(r), r.shape) == (4, 1) and r[4, 1] > 0.95
    # equals Pearson's r (numpy's) for a pair
    assert np.isclose(r[2, 0], np.corrcoef(acts[:, 2], concepts[:, 0])[0, 1])
    const = units.alignment_scores(np.ones((10, 2)), rng.random((10, 1)) < 0.5)
    assert np.all(const == 0)  # undefined correlation of a constant channel reads 0, not NaN


def _table(scores, names):
    n = 4
    return neurons.AlignmentTable(np.asarray(scores, dtype=float), names, torch.randn(n, len(scores)),
                                  np.zeros((n, len(names)), bool), torch.zeros(n, 1, 16, 16),
                                  torch.zeros(n, dtype=torch.long))


def test_select_neurons_distinct_concepts_and_channels():
    # channel 0 is best at both concepts a and b: the second pick must take another channel
    t = _table([[0.9, 0.85, 0.1], [0.2, 0.8, 0.1], [0.1, 0.1, 0.5]], ["a", "b", "c"])
    sel = neurons.select_neurons(t, 3)
    assert [(s.channel, s.concept) for s in sel] == [(0, "a"), (1, "b"), (2, "c")]
    assert len({s.concept for s in sel}) == 3
    assert sel[0].alignment == pytest.approx(0.9)
    only = neurons.select_neurons(t, 1, concepts=["c"])
    assert (only[0].channel, only[0].concept) == (2, "c")
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\]"):
        neurons.select_neurons(t, 4)
    with pytest.raises(ValueError, match="concepts must be names among"):
        neurons.select_neurons(t, 1, concepts=["zebra"])


def test_top_activating_and_errors():
    t = _table([[0.1], [0.2]], ["a"])
    t.activations = torch.tensor([[0.0, 1.0], [3.0, -1.0], [2.0, 5.0], [1.0, 0.0]])
    idx, vals = neurons.top_activating(t, 0, 2)
    assert idx.tolist() == [1, 2] and vals.tolist() == [3.0, 2.0]
    with pytest.raises(ValueError, match=r"channel must be an integer in \[0, 1\]"):
        neurons.top_activating(t, 2)
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 4\]"):
        neurons.top_activating(t, 0, 0)


def test_greedy_distinct_pairs_floor_and_ties():
    s = np.array([[0.5, 0.5], [0.5, 0.1], [0.05, 0.2]])
    assert units.greedy_distinct_pairs(s, 3) == [(0, 0), (2, 1)]  # ties keep index order; rows/columns once
    assert units.greedy_distinct_pairs(s, 3, floor=0.3) == [(0, 0)]  # nothing below the floor


def test_html_table_escapes():
    html = html_table(("a", "b"), [("<x>", 1)], note="τ & co")
    assert "<td>&lt;x&gt;</td>" in html and "τ &amp; co" in html and html.count("<tr>") == 2


def test_world_settings_of_the_chapter():
    # cpu: the thesis' budget at T = 10 (the book's reference was built with it); paper: the thesis' protocol
    assert {k: SETTINGS["cpu"]["neurons"][k] for k in ("n_samples", "steps", "ddim_steps")} == \
        {"n_samples": 32, "steps": 1024, "ddim_steps": 10}
    assert {k: SETTINGS["paper"]["neurons"][k] for k in ("n_samples", "steps", "ddim_steps")} == \
        {"n_samples": 32, "steps": 1024, "ddim_steps": 25}
    assert SETTINGS["smoke"]["neurons"]["n_samples"] < 32


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with pool.torch_threads(1):
        assert torch.get_num_threads() == 1
    with pool.torch_threads(None):
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="workers must be an integer ≥ 1, got 0"):
        pool.run_pool(lambda c, item, report: item, [1, 2], 0)


_ORPHAN_SCRIPT = """
import os, time
from equidiff.run.pool import run_pool

def init():
    return None

def job(context, item, report):
    report(os.getpid())
    time.sleep(120)
    return item

if __name__ == "__main__":
    run_pool(job, [0, 1], 2, init=init, on_report=lambda i, pid: print(pid, flush=True))
"""


def _running(pid: int) -> bool:
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited (nobody has reaped it yet)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_exit_when_the_pool_process_is_killed(tmp_path):
    script = tmp_path / "orphans.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(parent.stdout.readline()) for _ in range(2)]  # each worker reports its pid, then sleeps
        assert all(_running(p) for p in pids)
    finally:
        parent.kill()  # SIGKILL: the pool is never shut down
        parent.wait()
    deadline = time.monotonic() + 15
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(p) for p in pids), "pool workers outlived the killed process that started them"


# ------------------------------------------------------------------ the digits world, tiny models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("zoo")
    world = load_world("smoke", cache_dir=cache)  # tiny presets, trained in seconds into this cache
    return world, neurons.neuron_table(world)


def test_alignment_table_on_a_real_model(tiny):
    world, table = tiny
    n_ch = table.n_channels
    assert table.scores.shape == (n_ch, 14) and table.labels.shape == (len(world.images), 14)
    assert np.all(np.abs(table.scores) <= 1)
    assert [r["concept"] for r in table.rows()] == list(concepts.CONCEPTS)
    assert neurons.alignment_rows(world, table) == table.rows()
    ch, r = table.best_channel("closed loop")
    assert r == pytest.approx(table.scores[:, 10].max())
    # the activations are the channel means of the layer's input (pre-activation), as the objective reads it
    obj = neuron_map(world.classifier, world.neuron_layer, 3, reduce="mean", read="input")
    with torch.no_grad():
        assert torch.allclose(obj(world.images[:5])[:, 0], table.activations[:5, 3], atol=1e-5)
    html = neurons.alignment_html(world, table)
    assert html.count("<tr>") == 15 and "closed loop" in html


def test_choose_neurons(tiny):
    world, table = tiny
    auto = neurons.choose_neurons(world, table, "auto", "strokes", k=2)
    assert len(auto) == 2 and all(s.concept in concepts.STROKE_CONCEPTS for s in auto)
    given = neurons.choose_neurons(world, table, [5, 1], "digits")
    assert [s.channel for s in given] == [5, 1] and all(s.concept.startswith("digit") for s in given)
    assert given[0].alignment == pytest.approx(table.scores[5, :10].max())
    with pytest.raises(ValueError, match=r"concept_set must be one of \('all', 'digits', 'strokes'\), got 'shapes'"):
        neurons.choose_neurons(world, table, "auto", "shapes")
    with pytest.raises(ValueError, match=rf"neurons must be 'auto' or a non-empty list of channel integers in "
                                         rf"\[0, {table.n_channels - 1}\] \(channels of layer4.0.act2\), got \[10000\]"):
        neurons.choose_neurons(world, table, [10_000])
    with pytest.raises(ValueError, match="neurons must be 'auto' or a non-empty list"):
        neurons.choose_neurons(world, table, "most aligned")
    rows = neurons.top_image_rows(world, table, given, n=4)
    idx, _ = neurons.top_activating(table, 5, 4)
    assert torch.equal(rows[0]["images"], world.images[idx]) and torch.equal(rows[0]["labels"], world.labels[idx])


def test_run_neuron_protocol(tiny):
    world, table = tiny
    sel = neurons.select_neurons(table, 1)[0]
    run = neurons.run_neuron(world, table, sel.channel, concept=sel.concept, n_samples=3, steps=2, ddim_steps=2)
    m = run.metrics
    idx, _ = neurons.top_activating(table, sel.channel, 1)
    assert run.query_index == int(idx[0]) and torch.equal(run.query, world.images[idx])  # the strongest image
    assert run.query_label == int(world.labels[idx[0]])
    assert run.result.measurements.shape == (3, 16)  # the whole 4×4 map
    assert run.result.config.lowpass_cutoff is None and run.result.config.steps == 2
    # L2 is the Algorithm 1 loss (no low-pass term here), per sample
    assert m["l2_mean"] == pytest.approx(float(run.result.loss.mean()), rel=1e-5)
    assert m["alignment"] == pytest.approx(sel.alignment) and "alignment_reason" not in m
    # FID = the world's FID of the samples against the held-out digits, and its real-image floor
    x = run.result.x.clamp(-1, 1)
    assert m["fid"] == world.fid(x, world.test_images, "check").value and m["fid_n_reference"] == len(world.test_images)
    assert m["fid_real_reference"] is not None and m["diversity_same_class_reference"] is not None
    assert m["fid"] >= 0 and m["diversity"] > 0 and m["query_file"] is None
    # the judge's confident same-class share: its own softmax, thresholded at 0.9
    p = torch.softmax(world.judge(x), 1)
    want = ((p.argmax(1) == run.query_label) & (p.max(1).values >= 0.9)).float().mean()
    assert m["confident_class_rate"] == pytest.approx(float(want))
    # the diversity reference: as many held-out digits of the query's class (the draw after the FID floor's)
    gen = torch.Generator().manual_seed(0)
    torch.randperm(len(table.images), generator=gen)
    same = world.test_images[world.test_labels == run.query_label]
    same = same[torch.randperm(len(same), generator=gen)[:3]]
    assert m["diversity_reference_images"] == "the held-out test images"
    assert m["diversity_same_class_reference"] == pytest.approx(diversity(classifier_features(world.classifier, same)))
    # the near-map reference: the 3 other searched images whose maps come nearest the query's, by the loss
    maps = run.result.target.reshape(1, -1)
    with torch.no_grad():
        obj = neuron_map(world.classifier, world.neuron_layer, sel.channel, read=world.neuron_read)
        loss = ((obj(table.images) - maps) ** 2).sum(1)
    loss[run.query_index] = float("inf")
    near = torch.argsort(loss)[:3]
    assert m["near_map_l2_median"] == pytest.approx(float(loss[near].median()), rel=1e-5)
    assert m["diversity_near_map_reference"] == pytest.approx(
        diversity(classifier_features(world.classifier, table.images[near])))
    html = neurons.table_html(world, [run], 0.01)
    assert html.count("<tr>") == 3 and f"#{sel.channel}" in html and "Average" in html  # header, neuron, average
    # the "L2 / Σn(x*)²" column shows the value (it printed 0.000 for values near 3e-5)
    assert f"<td>{m['l2_relative']:.2e}</td>" in html and "<td>0.000</td>" not in html
    assert "real-image floor" in html and "16 map values" in html
    with pytest.raises(ValueError, match="n_samples must be an integer ≥ 2"):
        neurons.run_neuron(world, table, 0, n_samples=1)
    with pytest.raises(ValueError, match="ddim_steps must be an integer ≥ 1, got 0"):
        neurons.run_neuron(world, table, 0, n_samples=2, ddim_steps=0)
    with pytest.raises(ValueError, match=r"channel must be an integer in \[0, "):
        neurons.run_neuron(world, table, 10_000, n_samples=2)
    with pytest.raises(ValueError, match="concept must be one of"):
        neurons.run_neuron(world, table, 0, concept="zebra", n_samples=2)
    with pytest.raises(ValueError, match="lowpass_cutoff must be None or a number in"):
        neurons.run_neuron(world, table, 0, n_samples=2, lowpass_cutoff=2.0)


def test_run_neuron_takes_the_world_defaults_and_the_lowpass_term(tiny):
    world, table = tiny
    d = world.defaults["neurons"]
    run = neurons.run_neuron(world, table, 0, lowpass_cutoff=0.5)  # n_samples, steps, ddim_steps: the world's
    assert run.metrics["n_samples"] == d["n_samples"] and run.result.config.steps == d["steps"]
    assert run.result.config.lowpass_cutoff == 0.5
    # the dual loss of Algorithm 1: the filtered term adds to the unfiltered L2 of every sample
    _, l2 = l1_l2(run.result.measurements, run.result.target)
    assert torch.all(run.result.loss >= l2 - 1e-6) and torch.any(run.result.loss > l2 + 1e-6)


# ------------------------------------------------------------------ run_all: neurons side by side


def test_run_all_gives_the_same_samples_for_every_worker_count(tiny, capsys):
    world, table = tiny
    chosen = neurons.select_neurons(table, 2)
    kw = dict(n_samples=3, steps=3, ddim_steps=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = neurons.run_all(world, table, chosen, workers=1, **kw)  # this process, one torch thread
        assert torch.get_num_threads() == 2  # the caller's thread count is restored
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "invariant samples below τ" in err and "2/2 neurons done" in err  # the progress line (a text bar here)
    # two spawned worker processes, each rebuilding the world from its name and parameters (the cache_dir)
    two = neurons.run_all(world, table, chosen, workers=2, progress=False, **kw)
    assert [r.channel for r in one] == [r.channel for r in two] == [s.channel for s in chosen]
    for a, b in zip(one, two):
        assert torch.equal(a.result.x, b.result.x) and torch.equal(a.result.loss, b.result.loss)
        assert {k: v for k, v in a.metrics.items() if k != "seconds"} == \
               {k: v for k, v in b.metrics.items() if k != "seconds"}


def test_run_all_rejects_bad_settings_before_starting_workers(tiny):
    world, table = tiny
    chosen = neurons.select_neurons(table, 2)
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match=rf"workers must be None or an integer ≥ 1, got {bad!r}"):
            neurons.run_all(world, table, chosen, workers=bad, n_samples=3, steps=1, ddim_steps=2)
    with pytest.raises(ValueError, match="n_samples must be an integer ≥ 2"):
        neurons.run_all(world, table, chosen, workers=2, n_samples=1, steps=1, ddim_steps=2)
    with pytest.raises(ValueError, match="tau must be"):
        neurons.run_all(world, table, chosen, workers=2, n_samples=3, steps=1, ddim_steps=2, tau=-1.0)
    with pytest.raises(TypeError, match="run_all got an unexpected setting 'step'"):
        neurons.run_all(world, table, chosen, workers=2, step=3)


def test_run_all_from_an_unguarded_script_says_what_to_do(tiny, tmp_path):
    world, _ = tiny
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import dataclasses\n"
        "from equidiff.chapters import neurons\n"
        "from equidiff.worlds import load_world\n"
        f"world = load_world('smoke', cache_dir={str(world.params['cache_dir'])!r})\n"
        "world = dataclasses.replace(world, images=world.images[:60], labels=world.labels[:60])  # a quick table\n"
        "table = neurons.neuron_table(world)\n"
        "neurons.run_all(world, table, neurons.select_neurons(table, 2), workers=2, progress=False, n_samples=2, "
        "steps=1, ddim_steps=2)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "must sit under `if __name__ == '__main__':`" in done.stderr and "workers=1" in done.stderr


def _shown(value) -> str:
    """What ``{glue:text}`key``` shows for a glued value (myst-nb reads glued text through literal_eval)."""
    from myst_nb.core.variables import format_plain_text

    return format_plain_text(str(value), "")


def test_prose_values_state_what_the_run_found(tiny):
    from equidiff.worlds.digits.recipes import classifier_accuracy

    world, table = tiny
    chosen = neurons.select_neurons(table, 2)
    settings = neurons.neuron_settings(world, n_samples=3, steps=2, ddim_steps=2, restart_after=1)
    runs = neurons.run_all(world, table, chosen, workers=1, progress=False, **settings)
    top = neurons.top_image_rows(world, table, chosen, n=4)
    v = neurons_prose.prose_values(world, table, chosen, runs, settings, top, workers=1, runs_seconds=1.5)
    assert all(isinstance(x, (int, float, str)) for x in v.values())  # what glue_all takes
    assert _shown(v["neuron_ids"]) == f"#{chosen[0].channel} and #{chosen[1].channel}"
    assert v["n_images"] == len(world.images) and v["n_test"] == len(world.test_images)
    assert v["n_channels"] == table.n_channels and v["n_map_values"] == 16 and _shown(v["map_shape"]) == "4×4"
    assert _shown(v["test_accuracy"]) == f"{classifier_accuracy(world.classifier, 'test'):.3f}"
    assert _shown(v["digit_r_max"]) == f"{table.scores[:, :10].max():.2f}"
    # counts agree with the runs
    conv = [int(r.result.converged.sum()) for r in runs]
    assert v["n_total"] == 6 and v["n_converged"] == sum(conv) and v["n_converged"] + v["n_unconverged"] == 6
    assert _shown(v["restart_list"]) == " and ".join(str(r.metrics["n_restarted"]) for r in runs)
    assert v["n_restarted_total"] == sum(int((r.result.restarts > 0).sum()) for r in runs)
    same = [int((r.predicted == r.query_label).sum()) for r in runs]
    assert _shown(v["same_class_counts"]) == f"{same[0]} and {same[1]}"
    words = [("above" if r.metrics["diversity"] > r.metrics["diversity_same_class_reference"] else "below")
             for r in runs]
    assert _shown(v["diversity_words"]) == " and ".join(words)
    near = [r.metrics["diversity_near_map_reference"] for r in runs]
    assert _shown(v["diversity_near_list"]) == " and ".join(f"{d:.3f}" for d in near)
    assert _shown(v["diversity_near_words"]) == " and ".join(
        "above" if r.metrics["diversity"] > d else "below" for r, d in zip(runs, near))
    assert _shown(v["near_tau_words"]) == " and ".join(
        "above" if r.metrics["near_map_l2_median"] > r.result.config.tau else "below" for r in runs)
    assert _shown(v["near_vs_class_words"]) == " and ".join(
        "above" if d > r.metrics["diversity_same_class_reference"] else "below" for r, d in zip(runs, near))
    modes = [np.bincount(row["labels"].numpy()).argmax() for row in top]
    assert _shown(v["top_labels"]) == f"'{modes[0]}' and '{modes[1]}'"
    assert _shown(v["runs_seconds"]) == "2" and _shown(v["chapter_seconds"]) == "–" and v["n_workers"] == 1
    assert v["value_tol"] == pytest.approx((0.01 / 16) ** 0.5)
    with pytest.raises(ValueError, match="prose_values needs at least one neuron's run"):
        neurons_prose.prose_values(world, table, chosen, [], settings, top)


# ------------------------------------------------------------------ the paper world, tiny random models


@pytest.fixture(scope="module")
def paper_world(tmp_path_factory):
    from PIL import Image

    from equidiff.testing import write_tiny_models

    root = tmp_path_factory.mktemp("paper")
    cfg = write_tiny_models(root / "models")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / f"q{i}.png")
    world = load_world("paper", paper_config=cfg.to_dict(), query_images=str(images))
    return world, neurons.neuron_table(world)


def test_paper_world_runs_the_same_protocol(paper_world):
    world, table = paper_world
    assert table.concepts == [] and table.classes is None and table.n_channels == 32
    rows = neurons.alignment_rows(world, table)  # the units the thesis names, with their reported r
    assert [r["channel"] for r in rows] == list(world.known_units) and all(r["share"] is None for r in rows)
    assert "r not recomputed" in neurons.alignment_html(world, table)
    chosen = neurons.choose_neurons(world, table, "auto")
    assert [s.channel for s in chosen] == list(world.known_units) and np.isnan(chosen[0].alignment)
    with pytest.raises(ValueError, match=r"neurons must be 'auto' or a non-empty list of channel integers in \[0, 31\]"):
        neurons.choose_neurons(world, table, [1656])
    top = neurons.top_image_rows(world, table, chosen[:1], n=8)  # only 3 images: all of them
    assert len(top[0]["images"]) == 3 and len(top[0]["labels"]) == 3  # the classifier's classes label them
    runs = neurons.run_all(world, table, chosen[:1], workers=1, progress=False, n_samples=2, steps=1)
    m = runs[0].metrics
    assert runs[0].result.x.shape == (2, 3, 16, 16) and m["n_samples"] == 2
    assert runs[0].result.config.steps == 1
    idx, _ = neurons.top_activating(table, chosen[0].channel, 1)
    assert m["query_file"].endswith(f"q{int(idx[0])}.png")
    # what the paper world cannot compute is None, with the world's reason
    for k, cap in (("alignment", "unit_concepts"), ("fid_real_reference", "test_images"),
                   ("diversity_same_class_reference", "labels")):
        assert m[k] is None and m[f"{k}_reason"] == world.reason(cap)
    assert m["fid"] is not None or m["fid_reason"]
    html = neurons.table_html(world, runs, 0.01)
    assert "real-image floor" not in html and html.count("<tr>") == 3
    near = m["diversity_near_map_reference"]
    assert neurons.sample_summaries(runs)[0].endswith(f"(no same-class reference; real images nearest in the map: "
                                                      f"{near:.2f})")


def test_prose_values_say_what_the_paper_world_cannot_measure(paper_world):
    world, table = paper_world
    chosen = neurons.choose_neurons(world, table, "auto")[:1]
    settings = neurons.neuron_settings(world, n_samples=2, steps=1)
    runs = neurons.run_all(world, table, chosen, workers=1, progress=False, **settings)
    v = neurons_prose.prose_values(world, table, chosen, runs, settings, neurons.top_image_rows(world, table, chosen))
    assert _shown(v["test_accuracy"]) == "not measured" and v["n_test"] == 0
    assert _shown(v["digit_r_mean"]) == "–" and _shown(v["digits_vs_strokes"]) == "not compared with"
    assert _shown(v["diversity_words"]) == "not compared" and _shown(v["diversity_ref_list"]) == "–"
    assert _shown(v["chosen_list"]) == f"#{chosen[0].channel} ({chosen[0].concept}, r = not known)"
    assert _shown(v["neuron_ids"]) == f"#{chosen[0].channel}" and v["n_channels"] == 32
