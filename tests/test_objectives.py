import pytest
import torch
from torch import nn

from equidiff.core import objectives as O


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()  # objectives refuse a model in train mode


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
    with pytest.raises(ValueError, match=r"index must be in \[0, 2\] \(this model has 3 outputs\), got 7"):
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


def test_neuron_map_reads_one_channel_and_removes_its_hook():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)).eval()
    x = torch.randn(3, 1, 4, 4)
    obj = O.neuron_map(net, "1", 2)
    ref = net[1](net[0](x))[:, 2].flatten(1)
    assert torch.allclose(obj(x), ref)
    assert (ref < 0).any()  # read before the ReLU: unbounded values
    assert torch.allclose(O.neuron_map(net, "1", 2, reduce="mean")(x), ref.mean(1, keepdim=True))
    assert torch.allclose(O.neuron_map(net, "2", 2, read="input")(x), ref)  # the ReLU's input
    assert all(len(m._forward_hooks) == 0 for m in net.modules())
    with pytest.raises(ValueError, match=r"layer must name a submodule of the model, got 'nope'"):
        O.neuron_map(net, "nope", 0)
    with pytest.raises(ValueError, match=r"channel must be in \[0, 3\] for layer '1', got 9"):
        O.neuron_map(net, "1", 9)(x)
    with pytest.raises(ValueError, match=r"reduce must be 'map' or 'mean', got 'max'"):
        O.neuron_map(net, "1", 0, reduce="max")


def test_factories_keep_their_model_and_name_its_input():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    assert O.logits(mlp).model is mlp and O.class_logit(mlp, 1).model is mlp
    assert (2 * O.probabilities(mlp)).model is mlp  # weighting keeps it
    assert O.from_function(lambda x: x, "identity").model is None
    assert O.expected_input(mlp) == "(B, 3)"
    assert O.expected_input(conv) == "(B, 1, H, W)"
    assert O.expected_input(nn.Tanh()) is None and O.expected_input(None) is None
