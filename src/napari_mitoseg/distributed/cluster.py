"""Reaching a cluster: a client of a new ``LocalCluster`` or of a running scheduler, and its
dashboard address."""

from __future__ import annotations

from contextlib import contextmanager

from .common import DistributedError


@contextmanager
def local_client(workers: int | None = None, scheduler: str | None = None, threads_per_worker: int = 1):
    """A ``distributed.Client``: connected to ``scheduler`` (an address such as
    ``tcp://host:8786``) or to a new ``LocalCluster`` of ``workers`` processes, closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise DistributedError(f"no dask scheduler answers at {scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    if not workers or workers < 1:
        raise DistributedError(f"--workers must be at least 1, got {workers}")
    dashboard = ":0" if _has_bokeh() else None
    with LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                      dashboard_address=dashboard) as cluster, Client(cluster) as client:
        yield client


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def dashboard_link(client) -> str | None:
    """The dashboard address of ``client``'s cluster, None when it has none (no bokeh)."""
    if not _has_bokeh():  # without bokeh the scheduler serves no dashboard pages
        return None
    try:
        return client.dashboard_link if client.scheduler_info().get("services", {}).get("dashboard") else None
    except Exception:  # noqa: BLE001 - the dashboard is a courtesy
        return None
