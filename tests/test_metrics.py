import json

import numpy as np
import pytest
import torch

from equidiff.core import metrics as M


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


def test_write_metrics_makes_plain_json(tmp_path):
    path = M.write_metrics(tmp_path / "out", {"a": torch.tensor([1.5]), "b": np.float32(2.0), "c": float("nan")})
    assert json.loads(path.read_text()) == {"a": [1.5], "b": 2.0, "c": None}
