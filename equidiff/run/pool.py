"""A process pool for independent runs of Algorithm 1 on the CPU, with progress and fixed thread counts.

Each run ends in a long tail: after a few dozen steps the batch is down to a handful of slow
samples, and a batch of one or two small images cannot keep several cores busy. So on a CPU it
pays to give each run **one torch thread** and run several side by side in processes — and one
thread per run also makes the numbers independent of the machine's core count (L-BFGS's sums
depend on the thread count). :func:`run_pool` does that for any picklable function:

* ``workers == 1``: the items run one after the other in this process, under ``threads`` torch
  threads (the caller's count is restored after);
* ``workers > 1``: ``workers`` *spawned* processes (fork would copy this process's OpenMP state
  and can deadlock), each calling ``init(*init_args)`` once for its context and setting its own
  thread count, then the items in order of submission.

The results are the same for every ``workers`` as long as ``init`` rebuilds the context exactly
(:func:`run_world_pool`: the world is rebuilt from its name and parameters, its models reloaded from
the cache as the zoo loads them). Only the wall time changes.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Optional, Sequence

import torch

from equidiff._validate import bad
from equidiff.worlds import load_world

__all__ = ["torch_threads", "run_pool", "run_world_pool", "rebuild_world"]

_WORKER: dict = {}  # in a worker process: its context and the progress queue


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Run the block with ``n`` torch intra-op threads (None: leave the count as it is); the
    caller's count is restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker once the process that started the pool is gone: killed (``kill -9``, a killed
    ``make book``), it never shuts the pool down, and orphaned workers would keep the cores busy."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:  # re-parented: the pool's process has died
            os._exit(1)


def _worker_init(init: Callable, init_args: tuple, threads: Optional[int], messages, parent: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if threads is not None:
        torch.set_num_threads(threads)  # the same thread count as run_pool's in-process path
    _WORKER["context"] = init(*init_args)
    _WORKER["queue"] = messages


def _worker_run(fn: Callable, i: int, item) -> Any:
    messages = _WORKER["queue"]
    return fn(_WORKER["context"], item, lambda value: messages.put((i, value)))


def _check_workers(workers) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise bad("workers", workers, "an integer ≥ 1")


def run_pool(
    fn: Callable[[Any, Any, Callable[[Any], None]], Any],
    items: Sequence,
    workers: int,
    *,
    init: Optional[Callable[..., Any]] = None,
    init_args: tuple = (),
    context: Any = None,
    threads: Optional[int] = 1,
    on_report: Optional[Callable[[int, Any], None]] = None,
    on_done: Optional[Callable[[int, Any], None]] = None,
) -> list:
    """``[fn(context, item, report) for item in items]``, in ``workers`` processes; results in item order.

    ``fn(context, item, report)``: a module-level (picklable) function; ``report(value)`` sends a
    progress value for that item, which reaches ``on_report(i, value)`` in this process (item ``i``;
    from workers, as they send it). ``on_done(i, result)`` is called here when item ``i`` finished.
    ``context``: what ``fn`` gets in this process (``workers == 1``); ``init(*init_args)`` builds it
    in each worker process (and here when ``context`` is None). ``threads``: torch threads per run
    (None: unchanged). A failing item's exception is raised here, the others cancelled.

    Started from a script, the code that calls ``run_pool`` with ``workers > 1`` must sit under
    ``if __name__ == "__main__":`` (spawned workers import the script again).
    """
    _check_workers(workers)
    items = list(items)
    report_to = on_report or (lambda i, value: None)
    done = on_done or (lambda i, result: None)
    if workers == 1 or len(items) <= 1:
        if context is None and init is not None:
            context = init(*init_args)
        results = []
        with torch_threads(threads):
            for i, item in enumerate(items):
                results.append(fn(context, item, lambda value, i=i: report_to(i, value)))
                done(i, results[-1])
        return results
    if init is None:
        raise ValueError("run_pool with workers > 1 needs init: each worker process builds its own context")
    ctx = mp.get_context("spawn")  # fork would copy this process's OpenMP state (and can deadlock)
    messages = ctx.Queue()
    try:
        with ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx, initializer=_worker_init,
                                 initargs=(init, tuple(init_args), threads, messages, os.getpid())) as ex:
            futures = [ex.submit(_worker_run, fn, i, item) for i, item in enumerate(items)]
            pending = set(range(len(items)))
            while pending:
                try:
                    i, value = messages.get(timeout=0.5)
                    report_to(i, value)
                except queue_mod.Empty:
                    pass
                for i in sorted(i for i in pending if futures[i].done()):
                    if futures[i].exception() is not None:
                        for f in futures:
                            f.cancel()
                        raise futures[i].exception()
                    pending.discard(i)
                    done(i, futures[i].result())
            return [f.result() for f in futures]
    except BrokenProcessPool as e:
        raise RuntimeError(
            f"workers={workers}: the worker processes died before finishing ({e}). Started from a "
            "script, the code that starts the pool (e.g. run_all) must sit under "
            "`if __name__ == '__main__':` (worker processes import the script again); or pass workers=1 "
            "to run in this process"
        ) from e


def rebuild_world(name: str, params: dict, shared: Any = None) -> tuple:
    """``(load_world(name, **params), shared)``: a worker's copy of a world (its models reloaded from
    the cache, as the zoo loads them) and the data the caller shares with every run."""
    return load_world(name, **params), shared


def run_world_pool(fn: Callable, world, items: Sequence, workers: int, *, shared: Any = None,
                   threads: Optional[int] = 1, on_report=None, on_done=None) -> list:
    """:func:`run_pool` over one world: ``fn((world, shared), item, report)``; each worker process
    rebuilds the world with ``load_world(world.name, **world.params)`` and gets ``shared`` (pickled
    once per worker: data computed here that every run must see bit for bit, e.g. a table)."""
    return run_pool(fn, items, workers, init=rebuild_world, init_args=(world.name, dict(world.params), shared),
                    context=(world, shared), threads=threads, on_report=on_report, on_done=on_done)
