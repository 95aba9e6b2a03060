"""Progress of a long command-line run (slices segmented, training steps) on stderr.

On a terminal a tqdm bar (done / total, rate, time left); elsewhere (a log file, a batch job)
a plain line every ``every_s`` seconds or every 10 %, and at the end. Fed by a
``progress(done, total)`` call after each slice or step, as the core generators report them.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``progress = Progress("slices", "segment"); progress(done, total)``; ``close()`` at the end.

    ``bar``: None chooses a bar when ``stream`` is a terminal. The time left is estimated from
    the rate of the calls so far (steps already done when the first call came, as on a resumed
    run, do not count).
    """

    def __init__(self, unit: str, desc: str, stream: TextIO | None = None, every_s: float = 10.0,
                 bar: bool | None = None, clock=time.monotonic) -> None:
        self.unit, self.desc, self.every_s, self.clock = unit, desc, every_s, clock
        self.stream = stream if stream is not None else sys.stderr
        self.bar = _isatty(self.stream) if bar is None else bar
        self._tqdm = None
        self._t0 = self._last_time = clock()  # the work starts when the progress is made
        self._start: tuple[float, int] | None = None  # (start time, steps done before it)
        self._last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self._start is None:
            self._start = (self._t0, max(0, done - 1))
            self._last_tenth = (10 * self._start[1]) // max(1, total)
        if self.bar:
            self._update_bar(done, total)
        elif self._due(done, total, now):
            self.stream.write(self.line(done, total, now) + "\n")
            self.stream.flush()

    def _update_bar(self, done: int, total: int) -> None:
        if self._tqdm is None:
            from tqdm import tqdm

            width = _columns(self.stream)  # a terminal that reports no size gets 100 columns
            self._tqdm = tqdm(total=total, initial=self._start[1], unit=self.unit[:-1] if
                              self.unit.endswith("s") else self.unit, desc=self.desc, file=self.stream,
                              dynamic_ncols=width is not None, ncols=width or 100, leave=True)
        self._tqdm.update(done - self._tqdm.n)

    def _due(self, done: int, total: int, now: float) -> bool:
        tenth = (10 * done) // max(1, total)
        due = done >= total or now - self._last_time >= self.every_s or tenth > self._last_tenth
        if due:
            self._last_time, self._last_tenth = now, tenth
        return due

    def line(self, done: int, total: int, now: float | None = None) -> str:
        """``segment: 12/40 slices (30 %), 1.5 slices/s, about 0:19 left``."""
        now = self.clock() if now is None else now
        t0, d0 = self._start if self._start is not None else (now, 0)
        rate = (done - d0) / (now - t0) if now > t0 and done > d0 else None
        pct = 100 * done / max(1, total)
        text = f"{self.desc}: {done}/{total} {self.unit} ({pct:.0f} %)"
        if rate:
            text += f", {rate:.3g} {self.unit}/s"
            if done < total:
                text += f", about {_duration((total - done) / rate)} left"
        return text

    def write(self, text: str, stream: TextIO | None = None) -> None:
        """Print a line (to stdout by default) without breaking the bar."""
        out = stream if stream is not None else sys.stdout
        if self._tqdm is not None:
            self._tqdm.write(text, file=out)
        else:
            out.write(text + "\n")
            out.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


def _columns(stream) -> int | None:
    """The terminal's width, or None when it reports none (a pseudo-terminal without a size)."""
    import os

    try:
        cols = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return None
    return cols if cols > 0 else None


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
