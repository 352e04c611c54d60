"""A progress line that reads well both live and in the rendered book.

In a Jupyter kernel (papermill included) the line is one display output updated in place, so the
executed notebook keeps only its last state (a text tqdm bar on stderr would keep every redraw,
and the book would print them all). Elsewhere it is a plain tqdm text bar on stderr. The meter
itself is always tqdm's.
"""

from __future__ import annotations

import io
import sys
import time


def _in_kernel() -> bool:
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

        self.enabled = bool(enabled)
        self.every = float(every)  # seconds between redraws of the in-place line
        self._handle = None
        self._last = 0.0
        kernel = self.enabled and _in_kernel()
        self.bar = tqdm(total=total, desc=desc, disable=not self.enabled, mininterval=self.every,
                        file=io.StringIO() if kernel else sys.stderr)
        if kernel:
            from IPython.display import display

            self._handle = display({"text/plain": str(self.bar)}, raw=True, display_id=True)

    def update_to(self, n: int, postfix: str = "") -> None:
        """Set the count to ``n`` (and the text after the meter to ``postfix``)."""
        if not self.enabled:
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
        if self.enabled:
            self._redraw(force=True)
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
