"""A progress bar that says what it counts and how long is left, and reads "idle" between runs."""

from __future__ import annotations

import time

from qtpy.QtWidgets import QProgressBar, QWidget


def format_duration(seconds: float) -> str:
    """``65`` -> ``"1:05"``, ``3725`` -> ``"1:02:05"``."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunProgress(QProgressBar):
    """Counts ``unit``s ("slice", "step") of a run and estimates the time left.

    The rate is measured from the first update on (the first slice or step also loads the
    model, so it is left out). Before any run, and after a cancelled one, the bar reads a word
    ("idle", "cancelled") instead of "0 / 100".
    """

    def __init__(self, unit: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.unit = unit
        self._first: tuple[int, float] | None = None
        self._left: float | None = None
        self.idle()

    def idle(self, text: str = "idle") -> None:
        """Show ``text`` on an empty bar."""
        self._first, self._left = None, None
        self.setRange(0, 1)
        self.setValue(0)
        self.setFormat(text)

    def begin(self, total: int, unit: str | None = None) -> None:
        """A run of ``total`` units starts now."""
        self.unit = unit or self.unit
        self._first, self._left = None, None
        self.setRange(0, max(1, total))
        self.setValue(0)
        self.setFormat(f"{self.unit} %v / %m")

    def advance(self, done: int, total: int | None = None) -> None:
        """``done`` units are finished (of ``total``, when it changed)."""
        if total is not None and total != self.maximum():
            self.setRange(0, max(1, total))
        now = time.perf_counter()
        if self._first is None:
            self._first = (done, now)
        n0, t0 = self._first
        self._left = None
        if done > n0:
            self._left = (now - t0) / (done - n0) * (self.maximum() - done)
        self.setValue(done)
        left = self.time_left()
        self.setFormat(f"{self.unit} %v / %m" + (f", {left} left" if left and done < self.maximum() else ""))

    def time_left(self) -> str:
        """The estimate as ``"m:ss"``, or "" before it can be measured."""
        return format_duration(self._left) if self._left is not None else ""

    def finish(self, text: str | None = None) -> None:
        """The run ended: a full bar reading ``text`` (default: "<n> <unit>s done")."""
        self._left = None
        self.setValue(self.maximum())
        self.setFormat(text or f"%m {self.unit}s done")
