"""Thesis Algorithm 1 (Appendix .1): invariant-set generation by optimising the starting noise.

``find_invariants(objective, query, prior, config)`` draws ``z_T`` for ``config.n_samples``
samples, maps each through a differentiable prior ``z_T -> x`` (a deterministic diffusion
sampler, or :class:`IdentityPrior` for "no prior"), and optimises ``z_T`` until
``λ(||L(x) − L(x*)||² + ||L(F(x)) − L(x*)||²) < τ`` or the step budget ``B`` is spent.

Samples are optimised as one batch, but each is independent: every loss term and both
optimisers act element-wise, a converged sample is frozen (no longer run through the prior,
its ``z_T`` no longer changes) and the batch shrinks as samples converge.

``iterate_invariants`` is the same loop as a generator yielding a :class:`StepState` per step
and returning the :class:`InvariantResult` (the generator's return value), so notebooks can plot
convergence without a second code path; ``find_invariants`` consumes it (``on_step`` sees each
state). :func:`invariant_loss` is the one loss of Algorithm 1 (lines 15-20), used by the loop, the
pixel baselines and the guidance baseline alike.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Generator, Optional

import torch

from equidiff._validate import bad as _bad, is_int as _is_int, is_num as _is_num
from equidiff.core.filters import lowpass
from equidiff.core.lbfgs import BatchedLBFGS
from equidiff.core.checks import (check_measurements, check_query, check_samples, check_target, measure_query,
                                  objective_model)
from equidiff.core.objectives import Objective
from equidiff.core.priors import IdentityPrior
from equidiff.core.resume import load_checkpoint, run_identity, save_checkpoint

__all__ = [
    "InvariantConfig",
    "InvariantResult",
    "StepState",
    "find_invariants",
    "iterate_invariants",
    "invariant_loss",
]

_OPTIMIZERS = ("adam", "sgd", "newton", "lbfgs")
_REDUCTIONS = ("sum", "mean")


@dataclass
class InvariantConfig:
    """Settings of Algorithm 1. Every field is validated; a bad value raises ``ValueError``."""

    n_samples: int = 32  # number of invariant samples (independent starting latents z_T)
    steps: int = 200  # step budget B: optimiser steps at most per sample
    tau: float = 0.01  # loss threshold τ; a sample whose loss is below it is converged and frozen
    optimizer: str = "adam"  # "adam", "sgd" (the thesis: SGD, lr = 10), "lbfgs" (per sample) or "newton" (m = 1 only)
    lr: float = 0.1  # learning rate η ("lbfgs": the longest step, as a multiple of the quasi-Newton step; 1.0)
    lbfgs_memory: int = 20  # "lbfgs" only: (s, y) pairs kept per sample (≳ m, the number of measured values)
    momentum: float = 0.0  # SGD momentum in [0, 1); ignored by Adam
    step_size: float = 1.0  # λ: scales the combined loss (Algorithm 1, line 20)
    lowpass_cutoff: Optional[float] = None  # cutoff of the low-pass filter F in (0, 1]; None: no filtered term
    reduction: str = "sum"  # "sum": ||L(x) − y*||² as in Algorithm 1; "mean": divided by m
    keep_norm: bool = False  # rescale each z_T to its initial norm after every step (keeps z_T typical)
    restart_after: Optional[int] = None  # ≥ 1: a start whose best loss since it was drawn is still above restart_factor·τ this many steps later gets fresh noise (the steps count against the budget); None: never
    restart_factor: float = 100.0  # > 1: "hopeless" threshold of restart_after, in units of τ
    restart_limit: Optional[int] = None  # ≥ 1: a start still above τ this many steps after it was drawn gets fresh noise (one crawling at a few τ for hundreds of steps); None: never
    repulsion: float = 0.0  # ≥ 0: weight of a Gaussian repulsion between samples' outputs (spreads few points)
    repulsion_scale: float = 0.1  # > 0: length scale of that repulsion, in units of x
    seed: int = 0  # seed of the torch.Generator that draws z_T
    progress: bool = False  # show a tqdm progress bar
    checkpoint_path: Optional[str] = None  # file to write resumable state to (and resume from; only by the same run: query, objective, model, prior and settings are recorded and checked)
    checkpoint_every: int = 0  # write the checkpoint every k steps (0: never)

    def __post_init__(self):
        if not _is_int(self.n_samples) or self.n_samples < 1:
            raise _bad("n_samples", self.n_samples, "an integer ≥ 1")
        if not _is_int(self.steps) or self.steps < 0:
            raise _bad("steps", self.steps, "an integer ≥ 0 (the step budget B)")
        if not _is_num(self.tau) or self.tau <= 0:
            raise _bad("tau", self.tau, "a finite number > 0")
        if self.optimizer not in _OPTIMIZERS:
            raise _bad("optimizer", self.optimizer, f"one of {_OPTIMIZERS}")
        if not _is_num(self.lr) or self.lr <= 0:
            raise _bad("lr", self.lr, "a finite number > 0")
        if not _is_num(self.momentum) or not (0 <= self.momentum < 1):
            raise _bad("momentum", self.momentum, "a number in [0, 1)")
        if not _is_int(self.lbfgs_memory) or self.lbfgs_memory < 1:
            raise _bad("lbfgs_memory", self.lbfgs_memory, "an integer ≥ 1")
        if not _is_num(self.step_size) or self.step_size <= 0:
            raise _bad("step_size", self.step_size, "a finite number > 0 (λ)")
        if self.lowpass_cutoff is not None and (
            not _is_num(self.lowpass_cutoff) or not (0 < self.lowpass_cutoff <= 1)
        ):
            raise _bad("lowpass_cutoff", self.lowpass_cutoff, "None or a number in (0, 1] (fraction of Nyquist)")
        if self.reduction not in _REDUCTIONS:
            raise _bad("reduction", self.reduction, f"one of {_REDUCTIONS}")
        if not isinstance(self.keep_norm, bool):
            raise _bad("keep_norm", self.keep_norm, "True or False")
        if self.restart_after is not None and (not _is_int(self.restart_after) or self.restart_after < 1):
            raise _bad("restart_after", self.restart_after, "None or an integer ≥ 1 (optimiser steps)")
        if self.restart_limit is not None and (not _is_int(self.restart_limit) or self.restart_limit < 1):
            raise _bad("restart_limit", self.restart_limit, "None or an integer ≥ 1 (optimiser steps)")
        if not _is_num(self.restart_factor) or self.restart_factor <= 1:
            raise _bad("restart_factor", self.restart_factor, "a number > 1 (a multiple of tau)")
        if not _is_num(self.repulsion) or self.repulsion < 0:
            raise _bad("repulsion", self.repulsion, "a finite number ≥ 0")
        if not _is_num(self.repulsion_scale) or self.repulsion_scale <= 0:
            raise _bad("repulsion_scale", self.repulsion_scale, "a finite number > 0")
        if not _is_int(self.seed) or self.seed < 0:
            raise _bad("seed", self.seed, "an integer ≥ 0")
        if not isinstance(self.progress, bool):
            raise _bad("progress", self.progress, "True or False")
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise _bad("checkpoint_every", self.checkpoint_every, "an integer ≥ 0")
        if self.optimizer == "newton" and (self.lowpass_cutoff is not None or self.repulsion > 0):
            raise _bad(
                "optimizer", self.optimizer,
                "'adam' or 'sgd' when lowpass_cutoff or repulsion is set ('newton' takes neither)",
            )
        if self.optimizer == "lbfgs" and self.repulsion > 0:
            raise _bad(
                "optimizer", self.optimizer,
                "'adam' or 'sgd' when repulsion is set (it couples the samples; 'lbfgs' keeps them apart)",
            )
        if self.checkpoint_every > 0 and not self.checkpoint_path:
            raise _bad("checkpoint_path", self.checkpoint_path, "a file path when checkpoint_every > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _identity(self) -> dict:
        """Fields that must match for a checkpoint to be resumed."""
        d = self.to_dict()
        for k in ("progress", "checkpoint_path", "checkpoint_every", "steps"):
            d.pop(k)
        return d


@dataclass
class StepState:
    """What the loop reports after evaluating step ``step`` (before its optimiser update)."""

    step: int
    loss: torch.Tensor  # (N,) latest loss of every sample (frozen samples keep their final loss)
    active: torch.Tensor  # (N,) bool: still being optimised after this step
    converged: torch.Tensor  # (N,) bool
    z_norm: torch.Tensor  # (N,) |z_T| per sample


@dataclass
class InvariantResult:
    """Output of Algorithm 1 for one query."""

    x: torch.Tensor  # (N, ...) final samples (for converged samples: x at convergence)
    z: torch.Tensor  # (N, ...) optimised starting latents z_T
    z_init: torch.Tensor  # (N, ...) starting latents as drawn
    measurements: torch.Tensor  # (N, m) L(x)
    target: torch.Tensor  # (1, m) L(x*)
    loss: torch.Tensor  # (N,) final total loss λ(loss1 + loss2)
    converged: torch.Tensor  # (N,) bool: loss < τ within the budget
    steps_to_converge: torch.Tensor  # (N,) optimiser steps used (restarts included); -1 where not converged
    history: dict  # per step: loss_mean, loss_max, n_active, z_norm_mean (lists of floats)
    config: InvariantConfig
    description: str  # the objective's description
    seconds: float  # wall time of the loop
    restarts: Optional[torch.Tensor] = None  # (N,) how often each sample got fresh noise (restart_after); z_init holds the last draw

    @property
    def success_rate(self) -> float:
        return float(self.converged.float().mean())

    def summary(self) -> dict:
        done = self.steps_to_converge[self.converged].float()
        return {
            "objective": self.description,
            "n": int(self.converged.numel()),
            "success_rate": self.success_rate,
            "loss_mean": float(self.loss.mean()),
            "loss_max": float(self.loss.max()),
            "steps_median": float(done.median()) if done.numel() else None,
            "steps_max": int(done.max()) if done.numel() else None,
            "n_restarted": int((self.restarts > 0).sum()) if self.restarts is not None else 0,
            "seconds": self.seconds,
        }


@torch.no_grad()
def _restart(z, z_init, init_norm, opt, prior, cfg, rows: torch.Tensor, restarts: torch.Tensor,
             sample_offset: int = 0) -> None:
    """Fresh starting noise for the samples ``rows`` and a fresh optimiser state for them.

    The k-th restart of sample i draws from a generator seeded by (seed, sample_offset + i, k):
    the sample's *global* index, so a run is reproducible, a resumed run draws the same noise and
    a batch of :func:`~equidiff.core.batched.find_invariants_batched` draws what one unbatched run
    draws for the same samples.
    """
    for i in rows.tolist():
        restarts[i] += 1
        g = sample_offset + i
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7_919 * (g + 1) + int(restarts[i]))
        fresh = prior.sample_latents(1, gen)[0].to(device=z.device, dtype=z.dtype)
        z[i] = fresh
        z_init[i] = fresh.to(z_init.device)
        init_norm[i] = fresh.flatten().norm()
    if isinstance(opt, BatchedLBFGS):
        opt.reset_rows(rows.to(z.device))
    else:  # Adam's moments, SGD's momentum: forget them for these rows
        for v in opt.state.get(z, {}).values():
            if isinstance(v, torch.Tensor) and v.shape == z.shape:
                v[rows.to(v.device)] = 0


def _make_optimizer(z: torch.Tensor, cfg: InvariantConfig):
    params = [z]
    if cfg.optimizer == "lbfgs":
        return BatchedLBFGS(z, memory=cfg.lbfgs_memory, max_step=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "newton":
        return torch.optim.SGD(params, lr=cfg.lr)  # placeholder for state_dict(); steps are taken by hand
    return torch.optim.Adam(params, lr=cfg.lr)


def _per_sample_sq(m: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    d = (m - target) ** 2  # (B, m)
    return d.sum(1) if reduction == "sum" else d.mean(1)


def invariant_loss(
    objective: Objective | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    lowpass_cutoff: float | None = None,
    reduction: str = "sum",
    *,
    filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    measurements: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-sample loss of Algorithm 1 (lines 15-20, λ = 1): ||L(x) − y*||² + ||L(F(x)) − y*||², (B,).

    The second (filtered) term is there when a low-pass filter F is given: ``filter`` (a callable)
    or ``lowpass_cutoff`` (the ideal low-pass of :func:`equidiff.core.filters.lowpass` at that
    fraction of Nyquist); with neither, only the first term. ``reduction``: ``"sum"`` over the m
    measured values (Algorithm 1) or ``"mean"`` (divided by m). ``measurements``: L(x) when the
    caller has it already (Algorithm 1 keeps it), so ``objective`` is not run on ``x`` twice.
    """
    if reduction not in _REDUCTIONS:
        raise _bad("reduction", reduction, "'sum' or 'mean'")
    if filter is not None and lowpass_cutoff is not None:
        raise _bad("lowpass_cutoff", lowpass_cutoff, "None when a filter is given (one low-pass term)")
    tgt = target.reshape(1, -1)  # (1, m)
    meas = objective(x) if measurements is None else measurements  # (B, m)
    loss = _per_sample_sq(meas, tgt, reduction)
    if filter is None and lowpass_cutoff is not None:
        loss = loss + _per_sample_sq(objective(lowpass(x, lowpass_cutoff)), tgt, reduction)
    elif filter is not None:
        loss = loss + _per_sample_sq(objective(filter(x)), tgt, reduction)
    return loss


