"""How many CPU threads a training step uses, following the machine's load as it changes.

Torch's threads meet at a barrier in every layer, so on a busy machine a step waits for the
thread that was descheduled (see :func:`~napari_mitoseg.model.spare_cpu_threads`). The choice
is looked at again every :data:`CHECK_EVERY` steps, from what the other processes used over
those steps: the CPU time the whole machine was busy (``/proc/stat``) less this process's own.
That reading falls as soon as the other work ends, where the 1-minute load average lags for
minutes (and counts this process's other threads, a GUI's for one, as other work), so the
threads rise again once the machine is idle. Where ``/proc/stat`` is missing, or every core
was busy (then the others may want more than they got), the load average decides.
"""

from __future__ import annotations

import logging
import os
import time

from ..model import spare_cpu_threads
from .config import TrainingError

logger = logging.getLogger(__name__)

#: steps between two looks at the machine's load
CHECK_EVERY = 25
#: share of all cores busy over an interval above which the machine counts as saturated
SATURATED = 0.9


def check_thread_setting() -> None:
    """:class:`TrainingError` unless ``MITOSEG_THREADS`` is unset or a whole number >= 1."""
    value = os.environ.get("MITOSEG_THREADS")
    if not value:
        return
    try:
        ok = int(value) >= 1
    except ValueError:
        ok = False
    if not ok:
        raise TrainingError(f"MITOSEG_THREADS must be a whole number of threads >= 1 (e.g. 2), got "
                            f"{value!r}; unset it to follow the machine's load")


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores of the machine have been busy since boot (``/proc/stat``: user,
    nice, system, irq, softirq and steal time), or None where that is not known."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = [int(v) for v in fields[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    if fields[0] != "cpu" or len(ticks) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / hz


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not on this platform
        return None


class ThreadChoice:
    """The CPU threads for training now: :meth:`start` once, :meth:`update` before each step.

    None throughout when the user fixed the number with ``OMP_NUM_THREADS`` (torch as it is)
    or when training runs on another device.
    """

    def __init__(self, every: int | None = None):
        self.every = every or CHECK_EVERY
        self.threads: int | None = None
        self._first = True
        self._mark: tuple[float, float | None, float] | None = None

    def _sample(self) -> tuple[float, float | None, float]:
        return time.monotonic(), machine_busy_seconds(), time.process_time()

    def start(self, on_cpu: bool) -> int | None:
        """The threads for the first step (from the load average: no interval measured yet)."""
        if not on_cpu:
            return None
        self.threads = spare_cpu_threads()
        self._mark = self._sample()
        return self.threads

    def others(self, own_threads: int) -> float | None:
        """Cores the other processes used since the last look (or wanted, on a saturated
        machine); None when neither reading is known."""
        now = self._sample()
        last, self._mark = self._mark, now
        wall = now[0] - last[0] if last else 0.0
        cores = _cores()
        if last and last[1] is not None and now[1] is not None and wall > 0.05:
            busy = (now[1] - last[1]) / wall
            used = max(0.0, busy - (now[2] - last[2]) / wall)
            if busy < SATURATED * cores:
                return used
            load = _load_average()
            return used if load is None else max(used, load - own_threads)
        load = _load_average()
        return None if load is None else max(0.0, load - own_threads)

    def update(self, step: int, own_threads: int) -> int | None:
        """At the first step and every :attr:`every` steps, the threads the others leave free
        (at least 1)."""
        if self.threads is None or (step % self.every and not self._first):
            return self.threads
        self._first = False
        others = self.others(own_threads)
        if others is not None:
            self.threads = spare_cpu_threads(own=0, cores=_cores(), load=others) or self.threads
        return self.threads
