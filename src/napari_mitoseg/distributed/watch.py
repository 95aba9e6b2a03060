"""Waiting on a cluster: blocks as they finish, one warning when no worker is there (and a stop
after ``timeout`` seconds without one, when the user chose one), and one clear error for the
faults a cluster run meets (the scheduler lost, a full disk); the finished blocks stay for the
next run in every case."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .common import DistributedError

logger = logging.getLogger(__name__)

#: seconds without any worker before the run says so
NO_WORKER_GRACE = 10.0
#: seconds between two looks at the cluster while no block finishes
CHECK_EVERY = 1.0
_POLL = 0.05

_RESUME = "the finished blocks are kept in {partial}: run the same command again to resume"


def lost_scheduler(client, partial: Path) -> DistributedError:
    where = getattr(getattr(client, "scheduler", None), "address", None) or "the scheduler"
    return DistributedError(f"lost the connection to the dask scheduler at {where}; "
                            + _RESUME.format(partial=partial) + " once a scheduler is up")


def _connected(client) -> bool:
    return getattr(client, "status", "running") == "running"


@contextmanager
def run_faults(client, partial: Path):
    """Turn the faults of a run into one :class:`DistributedError` that says the finished
    blocks are kept: the scheduler lost (killed, its node gone) and a full disk."""
    try:
        yield
    except DistributedError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DistributedError(f"no space left on the device holding {partial}: free space, then run the "
                                   f"same command again to resume (the finished blocks are kept)") from None
        if not _connected(client):
            raise lost_scheduler(client, partial) from None
        raise
    except Exception:
        if not _connected(client):
            raise lost_scheduler(client, partial) from None
        raise


class WorkerWatch:
    """Looks at the cluster while no block finishes: warns once when no worker has been there
    for :data:`NO_WORKER_GRACE` seconds, and stops the run after ``timeout`` seconds without
    one (None: waits, as the warning says)."""

    def __init__(self, client, partial: Path, timeout: float | None = None):
        self.client, self.partial, self.timeout = client, partial, timeout
        self.alone_since: float | None = None
        self.warned = False
        self.last_look = 0.0

    def look(self) -> None:
        now = time.monotonic()
        if now - self.last_look < CHECK_EVERY:
            return
        self.last_look = now
        if not _connected(self.client):
            raise lost_scheduler(self.client, self.partial)
        try:
            workers = len(self.client.nthreads())
        except (OSError, TimeoutError):
            raise lost_scheduler(self.client, self.partial) from None
        if workers:
            self.alone_since, self.warned = None, False
            return
        self.alone_since = self.alone_since or now
        alone = now - self.alone_since
        if alone >= NO_WORKER_GRACE and not self.warned:
            self.warned = True
            until = (f"stopping after {self.timeout:g} s without one" if self.timeout is not None
                     else "waiting for one (stop with Ctrl+C, or give --timeout)")
            logger.warning("no dask worker is connected to the scheduler at %s: start workers "
                           "(`dask worker ADDRESS`), %s", self.client.scheduler.address, until)
        if self.timeout is not None and alone >= self.timeout:
            raise DistributedError(f"no dask worker for {self.timeout:g} s: stopped; "
                                   + _RESUME.format(partial=self.partial) + " once workers are up")


def as_finished(futures: list, watch: WorkerWatch) -> Iterator:
    """``futures`` as they finish (done, failed or cancelled), looking at the cluster with
    ``watch`` while none does."""
    from distributed import as_completed

    pending = as_completed(futures)
    while not pending.is_empty():
        batch = pending.next_batch(block=False)
        if not batch:
            watch.look()
            time.sleep(_POLL)
            continue
        yield from batch