def _repulsion(x_active: torch.Tensor, x_all: torch.Tensor, idx: torch.Tensor, scale: float):
    """Σ_i Σ_{j≠i} exp(−|x_i − x_j|² / 2s²) between active samples and all others."""
    a = x_active.flatten(1)
    b = x_all.flatten(1)
    d2 = torch.cdist(a, b) ** 2  # (A, N)
    k = torch.exp(-d2 / (2 * scale**2))
    k = k.masked_fill(torch.nn.functional.one_hot(idx, b.shape[0]).bool(), 0.0)
    return k.sum()


def iterate_invariants(
    objective: Objective | Callable[[torch.Tensor], torch.Tensor],
    query: torch.Tensor,
    prior=None,
    config: InvariantConfig | None = None,
    *,
    z_init: torch.Tensor | None = None,
    filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    target: torch.Tensor | None = None,
    sample_offset: int = 0,
) -> Generator[StepState, None, InvariantResult]:
    """Algorithm 1 as a generator: yields a :class:`StepState` per step, returns the :class:`InvariantResult`.

    The result is the generator's return value (``StopIteration.value``; ``result = yield from
    iterate_invariants(...)`` inside another generator); :func:`find_invariants` runs the loop
    and returns it. See :func:`find_invariants` for the arguments.
    """
    cfg = config or InvariantConfig()
    if not isinstance(cfg, InvariantConfig):
        raise TypeError(f"config must be an InvariantConfig, got {type(cfg).__name__}")
    check_query(objective, query, prior)  # form, dtype, device, prior: before anything runs (core/checks.py)
    if not _is_int(sample_offset) or sample_offset < 0:
        raise _bad("sample_offset", sample_offset, "an integer ≥ 0 (the global index of the first sample)")
    if prior is None:
        prior = IdentityPrior(query.shape[1:])
    given_filter = filter  # a caller's filter is part of the run's identity; the default one is the config's
    if filter is None and cfg.lowpass_cutoff is not None:
        cutoff = cfg.lowpass_cutoff
        filter = lambda x: lowpass(x, cutoff)  # noqa: E731

    # Algorithm 1, line 2: store the target invariant value y* = L(x*).
    with torch.no_grad():
        tgt = measure_query(objective, query) if target is None else check_target(target)
    tgt = tgt.detach().reshape(1, -1)  # (1, m)
    if cfg.optimizer == "newton" and tgt.shape[1] != 1:
        raise ValueError(
            f"optimizer 'newton' needs a scalar objective (m = 1), this one measures m = {tgt.shape[1]} values"
        )
    if not torch.isfinite(tgt).all():
        raise ValueError("objective(query) is not finite; the target L(x*) must be a finite vector")

    # Algorithm 1, line 1: draw the starting latents z_T ~ N(0, I) from a seeded generator.
    gen = torch.Generator().manual_seed(cfg.seed)
    if z_init is None:
        z_init = prior.sample_latents(cfg.n_samples, gen)
    z_init = z_init.to(query.device)
    if z_init.shape[0] != cfg.n_samples:
        raise ValueError(
            f"z_init must hold n_samples={cfg.n_samples} latents, got shape {tuple(z_init.shape)}"
        )
    n = cfg.n_samples
    z = z_init.detach().clone().requires_grad_(True)  # (N, ...) the only trainable tensor
    opt = _make_optimizer(z, cfg)  # Algorithm 1, line 6
    init_norm = z_init.flatten(1).norm(dim=1)  # (N,)

    active = torch.ones(n, dtype=torch.bool)
    converged = torch.zeros(n, dtype=torch.bool)
    steps_to = torch.full((n,), -1, dtype=torch.long)
    loss_all = torch.full((n,), float("inf"))
    x_all: torch.Tensor | None = None
    m_all: torch.Tensor | None = None
    history = {"loss_mean": [], "loss_max": [], "n_active": [], "z_norm_mean": []}
    since = torch.zeros(n, dtype=torch.long)  # steps since each sample's z_T was drawn
    restarts = torch.zeros(n, dtype=torch.long)
    # lowest loss of each sample since its z_T was drawn: restart_after judges a start by this, not by
    # the latest evaluation (one rejected L-BFGS trial step can read 100τ at a point that was at 2τ)
    best = torch.full((n,), float("inf"))
    start = 0

    ckpt = cfg.checkpoint_path
    identity = tgt_cpu = None
    if ckpt:
        identity = run_identity(cfg, objective, prior, query, tgt, z_init, sample_offset, given_filter)
        tgt_cpu = tgt.detach().cpu()
    state = load_checkpoint(ckpt, identity, tgt) if ckpt else None
    if state is not None:
        with torch.no_grad():
            z.copy_(state["z"])
        z_init = state["z_init"]
        opt.load_state_dict(state["optimizer"])
        active, converged, steps_to = state["active"], state["converged"], state["steps_to"]
        loss_all, x_all, m_all = state["loss"], state["x"], state["m"]
        history = state["history"]
        since, restarts = state["since"], state["restarts"]
        best = state["best"] if "best" in state else loss_all.clone()  # a checkpoint written before "best" existed
        init_norm = z_init.flatten(1).norm(dim=1).to(z.device)
        start = state["next_step"]

    bar = None
    if cfg.progress:
        from tqdm import tqdm  # text bar: tqdm.auto wants ipywidgets in a notebook and warns without it

        bar = tqdm(total=cfg.steps, initial=start, desc="invariant samples", unit="step")

    t0 = time.perf_counter()
    step = start
    for step in range(start, cfg.steps + 1):
        if not active.any():
            break
        idx = active.nonzero().squeeze(1)  # samples still being optimised
        # Lines 9-14: reset to z_T and run the (checkpointed) deterministic sampler; decode.
        x = prior(z[idx])  # (A, ...)
        if step == start:  # before the first optimiser step: samples of the query's kind, measured as (A, m)
            check_samples(x, query, prior, objective_model(objective))
        # Lines 15-20: dual (unfiltered + filtered) loss with step size λ.
        meas = objective(x)  # (A, m)
        if step == start:
            check_measurements(meas, tgt, len(idx), target is not None)
        loss = invariant_loss(objective, x, tgt, reduction=cfg.reduction, filter=filter, measurements=meas)
        total = cfg.step_size * loss  # (A,)
        bad = ~torch.isfinite(total.detach())
        if bad.any():
            raise FloatingPointError(
                f"loss is not finite at step {step} for samples {idx[bad].tolist()}; "
                "lower lr, or check the prior and objective for overflow"
            )

        if x_all is None:
            x_all = torch.zeros((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
            m_all = torch.zeros((n, meas.shape[1]), dtype=meas.dtype, device=meas.device)
        x_all[idx] = x.detach()
        m_all[idx] = meas.detach()
        loss_all[idx] = total.detach().cpu()
        best[idx] = torch.minimum(best[idx], loss_all[idx])

        # Lines 21-23: per-sample early stop. A converged sample is frozen from here on.
        done = (total.detach() < cfg.tau).cpu()
        converged[idx[done]] = True
        steps_to[idx[done]] = step
        active[idx[done]] = False
        if step == cfg.steps:
            active[:] = False  # budget spent

        z_norm = z.detach().flatten(1).norm(dim=1).cpu()
        history["loss_mean"].append(float(loss_all.mean()))
        history["loss_max"].append(float(loss_all.max()))
        history["n_active"].append(int((~converged).sum()))  # samples still above τ (the budget ending frees none)
        history["z_norm_mean"].append(float(z_norm.mean()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(active=int(active.sum()), loss=f"{float(loss_all.max()):.3g}")
        yield StepState(step, loss_all.clone(), active.clone(), converged.clone(), z_norm)

        if not active.any():
            break
        # Lines 24-26: backward to z_T, optimiser step, zero grad.
        keep = ~done
        rows = idx[keep]  # samples that take a step
        if cfg.optimizer == "newton":
            # Newton–Raphson on the level-set residual r = L(x) − y*: z ← z − η r ∇r / |∇r|²,
            # the minimum-norm step onto the linearised level set (a Gauss–Newton step).
            r = (meas - tgt).squeeze(1)[keep]  # (K,)
            (g,) = torch.autograd.grad(r.sum(), z)
            with torch.no_grad():
                gi = g[rows].flatten(1)  # (K, d)
                scale_ = r.detach() / gi.pow(2).sum(1).clamp(min=1e-12)
                z[rows] = z[rows] - cfg.lr * (scale_[:, None] * gi).view_as(z[rows])
        elif cfg.optimizer == "lbfgs":
            # a per-sample quasi-Newton step on λ·L_i (equidiff/core/lbfgs.py): one backward pass, as for Adam
            (g,) = torch.autograd.grad(total[keep].sum(), z)
            opt.step(z, rows, total.detach()[keep], g[rows])
        else:
            obj = total[keep].sum()
            if cfg.repulsion > 0:
                x_ref = x_all.clone()
                x_ref[idx] = x
                obj = obj + cfg.repulsion * _repulsion(x[keep], x_ref, rows, cfg.repulsion_scale)
            opt.zero_grad(set_to_none=True)
            obj.backward()
            frozen = ~active
            with torch.no_grad():
                saved = z[frozen].clone()
                opt.step()
                z[frozen] = saved  # frozen samples do not move (Adam momentum would move them)
        if cfg.keep_norm:  # keep z_T typical: back onto its initial norm (as DiG-IN does)
            with torch.no_grad():
                cur = z[rows].flatten(1).norm(dim=1).clamp(min=1e-12)
                z[rows] = z[rows] * (init_norm[rows] / cur).view(-1, *([1] * (z.dim() - 1)))
        if cfg.restart_after is not None or cfg.restart_limit is not None:
            r_cpu = rows.cpu()  # the samples that took a step: none of them is under τ
            since[r_cpu] += 1
            hopeless = torch.zeros(len(r_cpu), dtype=torch.bool)
            if cfg.restart_after is not None:
                hopeless |= (since[r_cpu] >= cfg.restart_after) & (best[r_cpu] > cfg.restart_factor * cfg.tau)
            if cfg.restart_limit is not None:
                hopeless |= since[r_cpu] >= cfg.restart_limit
            hopeless = r_cpu[hopeless]
            if hopeless.numel():
                z_init = z_init.clone()  # the caller's tensor is not changed
                _restart(z, z_init, init_norm, opt, prior, cfg, hopeless, restarts, sample_offset)
                since[hopeless] = 0
                best[hopeless] = float("inf")

        save_checkpoint(ckpt, cfg, step, z, z_init, opt, active, converged, steps_to, loss_all, x_all, m_all, history,
                        since, restarts, identity, tgt_cpu, best)

    if bar is not None:
        bar.close()
    if cfg.optimizer == "lbfgs" and x_all is not None:
        # L-BFGS's iterate is its last *accepted* point; a sample whose budget ended on a rejected
        # trial step (loss went up) is reported at that accepted point, measured again here.
        back = (~converged) & (loss_all > opt.prev_loss.cpu())
        if back.any():
            rows = back.nonzero().squeeze(1)
            with torch.no_grad():
                z[rows] = opt.prev_z[rows].view_as(z[rows])
                x = prior(z[rows])
                meas = objective(x)
                loss = invariant_loss(objective, x, tgt, reduction=cfg.reduction, filter=filter, measurements=meas)
            x_all[rows], m_all[rows] = x, meas
            loss_all[rows] = (cfg.step_size * loss).cpu()
    return InvariantResult(
        x=x_all,
        z=z.detach(),
        z_init=z_init,
        measurements=m_all,
        target=tgt,
        loss=loss_all,
        converged=converged,
        steps_to_converge=steps_to,
        history=history,
        config=cfg,
        description=getattr(objective, "description", getattr(objective, "__name__", "objective")),
        seconds=time.perf_counter() - t0,
        restarts=restarts,
    )


def find_invariants(
    objective: Objective | Callable[[torch.Tensor], torch.Tensor],
    query: torch.Tensor,
    prior=None,
    config: InvariantConfig | None = None,
    *,
    z_init: torch.Tensor | None = None,
    filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    target: torch.Tensor | None = None,
    sample_offset: int = 0,
    on_step: Callable[[StepState], None] | None = None,
) -> InvariantResult:
    """Sample members of IS(x*) = {x : L(x) = L(x*)} (thesis Eq. 3.1) with Algorithm 1.

    Parameters
    ----------
    objective: the measurement L, ``(B, ...) -> (B, m)``; its networks must be in eval mode.
    query: the query x*, shape ``(1, ...)``: an input of the prior's kind (its samples' shape, dtype
        and device) and of the objective's model (its device and dtype).
    prior: differentiable map ``z_T -> x`` with ``sample_latents(n, generator)``;
        ``None`` means no prior (x = z, started from N(0, I) in the query's shape); refused for an
        image query with a model objective (its "members" would be noise images): pass
        ``IdentityPrior(query.shape[1:])`` to optimise pixels on purpose.

    A misuse (a query, prior, objective or target that does not fit, a network in train mode, an
    output index past the model's outputs) raises ``ValueError`` naming the argument before the first
    optimiser step (:mod:`equidiff.core.checks`).
    config: :class:`InvariantConfig`.
    z_init: optional starting latents (N, ...) instead of drawing them.
    filter: the low-pass filter F of the dual loss; by default built from
        ``config.lowpass_cutoff`` (no filtered term when that is None).
    target: optional target y* instead of ``objective(query)``.
    sample_offset: global index of the first sample (seeds of ``restart_after``'s fresh noise;
        :func:`~equidiff.core.batched.find_invariants_batched` sets it per batch).
    on_step: called with each step's :class:`StepState` (a convergence plot, a progress line).
    """
    steps = iterate_invariants(
        objective, query, prior, config, z_init=z_init, filter=filter, target=target, sample_offset=sample_offset
    )
    while True:
        try:
            state = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_step is not None:
            on_step(state)
