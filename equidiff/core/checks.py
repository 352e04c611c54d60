"""The inputs of Algorithm 1, checked before its first step: no raw stack trace, no silent run.

:func:`~equidiff.core.invariants.find_invariants` (and the batched form) call these:

* :func:`check_query` before anything runs — the query's form (one input, floating point), its
  device and dtype against the objective's model, the prior (a prior, not ``None`` for an image
  model) and, where the prior declares it (``image_shape``), the query's shape against the
  prior's samples;
* :func:`measure_query` for the target y* = L(x*) (thesis Algorithm 1, line 2): the objective
  must fit the query and return ``(1, m)`` with ``m ≥ 1``;
* :func:`check_samples` and :func:`check_measurements` on the first batch the prior and the
  objective produce, before the first optimiser step: the prior's samples must be inputs of the
  query's kind (shape, dtype, device) and the objective must measure ``(B, m)`` of them.

Every misuse raises ``ValueError`` naming the argument (``query``, ``objective``, ``prior``,
``target``), what it got and what is allowed. Valid inputs pass untouched (no cast, no copy), so
results are bit-identical to an unchecked run.
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

from equidiff.core.objectives import check_eval_mode, expected_input

__all__ = ["objective_model", "check_query", "measure_query", "check_target", "check_samples", "check_measurements"]


def objective_model(objective) -> nn.Module | None:
    """The network an objective reads: the objective itself when it is a module, else its ``model``."""
    model = objective if isinstance(objective, nn.Module) else getattr(objective, "model", None)
    return model if isinstance(model, nn.Module) else None


def _name(objective) -> str:
    return repr(getattr(objective, "description", getattr(objective, "__name__", type(objective).__name__)))


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _listed(values) -> str:
    return " or ".join(sorted(str(v) for v in values))


def check_query(objective, query, prior) -> None:
    """Check the query x* (and the prior) before the target is computed; see the module docstring."""
    if not isinstance(query, torch.Tensor) or query.dim() < 2 or query.shape[0] != 1:
        raise ValueError(f"query must be one input with a batch dimension, shape (1, ...), got {_shape(query)}")
    if not query.is_floating_point():
        raise ValueError(
            f"query must be a floating-point tensor (an input of the prior's kind, e.g. a float32 image in "
            f"[-1, 1]), got dtype {query.dtype}; convert it with query.float()"
        )
    if not callable(objective):
        raise ValueError(f"objective must be a callable (B, ...) -> (B, m), e.g. an Objective, got {type(objective).__name__}")
    if prior is not None and not (callable(prior) and hasattr(prior, "sample_latents")):
        raise ValueError(
            "prior must be None or a prior z_T -> x with sample_latents(n, generator) (equidiff.core.priors.Prior: "
            f"IdentityPrior, PixelDDIMPrior, LatentDiTPrior, a world's prior), got {type(prior).__name__}"
        )
    model = objective_model(objective)
    check_eval_mode(model, f"the model {type(model).__name__} of objective {_name(objective)}")
    if model is not None:
        tensors = list(chain(model.parameters(), model.buffers()))
        devices = {t.device for t in tensors}
        dtypes = {t.dtype for t in tensors if t.is_floating_point()}
        if devices and query.device not in devices:
            raise ValueError(
                f"query must be on the device of the objective's model ({_listed(devices)}), got a query on "
                f"{query.device}; move it with query.to(device)"
            )
        if dtypes and query.dtype not in dtypes:
            raise ValueError(
                f"query must have the dtype of the objective's model ({_listed(dtypes)}), got {query.dtype}; "
                "convert it with query.to(dtype)"
            )
        if prior is None and query.dim() == 4:
            raise ValueError(
                f"prior must be a prior z_T -> x (PixelDDIMPrior, LatentDiTPrior, a world's prior) for an image "
                f"query of shape {_shape(query)} and the model objective {_name(objective)}, got None: None means "
                "no prior (x = z, started from N(0, I) noise), so the members found would be noise images. To "
                "optimise pixels on purpose pass IdentityPrior(query.shape[1:]) or use "
                "equidiff.core.baselines.pixel_invariants"
            )
    shape = getattr(prior, "image_shape", None) if prior is not None else None
    if shape is not None and tuple(query.shape[1:]) != tuple(shape):
        raise _shape_mismatch(query, tuple(shape), prior, model)


def _shape_mismatch(query: torch.Tensor, shape: tuple, prior, model) -> ValueError:
    dims = ", ".join(map(str, shape))
    wants = expected_input(model)
    hint = f"; the objective's model takes {wants}" if wants else ""
    return ValueError(
        f"query must have the shape of the prior's samples, (1, {dims}), got {tuple(query.shape)} "
        f"(prior {type(prior).__name__} returns samples of shape (B, {dims}){hint})"
    )


def measure_query(objective, query: torch.Tensor) -> torch.Tensor:
    """L(x*) as ``(1, m)``; a ValueError naming ``query`` when it does not fit the objective's model,
    naming ``objective`` when it returns anything but one row of ``m ≥ 1`` values."""
    try:
        out = objective(query)
    except (RuntimeError, AssertionError) as e:  # "mat1 and mat2 shapes cannot be multiplied", timm's size asserts
        wants = expected_input(objective_model(objective))
        hint = f" (its model's first layer takes {wants})" if wants else ""
        raise ValueError(f"query of shape {tuple(query.shape)} does not fit the objective {_name(objective)}{hint}: {e}") from e
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 1:
        what = (f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__)
        why = (" (it measures nothing, m = 0: an index or slice past the model's outputs?)"
               if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == 0 else
               " (return x.reshape(len(x), -1), or wrap the function with equidiff.core.objectives.from_function, "
               "which always returns (B, m))")
        raise ValueError(
            f"objective must return a tensor of shape (B, m): m ≥ 1 measured values for each of the B inputs, "
            f"got {what} for the query of shape {tuple(query.shape)}{why}"
        )
    return out


def check_target(target) -> torch.Tensor:
    """A caller's target y*: a floating-point tensor of m ≥ 1 values (any shape; it is read as (1, m))."""
    if not isinstance(target, torch.Tensor) or not target.is_floating_point() or target.numel() < 1:
        what = f"dtype {target.dtype}, shape {tuple(target.shape)}" if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must be None or a floating-point tensor of the m ≥ 1 values y* = L(x*), got {what}")
    return target


