"""Reaching a cluster: the scheduler's address checked and its greeting awaited with a timeout
(so a wrong address fails in one line instead of a traceback or a wait without end), a client
of a new ``LocalCluster`` or of a running scheduler, and its dashboard address."""

from __future__ import annotations

import socket
import struct
from contextlib import contextmanager

from .common import DistributedError

#: seconds to reach a scheduler and hear its greeting
CONNECT_TIMEOUT = 10.0
#: address schemes dask speaks; a bare host:port means tcp
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")
_EXAMPLE = "a dask scheduler's address looks like tcp://host:8786"


def check_address(address: str) -> tuple[str, str, int | None]:
    """(dask address, host, port) of a scheduler ``address`` such as ``tcp://host:8786`` or
    ``host:8786``; :class:`DistributedError` for anything else (a web address, no port)."""
    text = str(address).strip()
    scheme, sep, rest = text.partition("://")
    scheme, rest = (scheme.lower(), rest) if sep else ("tcp", text)
    if scheme in ("http", "https"):
        raise DistributedError(f"{address} is a web address (the dashboard's?), not a dask scheduler's: "
                               f"{_EXAMPLE}")
    if scheme not in SCHEMES:
        raise DistributedError(f"{address}: {scheme!r} is not a dask protocol ({', '.join(SCHEMES)}); {_EXAMPLE}")
    if scheme in ("inproc", "ucx"):
        return f"{scheme}://{rest}", rest, None
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        raise DistributedError(f"{address} is not a scheduler address (host:port); {_EXAMPLE}")
    return f"{scheme}://{rest}", host, int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed the connection")
        data += chunk
    return data


def probe_scheduler(address: str, timeout: float | None = None) -> str:
    """Check that a dask scheduler answers at ``address`` within ``timeout`` seconds (None:
    :data:`CONNECT_TIMEOUT`): on tcp, it greets a new connection with one short dask message
    before it is spoken to. Returns the address in dask's form; :class:`DistributedError` with
    the reason otherwise."""
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    addr, host, port = check_address(address)
    if not addr.startswith("tcp://"):
        return addr
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        raise DistributedError(f"no dask scheduler at {address}: the host {host!r} is unknown") from None
    except OSError as exc:
        raise DistributedError(f"no dask scheduler answers at {address}: {exc.strerror or exc}") from None
    not_dask = (f"something answers at {address}, but not a dask scheduler ({{}}); is it another "
                f"service's port, such as the dashboard's? {_EXAMPLE}")
    with sock:
        sock.settimeout(timeout)
        try:
            (size,) = struct.unpack("Q", _recv_exact(sock, 8))
            if not 0 < size <= 1 << 20:
                raise DistributedError(not_dask.format("it sent something else than a dask greeting"))
            _recv_exact(sock, size)
        except TimeoutError:
            raise DistributedError(not_dask.format(f"no dask greeting within {timeout:g} s")) from None
        except OSError as exc:
            raise DistributedError(not_dask.format(f"it {exc}")) from None
    return addr


@contextmanager
def local_client(workers: int | None = None, scheduler: str | None = None, threads_per_worker: int = 1):
    """A ``distributed.Client``: connected to ``scheduler`` (an address such as
    ``tcp://host:8786``, checked first: :func:`probe_scheduler`) or to a new ``LocalCluster`` of
    ``workers`` processes, closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        addr = probe_scheduler(scheduler)
        try:
            client = Client(addr, timeout=f"{CONNECT_TIMEOUT:g}s")
        except (OSError, TimeoutError) as exc:
            raise DistributedError(f"no dask scheduler answers at {scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    if not workers or workers < 1:
        raise DistributedError(f"--workers must be at least 1, got {workers}")
    dashboard = ":0" if _has_bokeh() else None
    # the workers ignore SIGINT (blocks.dask_setup): on Ctrl+C this command stops them itself,
    # without a traceback from each
    with LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                      dashboard_address=dashboard, preload=[_PRELOAD]) as cluster, Client(cluster) as client:
        yield client


_PRELOAD = "napari_mitoseg.distributed.blocks"


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
