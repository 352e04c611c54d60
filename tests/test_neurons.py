"""Neuron chapter (thesis Section 4.2): concepts, alignment, selection, the protocol on tiny models."""

import numpy as np
import pytest
import torch

from equidiff.chapters import neurons
from equidiff.worlds.digits import models as zoo


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
    c, names = neurons.concept_labels(_stack(_ring(), _bar(), _stroke(), _blank()))
    assert names == list(neurons.STROKE_CONCEPTS)
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
    assert neurons.closed_loops(eight.numpy()) == 2
    broken = _ring()
    broken[3:5, 7:9] = -1.0  # a gap opens the ring to the border
    assert neurons.closed_loops(broken.numpy()) == 0


def test_concepts_with_labels_put_digits_first():
    c, names = neurons.concept_labels(_stack(_ring(), _bar()), labels=torch.tensor([0, 7]))
    assert names[:10] == [f"digit {d}" for d in range(10)] and len(names) == 14
    assert c[0, 0] and c[1, 7] and c[:, :10].sum() == 2
    with pytest.raises(ValueError, match="labels must be one label per image"):
        neurons.concept_labels(_stack(_ring(), _bar()), labels=[0])
    with pytest.raises(ValueError, match=r"images must be a tensor of grey images, shape \(N, 1, H, W\)"):
        neurons.concept_labels(torch.zeros(2, 3, 16, 16))


def test_alignment_is_a_correlation_and_finds_a_planted_neuron():
    rng = np.random.default_rng(0)
    concepts = rng.random((500, 3)) < 0.3
    acts = rng.normal(size=(500, 6))
    acts[:, 4] = 2.0 * concepts[:, 1] + 0.1 * rng.normal(size=500)  # channel 4 codes concept 1
    r = neurons.alignment_scores(acts, concepts)
    assert r.shape == (6, 3)
    assert np.all(r >= -1) and np.all(r <= 1)
    assert np.unravel_index(np.argmax(r), r.shape) == (4, 1) and r[4, 1] > 0.95
    # equals Pearson's r (numpy's) for a pair
    assert np.isclose(r[2, 0], np.corrcoef(acts[:, 2], concepts[:, 0])[0, 1])
    const = neurons.alignment_scores(np.ones((10, 2)), rng.random((10, 1)) < 0.5)
    assert np.all(const == 0)  # undefined correlation of a constant channel reads 0, not NaN


