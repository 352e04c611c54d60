"""Objectives: small composable callables x -> measurement (B, m).

The invariant set of a query x* under an objective L is IS(x*) = {x : L(x) = L(x*)}
(thesis Eq. 3.1). Every objective here is built by a named factory, maps a batch of inputs
to a ``(B, m)`` tensor, carries a human-readable ``description`` that figures use as a
caption, and can be combined: ``a + b`` concatenates measurements (the invariant set of the
pair is the intersection of both level sets, thesis Appendix .2.2), ``w * a`` weights one.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from equidiff.core.filters import check_cutoff, lowpass

__all__ = [
    "Objective",
    "from_function",
    "logits",
    "probabilities",
    "class_logit",
    "class_probability",
    "concat",
    "lowpassed",
    "capture_activation",
    "neuron_map",
    "resolve_module",
    "expected_input",
    "check_eval_mode",
]


class Objective:
    """A differentiable measurement ``x -> (B, m)`` with a caption.

    Parameters
    ----------
    fn:
        Callable mapping a batch ``(B, ...)`` to a tensor; it is flattened to ``(B, m)``.
    description:
        Human-readable name used in figure captions and metrics files.
    model:
        The network the objective reads, when there is one (the factories set it): error
        messages name the input it expects (:func:`expected_input`).
    others:
        Further networks the objective runs (an SAE on the model's activations).

    An objective only *evaluates* its networks: ``model`` and ``others`` must be in eval mode
    (:func:`check_eval_mode`), checked when the objective is built and at every call, before the
    forward pass — a network in training mode would be measured wrongly and changed (BatchNorm
    normalises with the batch and overwrites its running statistics; dropout drops units).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], description: str,
                 model: nn.Module | None = None, others: tuple = ()):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not isinstance(description, str) or not description.strip():
            raise ValueError(f"description must be a non-empty string, got {description!r}")
        self._fn = fn
        self.description = description
        self.model = model
        self.others = tuple(others)
        self._check_eval()

    def _check_eval(self) -> None:
        for i, net in enumerate((self.model, *self.others)):
            check_eval_mode(net, f"the {'model' if i == 0 else 'network'} {type(net).__name__} of objective "
                                 f"{self.description!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"objective input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(
                f"objective input must be a batch with shape (B, ...), got shape {tuple(x.shape)}"
            )
        self._check_eval()  # before the forward pass: a model in train mode is refused, never changed
        out = self._fn(x)
        return out.reshape(out.shape[0], -1)  # (B, m)

    def __add__(self, other: "Objective") -> "Objective":
        return concat(self, other)

    def __mul__(self, weight: float) -> "Objective":
        weight = float(weight)
        return Objective(lambda x: weight * self(x), f"{weight:g} × {self.description}", self.model, self.others)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Objective({self.description!r})"


def from_function(fn: Callable[[torch.Tensor], torch.Tensor], description: str) -> Objective:
    """Wrap any differentiable function as an objective."""
    return Objective(fn, description)


def concat(*objectives: Objective) -> Objective:
    """Measure several objectives at once; the invariant set is the intersection (App. .2.2)."""
    if not objectives:
        raise ValueError("concat needs at least one objective")
    return Objective(
        lambda x: torch.cat([o(x) for o in objectives], dim=1),
        " + ".join(o.description for o in objectives),
    )


def expected_input(model: nn.Module | None) -> str | None:
    """The input shape ``model``'s first layer takes, e.g. ``"(B, 2)"``; None when unknown.

    Read from the first ``Linear`` / ``Conv{1,2,3}d`` in module order (the first layer applied
    in a ``Sequential`` and in the usual stem-first networks).
    """
    if not isinstance(model, nn.Module):
        return None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return f"(B, {m.in_features})"
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = {nn.Conv1d: "L", nn.Conv2d: "H, W", nn.Conv3d: "D, H, W"}[type(m)]
            return f"(B, {m.in_channels}, {dims})"
    return None


def check_eval_mode(model: nn.Module | None, what: str = "model") -> None:
    """ValueError unless ``model`` and every one of its submodules is in eval mode (None: nothing to check).

    The message names ``what`` (e.g. "the model ResNet of objective 'logits of digits ResNet'"), the
    submodules in training mode and the fix, ``model.eval()``. Nothing is run and nothing changed.
    """
    if not isinstance(model, nn.Module) or not any(m.training for m in model.modules()):
        return
    names = [n or "(the model itself)" for n, m in model.named_modules() if m.training]
    some = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise ValueError(
        f"{what} is in training mode ({len(names)} module(s) in train mode: {some}); an objective only "
        "evaluates a model, so call model.eval() first (in training mode BatchNorm normalises with the "
        "batch's statistics and overwrites its running statistics, and dropout drops units: the "
        "measurement would be wrong and the model changed)"
    )


def logits(model: nn.Module, name: str | None = None) -> Objective:
    """All output logits of a classifier: (B, n_classes)."""
    return Objective(lambda x: model(x), f"logits of {name or type(model).__name__}", model)


def probabilities(model: nn.Module, name: str | None = None) -> Objective:
    """The full softmax output distribution of a classifier: (B, n_classes)."""
    return Objective(
        lambda x: torch.softmax(model(x), dim=1),
        f"class probabilities of {name or type(model).__name__}",
        model,
    )


def class_logit(model: nn.Module, index: int = 0, name: str | None = None) -> Objective:
    """One output logit (for a single-output model, its only logit): (B, 1).

    Optimise the logit rather than the probability: the sigmoid/softmax saturates far from the
    decision boundary and its gradient vanishes there.
    """
    _check_index(index)

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = model(x)  # (B, n_outputs)
        _check_output_index(index, out)
        return out[:, index : index + 1]

    return Objective(fn, f"logit {index} of {name or type(model).__name__}", model)


def class_probability(model: nn.Module, index: int, name: str | None = None) -> Objective:
    """Softmax probability of one class (sigmoid for a one-output model): (B, 1)."""
    _check_index(index)

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = model(x)  # (B, n_outputs)
        _check_output_index(index, out)
        if out.shape[1] == 1:
            return torch.sigmoid(out)
        return torch.softmax(out, dim=1)[:, index : index + 1]

    return Objective(fn, f"p(class {index}) of {name or type(model).__name__}", model)


def lowpassed(objective: Objective, cutoff: float) -> Objective:
    """The objective measured on the ideal low-pass filtered input (thesis Appendix .4)."""
    check_cutoff(cutoff)
    return Objective(
        lambda x: objective(lowpass(x, cutoff)), f"{objective.description} (low-pass {cutoff:g})",
        getattr(objective, "model", None),
    )


def _check_index(index: int) -> None:
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")


def _check_output_index(index: int, out: torch.Tensor) -> None:
    """``index`` must pick one of the model's outputs (B, n): else the slice would be empty, (B, 0)."""
    if out.dim() < 2 or out.shape[1] < 1:
        raise ValueError(f"model must return outputs of shape (B, n_outputs) to pick index {index} from, "
                         f"got shape {tuple(out.shape)}")
    if out.shape[1] == 1 and index != 0:
        raise ValueError(f"index must be 0 for a single-output model (its one output), got {index}")
    if index >= out.shape[1]:
        raise ValueError(f"index must be in [0, {out.shape[1] - 1}] (this model has {out.shape[1]} outputs), got {index}")


@contextlib.contextmanager
def capture_activation(module: nn.Module) -> Iterator[dict]:
    """Record ``module``'s input and output while the block runs; the hook is always removed on exit.

    >>> with capture_activation(model.layer4) as store:
    ...     model(x)
    ...     act = store["output"]   # store["input"]: the module's first positional input
    """
    store: dict = {}

    def hook(_mod, inp, out):
        store["output"] = out
        store["input"] = inp[0] if inp else None

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def resolve_module(model: nn.Module, layer: str) -> nn.Module:
    """The submodule named ``layer`` (dotted path as in ``model.named_modules()``)."""
    modules = dict(model.named_modules())
    if layer not in modules:
        some = [n for n in modules if n][:12]
        raise ValueError(f"layer must name a submodule of the model, got {layer!r}; e.g. {some}")
    return modules[layer]


def neuron_map(model: nn.Module, layer: str, channel: int, reduce: str = "map",
               name: str | None = None, read: str = "output") -> Objective:
    """One channel of a layer's activation: its whole spatial map (B, H·W) or its mean (B, 1).

    ``read="output"`` takes ``layer``'s output; ``read="input"`` its input — point it at the
    last block's final activation (``layer4.0.act2`` of the digits BasicBlock ResNet,
    ``layer4.2.act3`` of resnet50) to read the unbounded
    values *before* that activation, as the thesis does ("L2 losses computed on unbounded
    activation logits"): a ReLU's dead zone gives zero gradients. The hook lives only for the
    duration of each call.
    """
    if reduce not in ("map", "mean"):
        raise ValueError(f"reduce must be 'map' or 'mean', got {reduce!r}")
    if read not in ("output", "input"):
        raise ValueError(f"read must be 'output' or 'input', got {read!r}")
    _check_index(channel)
    module = resolve_module(model, layer)
    if read == "input" and getattr(module, "inplace", False):
        # an in-place activation overwrites its input before the hook's caller reads it: the
        # "pre-activation" values would silently be post-activation (timm builds ReLUs in place)
        raise ValueError(
            f"layer {layer!r} is an in-place {type(module).__name__} (inplace=True), so read='input' would "
            "see its output; set module.inplace = False first (equidiff.worlds.imagenet.models.disable_inplace does that)"
        )

    def fn(x: torch.Tensor) -> torch.Tensor:
        with capture_activation(module) as store:
            model(x)
        act = store[read]  # (B, C, H, W)
        if channel >= act.shape[1]:
            raise ValueError(f"channel must be in [0, {act.shape[1] - 1}] for layer {layer!r}, got {channel}")
        a = act[:, channel]
        return a.flatten(1) if reduce == "map" else a.flatten(1).mean(1, keepdim=True)

    what = ("map" if reduce == "map" else "mean") + (", pre-activation" if read == "input" else "")
    return Objective(fn, f"neuron {channel} of {name or type(model).__name__}.{layer} ({what})", model)
