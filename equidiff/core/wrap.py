"""Your own classifier: wrap any ``nn.Module`` with its own input convention for the objectives.

The project's priors and worlds make images in one convention: ``(B, C, H, W)``, values in
[-1, 1] (the digits world: ``(B, 1, 16, 16)``). A model trained elsewhere takes its own — another
size, another value range, a normalisation, another number of channels. :func:`wrap_model`
returns a :class:`WrappedModel`, an ``nn.Module`` that takes the prior's images and feeds the
model its convention (:class:`InputConvention`), in this order::

    x (B, C_src, H, W), values in source_range
      -> values mapped linearly onto value_range        (e.g. [-1, 1] -> [0, 1])
      -> channels repeated, 1 -> channels, if they differ (a grey prior, an RGB model)
      -> size: "stretch" interpolates to input_size;
               "pad" interpolates to input_size − 2·pad, then adds pad pixels of pad_value on each side;
               "none" passes the size through (it must be input_size)
      -> normalised, (x − mean) / std per channel
      -> module(x)

Every objective factory takes the wrapped model like any model — ``logits(w)``,
``probabilities(w)``, ``class_probability(w, k)`` — and :func:`layer_channel` reads one channel of
a layer named as in the *model's own* ``named_modules()`` (``"features.3"``).

Wrong conventions stop before any optimisation, each with a ``ValueError`` that names the parameter:

* at wrap time: a module in training mode (as the objectives refuse one; nothing is run), a bad
  field of the convention, and a shape the model rejects — :func:`wrap_model` probes the model
  once with a dummy batch in its convention and reports the model's own error under
  ``input_size`` / ``channels``;
* at every forward (so at the query, which Algorithm 1 measures first): an input whose channels or
  size are not the declared ``source_channels`` / ``source_size``, and an input whose values are
  not in ``source_range`` (see :data:`RANGE_MARGIN`);
* in :func:`layer_channel`: an unknown layer (the message lists the model's layers) and a channel
  index past the layer's channels (measured by one probe).

**In-place activations.** A model built with ``nn.ReLU(inplace=True)`` after a convolution
overwrites the convolution's output tensor when the ReLU runs, so a forward hook on the
convolution would hand the objective the *post*-activation values (and a hook reading the ReLU's
input would too). The wrapper therefore runs the model with every module's ``inplace`` flag
switched off for the duration of each forward pass (:func:`inplace_off`) and back on afterwards:
the same values, a little more memory, and the model object is unchanged between calls. A hook on
a layer then reads its value before the activation, and ``read="input"`` on a ReLU reads its true
pre-activation. In-place operations written into a model's ``forward`` (``F.relu(x, inplace=True)``,
``x.relu_()``) are not modules and cannot be switched: hook a layer whose output no such operation
overwrites.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from equidiff._validate import bad, is_int, is_num
from equidiff.core.objectives import Objective, capture_activation, check_eval_mode, neuron_map

__all__ = ["InputConvention", "WrappedModel", "wrap_model", "layer_channel", "inplace_off", "RANGE_MARGIN",
           "RANGE_SHARE", "RESIZES", "INTERPOLATIONS"]

RESIZES = ("stretch", "pad", "none")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# An input is refused when more than RANGE_SHARE of one image's values lie outside source_range widened
# by RANGE_MARGIN of its span on each side ([-1.5, 1.5] for [-1, 1]). Not a strict bound, because the
# filtered term of Algorithm 1 measures the ideal low-pass F(x) of in-range images, which rings past the
# range: on the digits' test split at cutoffs 0.1–0.9, at most 3.1 % of an image's pixels leave
# [-1.5, 1.5]. A wrong convention puts most values outside: [-1, 1] digits declared as (0, 1) leave
# [-0.25, 1.25] with their whole background.
RANGE_MARGIN = 0.25
RANGE_SHARE = 0.10


def _pair(value, kind: str = "int") -> Optional[tuple]:
    """``value`` as a pair: an int (``kind="num"``: a number) for both, or a sequence of two; None if neither."""
    one = is_int if kind == "int" else is_num
    if one(value):
        return (value, value)
    if (isinstance(value, (list, tuple)) and len(value) == 2 and all(one(v) for v in value)):
        return tuple(value)
    return None


def _per_channel(name: str, value, channels: int, positive: bool) -> tuple:
    vals = (value,) if is_num(value) else tuple(value) if isinstance(value, (list, tuple)) else None
    ok = vals is not None and len(vals) in (1, channels) and all(is_num(v) and (v > 0 or not positive) for v in vals)
    if not ok:
        what = "a finite number > 0" if positive else "a finite number"
        raise bad(name, value, f"{what}, or a list of {channels} of them (one per channel the model takes)")
    return tuple(float(v) for v in (vals * channels if len(vals) == 1 else vals))


@dataclass
class InputConvention:
    """What the wrapped model takes and what it is given. Every field is checked in ``__post_init__``."""

    input_size: object = (28, 28)  # (H, W) the model takes (an int: square)
    channels: int = 1  # channels the model takes
    value_range: object = (0.0, 1.0)  # (lo, hi): the model's pixel values before normalisation
    mean: object = 0.0  # subtracted after the value mapping: one number or one per channel
    std: object = 1.0  # then divided by: one number > 0 or one per channel
    source_range: object = (-1.0, 1.0)  # (lo, hi): the values of the images given (the project's priors: (-1, 1))
    source_channels: Optional[int] = None  # channels of the images given; None: the model's; 1: repeated to `channels`
    source_size: object = None  # (H, W) of the images given (an int: square); None: any size
    resize: str = "stretch"  # "stretch" | "pad" | "none": how the images are brought to input_size
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" | "nearest": the resampling of "stretch" and "pad"
    pad: Optional[int] = None  # resize="pad" only: pixels added on each side (the image is resized to input_size − 2·pad)
    pad_value: Optional[float] = None  # the padding's value, in value_range units; None: value_range[0] (dark background)
    range_check: bool = True  # refuse inputs whose values are not in source_range (see RANGE_MARGIN)

    def __post_init__(self):
        size = _pair(self.input_size)
        if size is None or min(size) < 1:
            raise bad("input_size", self.input_size, "an integer ≥ 1 or a pair (H, W) of them: the size the model takes")
        self.input_size = size
        if not is_int(self.channels) or self.channels < 1:
            raise bad("channels", self.channels, "an integer ≥ 1: the channels the model takes")
        for name in ("value_range", "source_range"):
            r = _pair(getattr(self, name), "num")
            if r is None or not r[0] < r[1]:
                raise bad(name, getattr(self, name), "a pair (lo, hi) of finite numbers with lo < hi")
            setattr(self, name, (float(r[0]), float(r[1])))
        self.mean = _per_channel("mean", self.mean, self.channels, positive=False)
        self.std = _per_channel("std", self.std, self.channels, positive=True)
        if self.source_channels is None:
            self.source_channels = self.channels
        if not is_int(self.source_channels) or self.source_channels not in (1, self.channels):
            raise bad("source_channels", self.source_channels,
                      f"None, 1 (repeated to the model's {self.channels}) or {self.channels} (the model's channels)")
        if self.source_size is not None:
            s = _pair(self.source_size)
            if s is None or min(s) < 1:
                raise bad("source_size", self.source_size, "None (any size) or an integer ≥ 1 or a pair (H, W) of them")
            self.source_size = s
        if self.resize not in RESIZES:
            raise bad("resize", self.resize, f"one of {RESIZES}")
        if self.interpolation not in INTERPOLATIONS:
            raise bad("interpolation", self.interpolation, f"one of {INTERPOLATIONS}")
        if self.resize == "pad":
            if not is_int(self.pad) or self.pad < 1 or 2 * self.pad >= min(self.input_size):
                raise bad("pad", self.pad, f"an integer ≥ 1 below {min(self.input_size) / 2:g} with resize='pad' "
                                           f"(pixels added on each side of the {self.input_size} input)")
        elif self.pad is not None:
            raise bad("pad", self.pad, f"None unless resize='pad' (resize is {self.resize!r})")
        if self.pad_value is None:
            self.pad_value = self.value_range[0]
        if not is_num(self.pad_value):
            raise bad("pad_value", self.pad_value, "None or a finite number (in value_range units)")
        if self.resize == "none" and self.source_size is not None and self.source_size != self.input_size:
            raise bad("resize", self.resize, f"'stretch' or 'pad' when source_size {self.source_size} differs from "
                                             f"input_size {self.input_size}")
        if not isinstance(self.range_check, bool):
            raise bad("range_check", self.range_check, "True or False")

    @property
    def inner_size(self) -> tuple:
        """The size the images are resampled to: input_size, less the padding with ``resize="pad"``."""
        p = self.pad if self.resize == "pad" else 0
        return (self.input_size[0] - 2 * p, self.input_size[1] - 2 * p)

    def describe(self) -> str:
        """The conversion in one line, e.g. ``[-1, 1] -> [0, 1], bicubic to 24×24, padded by 2 px to 28×28, (x − 0.1307) / 0.3081``."""
        g = lambda v: f"{v:g}"  # noqa: E731
        parts = [f"[{g(self.source_range[0])}, {g(self.source_range[1])}] -> "
                 f"[{g(self.value_range[0])}, {g(self.value_range[1])}]"]
        if self.source_channels != self.channels:
            parts.append(f"1 channel repeated to {self.channels}")
        h, w = self.input_size
        if self.resize == "stretch":
            parts.append(f"{self.interpolation} to {h}×{w}")
        elif self.resize == "pad":
            ih, iw = self.inner_size
            parts.append(f"{self.interpolation} to {ih}×{iw}, padded by {self.pad} px of {g(self.pad_value)} to {h}×{w}")
        mean = "/".join(map(g, dict.fromkeys(self.mean))) if len(set(self.mean)) == 1 else ", ".join(map(g, self.mean))
        std = "/".join(map(g, dict.fromkeys(self.std))) if len(set(self.std)) == 1 else ", ".join(map(g, self.std))
        if any(m != 0 for m in self.mean) or any(s != 1 for s in self.std):
            parts.append(f"(x − {mean}) / {std}")
        return ", ".join(parts)


@contextlib.contextmanager
def inplace_off(model: nn.Module) -> Iterator[list]:
    """Every submodule of ``model`` with ``inplace=True`` runs with ``inplace=False`` inside the block; the flags are
    restored on exit (also after an error). Yields the names of the modules switched."""
    switched = [(n, m) for n, m in model.named_modules() if getattr(m, "inplace", False) is True]
    for _, m in switched:
        m.inplace = False
    try:
        yield [n for n, _ in switched]
    finally:
        for _, m in switched:
            m.inplace = True


class WrappedModel(nn.Module):
    """A model with its own input convention, taking the project's images: see the module docstring.

    ``model``: the wrapped module (its submodule names are the names :func:`layer_channel` takes);
    ``convention``: the :class:`InputConvention`; ``name``: for captions; ``output_shape``: what the
    model returned for one input of the probe, e.g. ``(10,)``.
    """

    def __init__(self, model: nn.Module, convention: InputConvention, name: str):
        super().__init__()
        self.model = model
        self.convention = convention
        self.name = name
        c = convention
        self.register_buffer("_mean", torch.tensor(c.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(c.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.output_shape: tuple = ()
        self.training = False  # the wrapper itself has no training behaviour; the model's own modes are its own

    # -- the conversion ------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """ValueError, naming the convention's field, unless ``x`` is a batch of images of the declared kind."""
        c = self.convention
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input of {self.name} must be a batch of images (B, {c.source_channels}, H, W), got {shape}")
        if x.shape[1] != c.source_channels:
            raise bad("source_channels", c.source_channels,
                      f"the channels of the images given ({x.shape[1]}, input shape {tuple(x.shape)})")
        if c.source_size is not None and tuple(x.shape[-2:]) != c.source_size:
            raise bad("source_size", c.source_size, f"the size of the images given, {tuple(x.shape[-2:])} "
                                                    f"(input shape {tuple(x.shape)}), or None for any size")
        if c.range_check and len(x):
            lo, hi = c.source_range
            m = RANGE_MARGIN * (hi - lo)
            v = x.detach()
            out = ((v < lo - m) | (v > hi + m) | ~torch.isfinite(v)).flatten(1).float().mean(1)  # (B,)
            if bool((out > RANGE_SHARE).any()):
                i = int(out.argmax())
                raise bad("source_range", c.source_range,
                          f"the range of the images given: {float(out[i]):.0%} of the values of image {i} lie outside "
                          f"[{lo - m:g}, {hi + m:g}] (its values run from {float(v[i].min()):.3g} to "
                          f"{float(v[i].max()):.3g}); the project's priors and worlds make images in (-1, 1)")

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        """The images ``x`` (B, C_src, H, W) in the model's convention (B, channels, *input_size); differentiable."""
        c = self.convention
        (slo, shi), (lo, hi) = c.source_range, c.value_range
        v = lo + (x - slo) * ((hi - lo) / (shi - slo))  # values mapped onto value_range
        if v.shape[1] != c.channels:
            v = v.expand(-1, c.channels, -1, -1)  # (B, channels, H, W): the grey image in every channel
        if c.resize != "none" and tuple(v.shape[-2:]) != c.inner_size:
            kw = {} if c.interpolation == "nearest" else {"align_corners": False}
            v = F.interpolate(v, size=c.inner_size, mode=c.interpolation, **kw)
        if c.resize == "pad":
            p = c.pad
            v = F.pad(v, (p, p, p, p), value=float(c.pad_value))  # (B, channels, *input_size)
        return (v - self._mean.to(v.dtype)) / self._std.to(v.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        v = self.convert(x)
        with inplace_off(self.model):  # hooks read a layer's value before an in-place activation overwrites it
            return self.model(v)

    # -- layers --------------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        """The model's named submodules, as :func:`layer_channel` takes them."""
        return [n for n, _ in self.model.named_modules() if n]

    def dummy(self, n: int = 2) -> torch.Tensor:
        """``n`` mid-grey images of the source convention, on the model's device and dtype (the probes' input)."""
        c = self.convention
        size = c.source_size or c.inner_size
        ref = next((t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()), None)
        kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        return torch.full((n, c.source_channels, *size), sum(c.source_range) / 2, **kw)

    def layer_shape(self, layer: str, read: str = "output") -> tuple:
        """The shape of ``layer``'s output (or input) for one input, measured by one probe, e.g. ``(32, 28, 28)``."""
        module = dict(self.model.named_modules())[layer]
        with torch.no_grad(), capture_activation(module) as store:
            self(self.dummy())
        act = store.get(read)
        if not isinstance(act, torch.Tensor) or act.dim() < 2:
            raise bad("layer", layer, f"a layer whose {read} is a tensor (B, C, ...) "
                                      f"(got {type(act).__name__} from the probe)")
        return tuple(act.shape[1:])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, convention: {self.convention.describe()}"


def wrap_model(module: nn.Module, *, input_size=(28, 28), channels: int = 1, value_range=(0.0, 1.0), mean=0.0,
               std=1.0, source_range=(-1.0, 1.0), source_channels: Optional[int] = None, source_size=None,
               resize: str = "stretch", interpolation: str = "bilinear", pad: Optional[int] = None,
               pad_value: Optional[float] = None, range_check: bool = True, name: Optional[str] = None) -> WrappedModel:
    """``module`` wrapped so that it takes the project's images (fields: :class:`InputConvention`).

    ``module`` must be in eval mode (``module.eval()``); it is probed once with a dummy batch of its
    convention, and a model that rejects it raises ``ValueError`` naming ``input_size`` and
    ``channels`` with the model's own error. ``name`` (default: the module's class) is used in
    captions and messages. The module itself is not copied, moved or changed.

    >>> net = wrap_model(mnist_net.eval(), input_size=28, value_range=(0, 1), mean=0.1307, std=0.3081,
    ...                  resize="pad", pad=2, source_size=16)
    >>> find_invariants(class_probability(net, 7), query, prior, config)
    """
    if not isinstance(module, nn.Module):
        raise bad("module", type(module).__name__, "a torch.nn.Module (the model to wrap)")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise bad("name", name, "None or a non-empty string")
    name = name or type(module).__name__
    # before anything runs: a forward pass in training mode would change BatchNorm statistics
    check_eval_mode(module, f"module {name} given to wrap_model")
    conv = InputConvention(input_size=input_size, channels=channels, value_range=value_range, mean=mean, std=std,
                           source_range=source_range, source_channels=source_channels, source_size=source_size,
                           resize=resize, interpolation=interpolation, pad=pad, pad_value=pad_value,
                           range_check=range_check)
    wrapped = WrappedModel(module, conv, name)
    ref = next((t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()), None)
    if ref is not None:
        wrapped.to(ref.device)  # the two normalisation buffers: the model's device
    probe = wrapped.dummy()
    shape = (len(probe), conv.channels, *conv.input_size)
    try:
        with torch.no_grad():
            out = wrapped(probe)
    except Exception as e:  # noqa: BLE001 - whatever the model raises, reported under the parameters that set the shape
        raise ValueError(
            f"input_size {conv.input_size} and channels {conv.channels} must give inputs the model {name} takes: it "
            f"rejects a dummy batch of shape {shape} in the wrapped convention ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != len(probe):
        what = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise bad("module", name, f"a model that returns a tensor (B, ...) for a batch (B, ...) (it returned {what} "
                                  f"for a batch of shape {shape})")
    if not torch.isfinite(out).all():
        raise bad("module", name, f"a model whose output is finite (it returned NaN or inf for a mid-grey batch of "
                                  f"shape {shape}: check its weights)")
    wrapped.output_shape = tuple(out.shape[1:])
    return wrapped


def layer_channel(wrapped: WrappedModel, layer: str, channel: int, reduce: str = "mean", read: str = "output",
                  name: Optional[str] = None) -> Objective:
    """One channel of the wrapped model's layer ``layer`` (a name of the model's own ``named_modules()``):
    its spatial mean ``(B, 1)`` (``reduce="mean"``) or whole map ``(B, H·W)`` (``"map"``), read from the
    layer's output (``read="output"``, before any activation that follows it) or input (``"input"``).

    Built on :func:`~equidiff.core.objectives.neuron_map`; the layer and the channel are checked here,
    before any optimisation: an unknown layer lists the model's layers, a channel past the layer's
    channels (measured by one probe) names their number.
    """
    if not isinstance(wrapped, WrappedModel):
        raise bad("wrapped", type(wrapped).__name__, "a WrappedModel (from equidiff.wrap_model)")
    names = wrapped.layer_names()
    if not isinstance(layer, str) or layer not in names:
        listed = ", ".join(repr(n) for n in names[:40]) + (f" and {len(names) - 40} more" if len(names) > 40 else "")
        raise bad("layer", layer, f"one of the layers of {wrapped.name}: {listed}")
    if reduce not in ("map", "mean"):
        raise bad("reduce", reduce, "'mean' (the channel's spatial mean) or 'map' (its whole map)")
    if read not in ("output", "input"):
        raise bad("read", read, "'output' or 'input' (of the layer)")
    shape = wrapped.layer_shape(layer, read)
    if not is_int(channel) or not 0 <= channel < shape[0]:
        raise bad("channel", channel, f"an integer in [0, {shape[0] - 1}] (the {read} of layer {layer!r} of "
                                      f"{wrapped.name} has {shape[0]} channels, shape {shape})")
    # Built with the in-place flags off, as every forward of the wrapper runs: neuron_map's refusal of
    # read="input" on an in-place module guards against overwritten values, which the wrapper rules out.
    with inplace_off(wrapped.model):
        obj = neuron_map(wrapped, f"model.{layer}", channel, reduce=reduce, read=read, name=name or wrapped.name)
    what = ("map" if reduce == "map" else "mean") + (", layer input" if read == "input" else "")
    return Objective(obj, f"channel {channel} of {name or wrapped.name}.{layer} ({what})", wrapped)
