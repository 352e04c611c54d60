"""Training helpers shared by every recipe that trains a model here (the digits zoo, the SAEs).

Every model of the project is trained deterministically from a seed (thesis reproducibility:
the same config gives the same weights), with the same small set of pieces:

* :class:`Batches` — endless seeded mini-batches, a fresh permutation every epoch;
* :func:`deterministic` — seeds the global RNG (weight init) and switches on deterministic
  kernels for the duration of a ``with`` block, restoring both afterwards;
* :func:`lr_lambda` — linear warm-up then cosine decay, for ``torch.optim.lr_scheduler.LambdaLR``;
* :func:`progress_bar` — an optional tqdm text bar (off in tests).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from tqdm import tqdm  # text bar: tqdm.auto wants ipywidgets in a notebook and warns without it

__all__ = ["Batches", "deterministic", "lr_lambda", "progress_bar"]


class Batches:
    """Endless seeded mini-batches: a fresh permutation of the data every epoch."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.gen = n, min(batch_size, n), generator
        self.perm, self.pos = torch.randperm(n, generator=generator), 0

    def next(self) -> torch.Tensor:
        """The indices ``(batch_size,)`` of the next mini-batch (a new permutation once the epoch is used up)."""
        if self.pos + self.batch_size > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


@contextlib.contextmanager
def deterministic(seed: int):
    """Seed the global RNG for weight init and use deterministic kernels; restore both on exit."""
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was, warn_only=was_warn)


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at step ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm text bar over ``total`` steps, or a silent one when ``enabled`` is False."""
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=1.0)
