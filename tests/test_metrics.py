import json

import numpy as np
import pytest
import torch

from equidiff.core import metrics as M
from equidiff.report import record as R


def test_frechet_distance_zero_for_same_set_and_grows_with_shift():
    g = np.random.default_rng(0)
    a = g.normal(size=(500, 4))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(a, a + 2.0) == pytest.approx(16.0, rel=0.05)  # |Δμ|² = 4·2²


def test_l1_l2_kl_and_diversity():
    m = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    l1, l2 = M.l1_l2(m, torch.tensor([[1.0, 1.0]]))
    assert l1.tolist() == [1.0, 2.0] and l2.tolist() == [1.0, 2.0]
    p = torch.tensor([[0.5, 0.5]])
    assert M.kl_divergence(p, p).item() == pytest.approx(0.0, abs=1e-9)
    assert M.kl_divergence(p, torch.tensor([[0.9, 0.1]])).item() > 0.3
    assert M.diversity(torch.tensor([[0.0], [3.0]])) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="at least 2 samples per set, got 1 and 3"):
        M.frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))


def test_nearest_by_objective_ranks_by_the_algorithm_1_loss():
    images = torch.tensor([0.0, 3.0, 1.0, -2.0, 0.5]).reshape(5, 1, 1, 1)  # (5, 1, 1, 1)
    calls = []

    def objective(x):  # (B, 2): the value and its double
        calls.append(len(x))
        return torch.cat([x.flatten(1), 2 * x.flatten(1)], 1)

    target = torch.tensor([1.0, 2.0])  # the objective of an image of value 1
    idx, loss = M.nearest_by_objective(objective, images, target, 3, batch=2)
    assert idx.tolist() == [2, 4, 0] and loss.tolist() == pytest.approx([0.0, 1.25, 5.0])  # 5·(v − 1)²
    assert calls == [2, 2, 1]  # in batches
    idx, loss = M.nearest_by_objective(objective, images, target, 2, exclude=2)  # the query itself left out
    assert idx.tolist() == [4, 0] and loss.tolist() == pytest.approx([1.25, 5.0])
    with pytest.raises(ValueError, match="k must be at most 4 \\(the images to rank\\), got 5"):
        M.nearest_by_objective(objective, images, target, 5, exclude=0)
    with pytest.raises(ValueError, match="k must be an integer ≥ 1, got 0"):
        M.nearest_by_objective(objective, images, target, 0)


def test_frechet_distance_is_the_statistics_form_on_fitted_gaussians():
    g = np.random.default_rng(1)
    a, b = g.normal(size=(200, 5)), g.normal(loc=0.3, scale=1.2, size=(150, 5))
    stats = lambda f: (f.mean(0), np.cov(f, rowvar=False))  # noqa: E731
    assert M.frechet_distance(a, b) == M.frechet_from_statistics(*stats(a), *stats(b))  # bit for bit
    # the two ways of taking tr((s1 s2)^½) agree on well-conditioned covariances
    assert M.frechet_from_statistics(*stats(a), *stats(b), trace_root="eigh") == pytest.approx(
        M.frechet_distance(a, b), rel=1e-9)
    # singular covariances (fewer samples than features): "eigh" stays real and ≈ 0 on itself
    few = g.normal(size=(8, 32))
    mu, s = stats(few)
    assert abs(M.frechet_from_statistics(mu, s, mu, s, trace_root="eigh")) < 1e-6 * np.trace(s)
    # one feature: scalar variances are accepted
    assert M.frechet_from_statistics([0.0], 1.0, [2.0], 1.0) == pytest.approx(4.0)


def test_frechet_from_statistics_rejects_bad_input():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match=r"trace_root must be one of \('sqrtm', 'eigh'\), got 'svd'"):
        M.frechet_from_statistics(mu, s, mu, s, trace_root="svd")
    with pytest.raises(ValueError, match=r"s2 must have shape \(3, 3\) \(mu: \(D,\), s: \(D, D\)\), got \(2, 2\)"):
        M.frechet_from_statistics(mu, s, mu, np.eye(2))
    with pytest.raises(ValueError, match=r"mu2 must have shape \(3,\)"):
        M.frechet_from_statistics(mu, s, np.zeros(4), s)


def test_write_metrics_makes_plain_json(tmp_path):
    path = R.write_metrics(tmp_path / "out", {"a": torch.tensor([1.5]), "b": np.float32(2.0), "c": float("nan")})
    assert json.loads(path.read_text()) == {"a": [1.5], "b": 2.0, "c": None}


def _notebook(tmp_path, source, tags=("parameters",)):
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# title"]},
                    {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": source}]}
    path = tmp_path / "demo.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_notebook_parameters_reads_the_tagged_cell_in_order(tmp_path):
    path = _notebook(tmp_path, ["# Parameters\n", "seed = 0  # int\n", "optimizer = \"adam\"\n",
                                "a, b = 1, 2\n", "lr: float = 0.1\n", "seed = 3\n"])
    ns = {"seed": 7, "optimizer": "sgd", "a": 1, "b": 2, "lr": 10.0, "other": "not a parameter"}
    got = R.notebook_parameters(ns, str(path))
    assert got == {"seed": 7, "optimizer": "sgd", "a": 1, "b": 2, "lr": 10.0}  # the values the run used
    assert list(got) == ["seed", "optimizer", "a", "b", "lr"]


def test_notebook_parameters_of_a_chapter_notebook():
    import ast

    src = json.loads((R.NOTEBOOKS / "01_circles.ipynb").read_text())["cells"][1]["source"]
    ns = {}
    exec(compile(ast.parse("".join(src)), "parameters", "exec"), ns)
    got = R.notebook_parameters(ns, "01_circles")
    assert {"seed", "optimizer", "tau", "steps", "output_dir"} <= set(got) and got["seed"] == ns["seed"]


def test_notebook_parameters_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"notebook must name a notebook of .* got 'no_such_chapter'"):
        R.notebook_parameters({}, "no_such_chapter")
    untagged = _notebook(tmp_path, ["seed = 0\n"], tags=())
    with pytest.raises(ValueError, match=r"has no cell tagged 'parameters'"):
        R.notebook_parameters({"seed": 0}, str(untagged))
    tagged = _notebook(tmp_path, ["seed = 0\n", "steps = 3\n"])
    with pytest.raises(ValueError, match=r"namespace lacks the parameters \['steps'\]"):
        R.notebook_parameters({"seed": 0}, str(tagged))


def test_html_table_escapes_cells_and_adds_the_note():
    from equidiff.report.tables import html_table

    out = html_table(("a", "b<c"), [(1, "x & y"), (2.5, None)], note="n < 3")
    assert out.startswith("<table><thead><tr><th>a</th><th>b&lt;c</th></tr></thead>")
    assert "<tr><td>1</td><td>x &amp; y</td></tr><tr><td>2.5</td><td>None</td></tr>" in out
    assert out.endswith("</table><p><small>n &lt; 3</small></p>")
    assert not html_table(("a",), []).endswith("</p>")