def _table(scores, concepts):
    n = 4
    return neurons.AlignmentTable(np.asarray(scores, dtype=float), concepts, torch.randn(n, len(scores)),
                                  np.zeros((n, len(concepts)), bool), torch.zeros(n, 1, 16, 16),
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


def test_html_table_escapes():
    html = neurons.html_table(("a", "b"), [("<x>", 1)], note="τ & co")
    assert "<td>&lt;x&gt;</td>" in html and "τ &amp; co" in html and html.count("<tr>") == 2


def test_profiles():
    assert neurons.resolve_profile("cpu")["n_samples"] == 32
    assert neurons.resolve_profile("smoke")["n_samples"] < 32
    assert neurons.resolve_profile("paper") == neurons.PAPER_PROFILE
    with pytest.raises(ValueError, match=r"profile must be one of \('cpu', 'smoke', 'paper'\), got 'gpu'"):
        neurons.resolve_profile("gpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("zoo")
    clf = zoo.get_model("digits-classifier-tiny", cache_dir=cache, progress=False)
    ddpm = zoo.get_model("digits-ddpm-tiny", cache_dir=cache, progress=False)
    x, y = zoo.load_digits16("test")
    table = neurons.alignment_table(clf.model, x[:120], y[:120])
    return clf, ddpm, table, x[120:200]


def test_alignment_table_on_a_real_model(tiny):
    clf, _, table, _ = tiny
    n_ch = table.activations.shape[1]
    assert table.scores.shape == (n_ch, 14) and table.labels.shape == (120, 14)
    assert np.all(np.abs(table.scores) <= 1)
    rows = table.rows()
    assert [r["concept"] for r in rows] == list(neurons.CONCEPTS)
    ch, r = table.best_channel("closed loop")
    assert r == pytest.approx(table.scores[:, 10].max())


def test_run_neuron_protocol(tiny):
    clf, ddpm, table, real = tiny
    sel = neurons.select_neurons(table, 1)[0]
    run = neurons.run_neuron(clf, ddpm, sel.channel, table, real, concept=sel.concept, profile="smoke",
                             n_samples=3, steps=2, ddim_steps=2)
    m = run.metrics
    idx, _ = neurons.top_activating(table, sel.channel, 1)
    assert run.query_index == int(idx[0])  # the query is the strongest-activating image
    assert run.result.measurements.shape == (3, 16)  # the whole 4×4 map
    # L2 is the Algorithm 1 loss (no low-pass term here), per sample
    assert m["l2_mean"] == pytest.approx(float(run.result.loss.mean()), rel=1e-5)
    for k in ("channel", "concept", "alignment", "l2_mean", "l2_std", "l1_mean", "fid", "diversity",
              "success_rate", "steps", "seconds"):
        assert k in m
    assert m["fid"] >= 0 and m["diversity"] > 0
    html = neurons.table_html([run], 0.01)
    assert html.count("<tr>") == 3 and f"#{sel.channel}" in html and "Average" in html  # header, neuron, average
    with pytest.raises(ValueError, match="n_samples must be an integer ≥ 2"):
        neurons.run_neuron(clf, ddpm, 0, table, real, n_samples=1)
    with pytest.raises(ValueError, match="channel must be an integer in"):
        neurons.run_neuron(clf, ddpm, 10_000, table, real, n_samples=2)
    with pytest.raises(ValueError, match="run_neuron runs the digits world; profile 'paper' runs through"):
        neurons.run_neuron(clf, ddpm, 0, table, real, profile="paper")


# ------------------------------------------------------------------ run_all: neurons side by side


def _world(tiny):
    clf, ddpm, table, real = tiny
    return neurons.NeuronWorld("smoke", classifier=clf, ddpm=ddpm, table=table, real_images=real)


def test_run_all_gives_the_same_samples_for_every_worker_count(tiny, capsys):
    world = _world(tiny)
    chosen = neurons.select_neurons(world.table, 2)
    kw = dict(n_samples=3, steps=3, ddim_steps=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = world.run_all(chosen, workers=1, **kw)  # this process, one torch thread
        assert torch.get_num_threads() == 2  # the caller's thread count is restored
    finally:
        torch.set_num_threads(threads)
    assert "invariant samples below τ" in capsys.readouterr().err  # the progress line (a text bar here)
    two = world.run_all(chosen, workers=2, progress=False, **kw)  # two spawned worker processes
    assert [r.channel for r in one] == [r.channel for r in two] == [s.channel for s in chosen]
    for a, b in zip(one, two):
        assert torch.equal(a.result.x, b.result.x) and torch.equal(a.result.loss, b.result.loss)
        assert {k: v for k, v in a.metrics.items() if k != "seconds"} == \
               {k: v for k, v in b.metrics.items() if k != "seconds"}


def test_run_all_rejects_bad_settings_before_starting_workers(tiny):
    world = _world(tiny)
    chosen = neurons.select_neurons(world.table, 2)
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match=rf"workers must be None or an integer ≥ 1, got {bad!r}"):
            world.run_all(chosen, workers=bad, n_samples=3, steps=1, ddim_steps=2)
    with pytest.raises(ValueError, match="n_samples must be an integer ≥ 2"):
        world.run_all(chosen, workers=2, n_samples=1, steps=1, ddim_steps=2)
    with pytest.raises(ValueError, match="tau must be"):
        world.run_all(chosen, workers=2, n_samples=3, steps=1, ddim_steps=2, tau=-1.0)


def test_run_all_from_an_unguarded_script_says_what_to_do(tiny, tmp_path):
    import subprocess
    import sys

    clf, ddpm, _, _ = tiny
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pathlib import Path\n"
        "from equidiff import neurons, zoo\n"
        f"clf = zoo.get_model({clf.name!r}, Path({str(clf.path.parent)!r}), progress=False)\n"
        f"ddpm = zoo.get_model({ddpm.name!r}, Path({str(ddpm.path.parent)!r}), progress=False)\n"
        "x, y = zoo.load_digits16('test')\n"
        "table = neurons.alignment_table(clf.model, x[:60], y[:60])\n"
        "world = neurons.NeuronWorld('smoke', classifier=clf, ddpm=ddpm, table=table, real_images=x[60:80])\n"
        "world.run_all(neurons.select_neurons(table, 2), workers=2, progress=False, n_samples=2, steps=1, "
        "ddim_steps=2)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "must sit under `if __name__ == '__main__':`" in done.stderr and "workers=1" in done.stderr
