"""The Performance page says what the committed benchmark run found.

The benchmark scripts write their tables *and* their findings (goals met or not, the sentences with
numbers) from one run; the page includes those files and types no measured figure itself. These
tests check the verdict logic on made-up figures (a missed goal must read "no"), that the committed
Markdown is exactly what the scripts make from the committed JSON, and that the page's own prose
holds only structural constants.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "book" / "_tables"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _invariants_out(**change) -> dict:
    out = {
        "neuron": {"success_rate": 1.0, "wall_s": 15.0, "steps_median": 40.0, "steps_max": 90, "optimizer": "lbfgs"},
        "probability": {"success_rate": 1.0, "wall_s": 30.0, "steps_median": 8.0, "steps_max": 20, "optimizer": "adam"},
        "by_optimizer": {
            "neuron/adam": {"success_rate": 0.1, "wall_s": 50.0, "steps_median": 150.0, "steps_max": 150, "loss_median": 0.5},
            "neuron/lbfgs": {"success_rate": 1.0, "wall_s": 15.0, "steps_median": 40.0, "steps_max": 90, "loss_median": 0.009},
            "probability/adam": {"success_rate": 1.0, "wall_s": 30.0, "steps_median": 8.0, "steps_max": 20, "loss_median": 0.004},
            "probability/lbfgs": {"success_rate": 1.0, "wall_s": 20.0, "steps_median": 5.0, "steps_max": 9, "loss_median": 0.005},
        },
        "memory_ratio_T50_T10": 1.1, "overhead_ratio": 1.2,
        "batched_speedup": {"neuron": 5.0, "probability": 4.0},
        "high_freq_share": {"real": 0.13, "equidiff": 0.12, "pixel": 0.6},
        "step_seconds": {"T10_ckpt": 0.8, "T10_nockpt": 0.6},
        "peak_mib": {"T10_ckpt": 68.0, "T10_nockpt": 300.0},
        "batch": 32, "threads": 1,
    }
    for path, value in change.items():
        *keys, last = path.split("__")
        d = out
        for k in keys:
            d = d[k]
        d[last] = value
    return out


def _verdicts(md: str) -> dict:
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return {r[0].lstrip("| "): r[-1].rstrip(" |") for r in rows[1:]}


def test_goals_table_says_yes_only_for_a_met_goal():
    bi = _script("bench_invariants")
    good = _verdicts(bi.goals_and_findings(_invariants_out()))
    assert set(good.values()) == {"yes"}, good
    slow = _verdicts(bi.goals_and_findings(_invariants_out(neuron__wall_s=25.0)))
    assert [k for k, v in slow.items() if v != "yes"] == ["all 32 converged in ≤ 20 s, neuron objective (lbfgs)"]
    unfinished = _verdicts(bi.goals_and_findings(_invariants_out(neuron__success_rate=0.9)))
    assert unfinished["all 32 converged in ≤ 20 s, neuron objective (lbfgs)"] == "**no**"
    both_fail = _verdicts(bi.goals_and_findings(_invariants_out(**{"by_optimizer__neuron/lbfgs__success_rate": 0.9})))
    assert both_fail["success ≥ 95 % within B, neuron objective"] == "**no**"
    assert _verdicts(bi.goals_and_findings(_invariants_out(overhead_ratio=1.6)))["overhead ratio ≤ 1.5"] == "**no**"
    md = bi.goals_and_findings(_invariants_out(high_freq_share={"real": 0.131, "equidiff": 0.123, "pixel": 0.592}))
    assert "0.131 for real digits, 0.123 for the EquiDiff samples, 0.592" in md


def _sweep_rows():
    row = {"setting": "Adam, lr 0.1", "success_rate": 1.0, "steps_median": 7.0, "z_norm_ratio": 1.2,
           "confident_share": 1.0, "fid_classifier": 90.0, "high_freq_share": 0.09, "seconds": 10.0}
    kept = dict(row, setting="Adam, lr 0.1, keep |z_T|", success_rate=0.5, z_norm_ratio=1.0, high_freq_share=0.1)
    sgd = dict(row, setting="SGD, lr 10 (thesis)", success_rate=0.25, fid_classifier=100.0)
    return [row, kept, sgd, {"setting": "SGD, lr 1", "diverged": "loss is NaN"}]


def test_sweep_findings_come_from_the_rows():
    sd = _script("sweep_defaults")
    real = {"fid_classifier_real_vs_train": 0.2, "high_freq_share_real": 0.15}
    md = sd.sweep_findings(_sweep_rows(), real, 0, 3, 8, 150, 1)
    assert "test digit #3 (a 0), 8 samples per setting, budget B = 150, 1 torch thread" in md
    assert "**Adam:** success 50–100 % across its rows" in md
    assert "**SGD** (the thesis' optimiser): success 25 % across its rows" in md
    assert "0.090 → 0.100" in md and "success 100 % → 50 %" in md
    assert "Adam 90.0–90.0, SGD 100.0–100.0" in md


def test_neurons_markdown_names_a_mismatch():
    bn = _script("bench_neurons")
    out = {"settings": {"n_samples": 4, "steps": 10, "optimizer": "lbfgs", "restart_after": 5, "ddim_steps": 3},
           "cpu_cores": 2, "torch_threads": 2, "neurons": [1, 2], "seconds": {"threads": 10.0, "w1": 8.0, "w2": 5.0},
           "ratio_to_threads": {"threads": 1.0, "w1": 0.8, "w2": 0.5}, "identical_w1_wn": True,
           "success": {"threads": [1.0, 0.5], "w1": [1.0, 0.75], "w2": [1.0, 0.75]},
           "restarts": {"threads": [0, 2], "w1": [0, 1], "w2": [0, 1]}}
    md = bn.markdown(out)
    assert "| `run_all(workers=2)`: 2 worker processes, one thread each | 5.0 s | 0.50 | 1.00, 0.75 | 0, 1 |" in md
    assert "returned bit-identical samples" in md
    bad = copy.deepcopy(out)
    bad["identical_w1_wn"] = False
    assert "did **not** return identical samples" in bn.markdown(bad)
    # the chapter's default pool (three processes on two cores) gets its own row, named as the default
    more = copy.deepcopy(out)
    more["seconds"]["w3"], more["ratio_to_threads"]["w3"], more["default_workers"] = 4.0, 0.4, "w3"
    more["success"]["w3"], more["restarts"]["w3"] = [1.0, 0.75], [0, 1]
    md = bn.markdown(more)
    assert ("| `run_all(workers=3)`: 3 worker processes, one thread each (the default, `workers=None`) | 4.0 s | 0.40 |"
            in md) and "| `run_all(workers=2)`: 2 worker processes, one thread each | 5.0 s |" in md


def test_committed_tables_are_what_the_scripts_make_of_the_committed_run():
    bi, sd, bn = _script("bench_invariants"), _script("sweep_defaults"), _script("bench_neurons")
    inv = json.loads((TABLES / "bench_invariants.json").read_text())
    assert (TABLES / "bench_invariants_goals.md").read_text() == bi.goals_and_findings(inv)
    sw = json.loads((TABLES / "sweep_defaults.json").read_text())
    run = sw["run"]
    real = {k: sw[k] for k in ("fid_classifier_real_vs_train", "high_freq_share_real")}
    assert (TABLES / "sweep_defaults_findings.md").read_text() == sd.sweep_findings(
        sw["rows"], real, run["label"], run["query_index"], run["n"], run["steps"], run["threads"])
    neu = json.loads((TABLES / "bench_neurons.json").read_text())
    assert (TABLES / "bench_neurons.md").read_text() == bn.markdown(neu)
    bm = _script("bench_malloc")
    mal = json.loads((TABLES / "bench_malloc.json").read_text())
    assert (TABLES / "bench_malloc.md").read_text() == bm.markdown(mal)


def test_bench_malloc_says_so_when_the_settings_changed_the_samples():
    bm = _script("bench_malloc")
    row = {"wall_s": 10.0, "user_s": 15.0, "sys_s": 4.0, "minor_faults": 1234567, "peak_rss_mb": 900.0}
    out = {"rows": {"glibc default": row, "build": {**row, "wall_s": 5.0}}, "ratio": 2.0, "same": True,
           "n_samples": 1000, "stochastic_samples": 500, "cores": 2}
    md = bm.markdown(out)
    assert "| glibc default | 10.0 | 15.0 | 4.0 | 1,234,567 | 900 |" in md and "2.00×" in md
    assert "are the same bit for bit" in md
    assert "are **not** the same bit for bit" in bm.markdown({**out, "same": False})


# The structural constants the page's own prose may name (image and map sizes, the latent's
# dimension, the core count, the rounding size, chapter / algorithm / line numbers, learning rates of
# the defaults, the confidence threshold, T); every measured figure comes from an included file.
PAGE_CONSTANTS = {"16×16", "4×4", "256", "2", "1e-7", "1", "11", "10", "0.1", "0.9"}


def test_performance_page_types_no_measured_figure_and_its_includes_exist():
    page = (ROOT / "book" / "performance.md").read_text()
    includes = re.findall(r"```\{include\}\s+(\S+)", page)
    assert len(includes) >= 5
    for inc in includes:
        assert (ROOT / "book" / inc).is_file(), inc
    prose = re.sub(r"```.*?```", " ", page, flags=re.S)  # code blocks and includes
    prose = re.sub(r"`[^`]*`", " ", prose)  # inline code and roles' targets
    prose = re.sub(r"\$[^$]*\$", " ", prose)  # math
    prose = re.sub(r"^#+ .*$", " ", prose, flags=re.M)
    numbers = set(re.findall(r"\d+(?:[.×]\d+)*(?:e-\d+)?", prose))
    assert numbers <= PAGE_CONSTANTS, sorted(numbers - PAGE_CONSTANTS)


def test_bench_malloc_refuses_a_too_small_workload_naming_the_flag(capsys):
    bm = _script("bench_malloc")
    with pytest.raises(SystemExit):
        bm.main(["--n-samples", "3"])
    assert "--n-samples must be an integer ≥ 10, got 3" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_malloc_runs_both_settings_and_finds_the_same_samples(tmp_path):
    """Both settings in their own process, on a small workload: the samples agree bit for bit."""
    bm = _script("bench_malloc")
    assert bm.main(["--n-samples", "10", "--stochastic-samples", "10", "--json", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["same"] and set(got["rows"]) == {"glibc default", "build"}