def check_samples(x, query: torch.Tensor, prior, model: nn.Module | None = None) -> None:
    """The prior's first samples must be inputs of the query's kind: shape ``(B, *query.shape[1:])``,
    the query's dtype and device (else the target and the samples are measured apart)."""
    kind = type(prior).__name__
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"prior must return a tensor of samples, got {type(x).__name__} from {kind}")
    if tuple(x.shape[1:]) != tuple(query.shape[1:]):
        raise _shape_mismatch(query, tuple(x.shape[1:]), prior, model)
    if x.dtype != query.dtype:
        raise ValueError(
            f"query must have the dtype of the prior's samples ({x.dtype}), got {query.dtype} "
            f"(prior {kind}); convert one of them"
        )
    if x.device != query.device:
        raise ValueError(
            f"query must be on the device of the prior's samples ({x.device}), got a query on {query.device} "
            f"(prior {kind}); move the query or the prior's networks"
        )
    finite = torch.isfinite(x.detach()).reshape(len(x), -1).all(1)  # (B,)
    if not finite.all():
        bad_rows = torch.nonzero(~finite).flatten().tolist()
        raise FloatingPointError(
            f"prior {kind} returned non-finite images (NaN or inf) for samples {bad_rows} of its first batch, "
            f"before any optimisation: check its networks' weights (a NaN weight poisons every sample)"
        )


def check_measurements(meas, target: torch.Tensor, n: int, target_given: bool = False) -> None:
    """The objective's first measurements of ``n`` samples must be ``(n, m)`` with the target's ``m``."""
    m = target.shape[1]
    if not isinstance(meas, torch.Tensor) or meas.dim() != 2 or meas.shape[0] != n:
        raise ValueError(f"objective must return a tensor of shape (B, m) = ({n}, {m}) for a batch of {n} samples, "
                         f"got {_shape(meas)}")
    if meas.shape[1] != m:
        if target_given:
            raise ValueError(f"target must hold the m = {meas.shape[1]} values the objective measures, got {m} values")
        raise ValueError(f"objective must measure as many values on the prior's samples as on the query (m = {m}), "
                         f"got shape {tuple(meas.shape)}")
