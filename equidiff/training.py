"""Training helpers shared by every recipe that trains a model here (the digits zoo, the SAEs).

Every model of the project is trained deterministically from a seed (thesis reproducibility:
the same config gives the same weights), with the same small set of pieces:

* :class:`Batches` — endless seeded mini-batches, a fresh permutation every epoch;
* :func:`deterministic` — seeds the global RNG (weight init) and switches on deterministic
  kernels for the duration of a ``with`` block, restoring both afterwards;
* :func:`lr_lambda` — linear warm-up then cosine decay, for ``torch.optim.lr_scheduler.LambdaLR``;
* :func:`progress_bar` — an optional tqdm text bar (off in tests), which also streams its state to
  ``$EQUIDIFF_PROGRESS_LOG`` when the book build sets it (:class:`LoggedBar`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm  # text bar: tqdm.auto wants ipywidgets in a notebook and warns without it

__all__ = ["Batches", "deterministic", "lr_lambda", "progress_bar", "PROGRESS_LOG", "log_progress", "LoggedBar",
           "machine", "save_checkpoint", "load_checkpoint"]


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


# The environment variable naming a file every progress bar also appends its state to, one JSON line per
# redraw ({"bar": id, "text": the bar's line, "final": bool}). The book build (equidiff.build) sets it for
# each chapter's kernel and prints the lines as they come, so training and the runs show in its terminal
# while the executed notebook keeps what it always kept.
PROGRESS_LOG = "EQUIDIFF_PROGRESS_LOG"


def log_progress(bar: str, text: str, final: bool = False) -> None:
    """Append one progress line of bar ``bar`` to ``$EQUIDIFF_PROGRESS_LOG`` (nothing when it is unset).

    One short ``write`` to a file opened for appending, so lines of several processes (a chapter's
    worker pool) never interleave. A log that cannot be written never stops the run."""
    path = os.environ.get(PROGRESS_LOG)
    if not path or not text:
        return
    line = json.dumps({"bar": bar, "text": text.strip(), "final": bool(final)}, ensure_ascii=False) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError:
        pass


class Discard:
    """A text stream that drops what it is given (a bar that shows nowhere but the progress log)."""

    def write(self, s):
        return len(s)

    def flush(self):
        pass


class LoggedBar(tqdm):
    """A tqdm bar that also sends each redraw (tqdm's own ``mininterval``) and its final state to
    :func:`log_progress`."""

    def __init__(self, *args, **kwargs):
        self._log_id = f"{os.getpid()}-{id(self)}"
        self._log_closed = False
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        shown = super().display(msg, pos)
        if not self._log_closed:
            log_progress(self._log_id, str(self) if msg is None else msg)
        return shown

    def close(self):
        if not self._log_closed and not self.disable:
            self._log_closed = True
            log_progress(self._log_id, str(self), final=True)
        super().close()


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm text bar over ``total`` steps on stderr, or a silent one when ``enabled`` is False.

    Where ``$EQUIDIFF_PROGRESS_LOG`` names a file (:data:`PROGRESS_LOG`; the book build sets it), the bar
    also streams its state there (:class:`LoggedBar`), shown on stderr or not: a chapter that trains
    a model keeps no stderr bar in its notebook, and ``make book`` still shows the training's progress."""
    if os.environ.get(PROGRESS_LOG):
        return LoggedBar(total=total, desc=desc, disable=False, mininterval=1.0,
                         file=sys.stderr if enabled else Discard())
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=1.0)


def machine() -> dict:
    """The machine a model is trained or measured on: CPU model, cores, threads, library versions."""
    import diffusers
    import timm

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "timm": timm.__version__}


def save_checkpoint(path, state: dict) -> None:
    """Write a training run's whole state (tensors and plain values) atomically: a run killed while
    saving keeps the previous checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, identity: dict):
    """The state saved by :func:`save_checkpoint` at ``path`` (None when there is none), refused unless its
    ``"identity"`` equals ``identity`` (the config and code version it belongs to)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or damaged: name it, never train on from garbage
        raise RuntimeError(f"training checkpoint {path} cannot be loaded ({type(e).__name__}: {e}); "
                           f"delete it to train from the start") from e
    if state.get("identity") != identity:
        raise ValueError(f"training checkpoint {path} belongs to another config or code version; "
                         f"delete it to train this config from the start")
    return state
