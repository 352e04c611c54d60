"""A batched, per-sample L-BFGS for Algorithm 1 (``InvariantConfig(optimizer="lbfgs")``).

Why: the invariant constraint is a sum of squares ``L_i = ||r_i||²`` of m residuals (16 values
of a neuron map, 10 class probabilities). Near a solution its Hessian is ``2 Jᵀ J`` — rank m in a
latent of d ≫ m dimensions — and badly conditioned: Adam (fixed step per coordinate) and plain
gradient steps stall at L ≈ 0.1–1, far above τ = 0.01 (measured on the digits neurons; see the
Performance page). L-BFGS learns that low-rank curvature from the last ``memory`` (s, y) pairs
and behaves like a Gauss–Newton step once it has them, at the cost of one backward pass per step.

Every sample has its own history, step length and line search; samples never interact, so
batching changes nothing but speed. The line search is the cheapest that works with the loop's
one-evaluation-per-step structure: a step whose loss came out *higher* than before is taken back
at the next evaluation and retried with half the length; an accepted step doubles the length
again (up to ``max_step``); after ten rejections in a row the sample's history is dropped and it
restarts from a gradient step. The step length is also capped at t · (−g·d) ≤ 2L, the decrease
an exact Gauss–Newton step on a sum of squares predicts (its quadratic model reaches zero there).
"""

from __future__ import annotations

import torch


class BatchedLBFGS:
    """Per-sample L-BFGS over the rows of one parameter tensor ``z`` of shape ``(N, ...)``."""

    def __init__(self, z: torch.Tensor, memory: int = 20, max_step: float = 1.0):
        n, d = z.shape[0], z[0].numel()
        kw = {"dtype": z.dtype, "device": z.device}
        self.memory, self.max_step = int(memory), float(max_step)
        self.s = torch.zeros(n, self.memory, d, **kw)  # (N, M, d) last steps z_{k+1} − z_k, newest last
        self.y = torch.zeros(n, self.memory, d, **kw)  # (N, M, d) matching gradient changes
        self.valid = torch.zeros(n, self.memory, dtype=torch.bool, device=z.device)  # (N, M)
        self.t_max = torch.full((n,), self.max_step, **kw)  # (N,) current step-length bound
        self.prev_z = torch.zeros(n, d, **kw)  # (N, d) last accepted point
        self.prev_g = torch.zeros(n, d, **kw)  # (N, d) its gradient
        self.prev_loss = torch.full((n,), float("inf"), **kw)  # (N,) its loss (inf: none yet)

    # -- the torch.optim-like interface the checkpoints use ---------------------------------
    def state_dict(self) -> dict:
        keys = ("s", "y", "valid", "t_max", "prev_z", "prev_g", "prev_loss")
        return {k: getattr(self, k).clone() for k in keys}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            getattr(self, k).copy_(v)

    @torch.no_grad()
    def reset_rows(self, rows: torch.Tensor) -> None:
        """Forget everything about the samples ``rows`` (their z_T was replaced)."""
        self.valid[rows] = False
        self.t_max[rows] = self.max_step
        self.prev_loss[rows] = float("inf")

    # -- one step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, z: torch.Tensor, rows: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> None:
        """Move ``z[rows]`` given their losses ``(K,)`` and gradients ``(K, ...)`` at the current z."""
        if rows.numel() == 0:
            return
        rows = rows.to(z.device)  # the loop keeps its bookkeeping on the CPU; the state lives with z
        shape = z[rows].shape
        zf = z[rows].flatten(1)  # (K, d)
        g = grad.flatten(1).to(zf.dtype)  # (K, d)
        L = loss.detach().to(zf.dtype)  # (K,)
        prev_L, prev_z, prev_g = self.prev_loss[rows], self.prev_z[rows], self.prev_g[rows]

        # Line search by rejection: a step that raised the loss is undone and retried at half length.
        worse = L > prev_L  # (K,)
        zf = torch.where(worse[:, None], prev_z, zf)
        g = torch.where(worse[:, None], prev_g, g)
        L = torch.where(worse, prev_L, L)
        t_max = torch.where(worse, self.t_max[rows] * 0.5, (self.t_max[rows] * 2).clamp(max=self.max_step))
        # Restart: after ~10 rejections in a row the curvature model is useless here (the DDIM chain's
        # clip_sample makes the loss only piecewise smooth); forget it and start again from the gradient.
        stuck = t_max < self.max_step * 2.0**-10
        if stuck.any():
            self.valid[rows[stuck]] = False
            t_max = torch.where(stuck, torch.full_like(t_max, self.max_step), t_max)
        self.t_max[rows] = t_max

        # Curvature pairs from accepted steps only, and only when s·y > 0 (keeps H positive definite).
        s, y = zf - prev_z, g - prev_g
        sy = (s * y).sum(1)
        push = (~worse) & torch.isfinite(prev_L) & (sy > 1e-10 * s.norm(dim=1) * y.norm(dim=1))
        if push.any():
            r = rows[push]
            self.s[r] = torch.cat([self.s[r, 1:], s[push, None]], 1)
            self.y[r] = torch.cat([self.y[r, 1:], y[push, None]], 1)
            ones = torch.ones(len(r), 1, dtype=torch.bool, device=z.device)
            self.valid[r] = torch.cat([self.valid[r, 1:], ones], 1)
        self.prev_z[rows], self.prev_g[rows], self.prev_loss[rows] = zf, g, L

        d = -self._two_loop(rows, g, L)  # (K, d) quasi-Newton direction
        gd = (g * d).sum(1)
        uphill = gd >= 0  # a stale history can point uphill: fall back to the gradient and forget it
        if uphill.any():
            self.valid[rows[uphill]] = False
            d = torch.where(uphill[:, None], -self._polyak(g, L), d)
            gd = (g * d).sum(1)
        t = torch.minimum(self.t_max[rows], 2 * L / (-gd).clamp(min=1e-30))  # (K,)
        z[rows] = (zf + t[:, None] * d).view(shape)

    @staticmethod
    def _polyak(g: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        """The gradient step that halves the linearised loss: L / (2|g|²) · g."""
        return (0.5 * L / g.pow(2).sum(1).clamp(min=1e-30))[:, None] * g

    def _two_loop(self, rows: torch.Tensor, g: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        """H·g by the L-BFGS two-loop recursion, batched; samples without history get the Polyak step."""
        S, Y, V = self.s[rows], self.y[rows], self.valid[rows]  # (K, M, d), (K, M, d), (K, M)
        rho = torch.where(V, 1.0 / (S * Y).sum(2).clamp(min=1e-30), torch.zeros((), dtype=g.dtype))  # (K, M)
        q = g.clone()
        a = torch.zeros_like(rho)
        for j in range(self.memory - 1, -1, -1):  # newest to oldest
            a[:, j] = rho[:, j] * (S[:, j] * q).sum(1)
            q = q - a[:, j, None] * Y[:, j]
        last = V[:, -1]
        gamma = (S[:, -1] * Y[:, -1]).sum(1) / Y[:, -1].pow(2).sum(1).clamp(min=1e-30)  # (K,)
        h = torch.where(last[:, None], gamma[:, None] * q, self._polyak(g, L))
        for j in range(self.memory):  # oldest to newest
            b = rho[:, j] * (Y[:, j] * h).sum(1)
            h = h + (a[:, j] - b)[:, None] * S[:, j]
        return torch.where(last[:, None], h, self._polyak(g, L))
