import pytest
import torch
from torch import nn

from equidiff import objectives as O


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_shapes_and_descriptions():
    m = _model()
    x = torch.randn(5, 1, 4, 4)
    assert O.logits(m, "net")(x).shape == (5, 3)
    p = O.probabilities(m)(x)
    assert torch.allclose(p.sum(1), torch.ones(5))
    assert O.class_logit(m, 2)(x).shape == (5, 1)
    assert torch.allclose(O.class_probability(m, 1)(x)[:, 0], p[:, 1])
    assert "logits of net" == O.logits(m, "net").description


def test_combination_concatenates_and_weights():
    m = _model()
    x = torch.randn(2, 1, 4, 4)
    a, b = O.class_logit(m, 0), O.class_logit(m, 1)
    both = a + b
    assert torch.allclose(both(x), m(x)[:, :2])
    assert " + " in both.description
    assert torch.allclose((3 * a)(x), 3 * a(x))


def test_lowpassed_with_cutoff_one_is_identity():
    m = _model()
    x = torch.randn(2, 1, 4, 4)
    assert torch.allclose(O.lowpassed(O.logits(m), 1.0)(x), m(x), atol=1e-6)


def test_bad_inputs_have_clear_messages():
    m = _model()
    with pytest.raises(ValueError, match=r"index must be a non-negative integer, got -1"):
        O.class_logit(m, -1)
    with pytest.raises(ValueError, match=r"index must be in \[0, 2\] for this model, got 7"):
        O.class_probability(m, 7)(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"shape \(B, \.\.\.\), got shape \(16,\)"):
        O.logits(m)(torch.randn(16))
    with pytest.raises(ValueError, match=r"cutoff must be in \(0, 1\]"):
        O.lowpassed(O.logits(m), 1.5)
    with pytest.raises(ValueError, match="description must be a non-empty string"):
        O.Objective(lambda x: x, "  ")


def test_capture_activation_always_removes_hook():
    m = _model()
    lin = m[1]
    with pytest.raises(RuntimeError):
        with O.capture_activation(lin) as store:
            m(torch.randn(1, 1, 4, 4))
            assert store["output"].shape == (1, 3)
            raise RuntimeError("boom")
    assert len(lin._forward_hooks) == 0
