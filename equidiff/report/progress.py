"""A progress line that reads well both live and in the rendered book.

In a Jupyter kernel (papermill included) the line is one display output updated in place, so the
executed notebook keeps only its last state (a text tqdm bar on stderr would keep every redraw,
and the book would print them all). Elsewhere it is a plain tqdm text bar on stderr. The meter
itself is always tqdm's.

Where ``$EQUIDIFF_PROGRESS_LOG`` is set (the book build sets it for each chapter's kernel), the line
also streams its state to that file (:class:`equidiff.training.LoggedBar`, at the same pace as the
in-place redraws), so ``make book`` shows it live; what the notebook keeps does not change. The
build's side is here too: :class:`ProgressTail` reads that file while the chapter runs and prints its
lines through a :class:`Terminal`.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from pathlib import Path

from equidiff.training import PROGRESS_LOG, LoggedBar, Discard


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (a notebook run, papermill's included)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the notebooks
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class ProgressLine:
    """``tqdm(total, desc)`` that can be moved to an absolute count with :meth:`update_to`."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, every: float = 2.0):
        from tqdm import tqdm  # text bar: tqdm.auto wants ipywidgets in a notebook and warns without it

        self.enabled = bool(enabled)  # shown: in place in a kernel, on stderr elsewhere
        self.every = float(every)  # seconds between redraws of the in-place line
        self._handle = None
        self._last = 0.0
        logged = bool(os.environ.get(PROGRESS_LOG))  # also streamed to the build's progress log
        self.active = self.enabled or logged
        kernel = self.enabled and in_kernel()
        file = (io.StringIO() if kernel else sys.stderr) if self.enabled else Discard()
        self.bar = (LoggedBar if logged else tqdm)(total=total, desc=desc, disable=not self.active,
                                                   mininterval=self.every, file=file)
        if kernel:
            from IPython.display import display

            self._handle = display({"text/plain": str(self.bar)}, raw=True, display_id=True)

    def update_to(self, n: int, postfix: str = "") -> None:
        """Set the count to ``n`` (and the text after the meter to ``postfix``)."""
        if not self.active:
            return
        if postfix:
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(n - self.bar.n)
        self._redraw(force=False)

    def _redraw(self, force: bool) -> None:
        now = time.monotonic()
        if self._handle is not None and (force or now - self._last >= self.every):
            self._handle.update({"text/plain": str(self.bar)}, raw=True)
            self._last = now

    def close(self) -> None:
        if self.active:
            self._redraw(force=True)
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------------------------
# The build's side: the chapters' progress lines in its terminal, live
# --------------------------------------------------------------------------------------------

LOG_EVERY = 10.0  # seconds between two printed states of one progress bar when stdout is not a terminal


class Terminal:
    """Where the build prints: one line per message, progress lines prefixed ``[<chapter>]``.

    On a terminal a progress bar's new state overwrites its previous line (until another line is
    printed); elsewhere (a log, CI) each bar prints its first state, then at most one every
    :data:`LOG_EVERY` seconds, and its final state. Safe to call from several threads."""

    def __init__(self, stream=None):
        self.stream = stream
        self._lock = threading.Lock()
        self._open: str | None = None  # the bar whose line is open (on a terminal, no newline yet)
        self._last: dict[str, float] = {}

    @property
    def out(self):
        return self.stream if self.stream is not None else sys.stdout

    def _tty(self) -> bool:
        return bool(getattr(self.out, "isatty", lambda: False)())

    def line(self, text: str) -> None:
        with self._lock:
            out = self.out
            if self._open is not None:
                out.write("\n")
                self._open = None
            out.write(text + "\n")
            out.flush()

    def progress(self, bar: str, text: str, final: bool = False) -> None:
        with self._lock:
            out, now = self.out, time.monotonic()
            if self._tty():
                if self._open == bar:
                    out.write("\r\033[K" + text)
                else:
                    if self._open is not None:
                        out.write("\n")
                    out.write(text)
                self._open = bar
                if final:
                    out.write("\n")
                    self._open = None
            else:
                if not final and bar in self._last and now - self._last[bar] < LOG_EVERY:
                    return
                out.write(text + "\n")
            self._last[bar] = now
            out.flush()


class ProgressTail(threading.Thread):
    """Print, through ``term``, the JSON lines chapter ``name``'s kernel appends to ``path``
    (:func:`equidiff.training.log_progress`), every ``every`` seconds until :meth:`stop`."""

    def __init__(self, path: Path, name: str, term: Terminal, every: float = 0.25):
        super().__init__(name=f"progress-{name}", daemon=True)
        self.path, self.chapter, self.term, self.every = Path(path), name, term, every
        self._halt = threading.Event()
        self._pos, self._rest = 0, b""

    def _drain(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except OSError:
            return
        self._pos += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        for raw in lines:
            try:
                msg = json.loads(raw.decode("utf-8"))
                self.term.progress(f"{self.chapter}/{msg['bar']}", f"[{self.chapter}] {msg['text']}",
                                   bool(msg.get("final")))
            except (ValueError, KeyError, TypeError):  # a line cut by a kill: not a progress line
                continue

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self._drain()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self._drain()
