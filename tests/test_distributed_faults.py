"""The cluster path under faults: each ends in one clear line (or a stated wait), keeps what the
user had, and leaves a partial output that the same command resumes. Clusters run on loopback:
a LocalCluster, or ``dask scheduler`` / ``dask worker`` processes started here."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_mitoseg import distributed as dist
from napari_mitoseg.cli import main
from napari_mitoseg.io import read_stack
from napari_mitoseg.synthetic import make_sample

distributed = pytest.importorskip("distributed")

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def stack_zarr(tmp_path_factory):
    image, _ = make_sample((6, 64, 80), seed=4)
    path = tmp_path_factory.mktemp("em") / "em.zarr"
    zarr.open(str(path), mode="w", shape=image.shape, dtype=image.dtype, chunks=(1, *image.shape[1:]))[:] = image
    return path


@pytest.fixture
def no_workers():
    """A scheduler (in this process, on loopback) with no worker."""
    with distributed.LocalCluster(n_workers=0, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def start_worker(address: str, tmp_path: Path, *prefix: str) -> subprocess.Popen:
    """A ``dask worker`` process without a nanny (so it stays dead when killed)."""
    cmd = [*prefix, sys.executable, "-m", "distributed.cli.dask_worker", address, "--no-nanny", "--nthreads", "1",
           "--no-dashboard", "--local-directory", str(tmp_path / "worker-space")]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_workers(address: str, n: int, timeout: float = 60) -> None:
    with distributed.Client(address, timeout="10s") as c:
        c.wait_for_workers(n, timeout=timeout)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("mitoseg: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def segment_argv(stack_zarr, out, model, *extra):
    return ["segment", str(stack_zarr), "-o", str(out), "--model", str(model), "--device", "cpu",
            "--block-slices", "1", *extra]


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("address, message", [
    ("garbage", "not a scheduler address"),
    ("http://127.0.0.1:8787/status", "is a web address"),
    ("foo://host:1", "not a dask protocol"),
    ("tcp://127.0.0.1:99999", "not a scheduler address"),
])
def test_a_malformed_scheduler_address_is_one_line(address, message, stack_zarr, tiny_model_dir, tmp_path, capsys):
    t0 = time.monotonic()
    rc = main(segment_argv(stack_zarr, tmp_path / "out.zarr", tiny_model_dir, "--scheduler", address))
    assert rc == 2 and message in one_error_line(capsys.readouterr().err)
    assert time.monotonic() - t0 < 10 and sorted(os.listdir(tmp_path)) == []


def test_nothing_listening_is_one_line(stack_zarr, tiny_model_dir, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    rc = main(segment_argv(stack_zarr, tmp_path / "out.zarr", tiny_model_dir, "--scheduler", f"127.0.0.1:{port}"))
    assert rc == 2 and "no dask scheduler answers" in one_error_line(capsys.readouterr().err)


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"dashboard")

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def banner_server():
    """A server that greets with a line of text (as SSH or SMTP do), then waits."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = srv.accept()
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def test_a_web_server_at_the_address_is_one_line_not_a_hang(stack_zarr, tiny_model_dir, tmp_path, capsys,
                                                            monkeypatch, banner_server):
    monkeypatch.setattr(dist.cluster, "CONNECT_TIMEOUT", 1.5)
    with http_server() as port:
        t0 = time.monotonic()
        rc = main(segment_argv(stack_zarr, tmp_path / "out.zarr", tiny_model_dir, "--scheduler",
                               f"127.0.0.1:{port}"))
        line = one_error_line(capsys.readouterr().err)
        assert rc == 2 and "not a dask scheduler" in line and "no dask greeting within 1.5 s" in line
        assert time.monotonic() - t0 < 10
    rc = main(segment_argv(stack_zarr, tmp_path / "out.zarr", tiny_model_dir, "--scheduler",
                           f"tcp://127.0.0.1:{banner_server}"))
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "not a dask scheduler" in line and "memory" not in line
    assert sorted(os.listdir(tmp_path)) == []


# --------------------------------------------------------------------------- workers


def test_no_worker_is_said_after_a_grace_period_and_timeout_stops(no_workers, stack_zarr, tiny_model_dir, tmp_path,
                                                                  capsys, monkeypatch):
    monkeypatch.setattr(dist.watch, "NO_WORKER_GRACE", 0.5)
    out = tmp_path / "out.zarr"
    t0 = time.monotonic()
    rc = main(segment_argv(stack_zarr, out, tiny_model_dir, "--scheduler", no_workers, "--timeout", "2"))
    err = capsys.readouterr().err
    assert rc == 2 and 2 <= time.monotonic() - t0 < 30
    assert "mitoseg: warning: no dask worker is connected to the scheduler" in err and "stopping after 2 s" in err
    line = one_error_line(err)
    assert "no dask worker for 2 s" in line and "run the same command again to resume" in line
    assert not out.exists() and dist.partial_path(out).is_dir()
    assert not dist.partial.lock_path(dist.partial_path(out)).exists()  # the lock went with the run


@pytest.mark.processes
@pytest.mark.slow
def test_the_only_worker_dying_is_said_and_the_run_resumes(no_workers, stack_zarr, tiny_model_dir, tmp_path,
                                                           capsys, monkeypatch):
    monkeypatch.setattr(dist.watch, "NO_WORKER_GRACE", 0.5)
    worker = start_worker(no_workers, tmp_path)
    try:
        wait_for_workers(no_workers, 1)
        real = dist.cli._print_progress

        def kill_after_the_first_block(p):
            real(p)
            if p.stage == "segment" and p.done >= 1 and worker.poll() is None:
                worker.kill()
                worker.wait()

        monkeypatch.setattr(dist.cli, "_print_progress", kill_after_the_first_block)
        out = tmp_path / "out.zarr"
        argv = segment_argv(stack_zarr, out, tiny_model_dir, "--scheduler", no_workers, "--timeout", "3")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no dask worker is connected" in err and "no dask worker for 3 s" in one_error_line(err)
        done = len(list((dist.partial_path(out) / dist.DONE_DIR).iterdir()))
        assert 1 <= done < 6
    finally:
        worker.kill()
        worker.wait()
    # a new worker, the same command: the finished blocks are skipped
    monkeypatch.setattr(dist.cli, "_print_progress", real)
    worker = start_worker(no_workers, tmp_path)
    try:
        wait_for_workers(no_workers, 1)
        assert main([*argv, "--json"]) == 0
    finally:
        worker.kill()
        worker.wait()
    assert json.loads(capsys.readouterr().out)["resumed_blocks"] == done
    assert read_stack(out).shape == (6, 64, 80)


@contextlib.contextmanager
def scheduler_process(tmp_path: Path):
    """A ``dask scheduler`` process on loopback; yields (address, the process)."""
    info = tmp_path / "scheduler.json"
    proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                             "--port", "0", "--no-dashboard", "--scheduler-file", str(info)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole soon after it appears
        yield json.loads(info.read_text())["address"], proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.processes
@pytest.mark.slow
def test_the_scheduler_killed_mid_run_is_one_line_and_the_run_resumes(stack_zarr, tiny_model_dir, tmp_path, capsys,
                                                                       monkeypatch):
    out = tmp_path / "out.zarr"
    with scheduler_process(tmp_path) as (address, scheduler):
        worker = start_worker(address, tmp_path)
        try:
            wait_for_workers(address, 1)
            real = dist.cli._print_progress

            killed = []

            def kill_after_the_first_block(p):
                real(p)
                if p.stage == "segment" and p.done >= 1 and scheduler.poll() is None:
                    scheduler.kill()
                    scheduler.wait()
                    killed.append(time.monotonic())

            monkeypatch.setattr(dist.cli, "_print_progress", kill_after_the_first_block)
            argv = segment_argv(stack_zarr, out, tiny_model_dir, "--scheduler", address)
            assert main(argv) == 2
            assert time.monotonic() - killed[0] < 30  # no wait for a scheduler that is gone
        finally:
            worker.kill()
            worker.wait()
    line = one_error_line(capsys.readouterr().err)
    assert "lost the connection to the dask scheduler" in line and "run the same command again to resume" in line
    done = len(list((dist.partial_path(out) / dist.DONE_DIR).iterdir()))
    assert done >= 1 and not out.exists()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        monkeypatch.setattr(dist.cli, "_print_progress", real)
        argv[argv.index(address)] = cluster.scheduler_address
        assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resumed_blocks"] == done


# --------------------------------------------------------------------------- outputs


def test_two_runs_on_one_output_the_second_is_refused_up_front(stack_zarr, tiny_model_dir, tmp_path, capsys,
                                                                monkeypatch, no_workers):
    out = tmp_path / "out.zarr"
    with distributed.Client(no_workers) as client:
        first = dist.iter_segment(stack_zarr, out, client=client, model=tiny_model_dir, device="cpu",
                                  block_slices=1)
        next(first)  # holds the output now (no worker: nothing runs)
        monkeypatch.setattr(dist.cli, "local_client", lambda *a, **k: pytest.fail("a cluster was started"))
        rc = main(segment_argv(stack_zarr, out, tiny_model_dir, "--workers", "1"))
        line = one_error_line(capsys.readouterr().err)
        assert rc == 2 and f"another run is writing {out} (process {os.getpid()} on" in line
        with pytest.raises(dist.DistributedError, match="another run is writing"):
            dist.segment(stack_zarr, out, client=client, model=tiny_model_dir, device="cpu", block_slices=1)
        first.close()
    lock = dist.partial.lock_path(dist.partial_path(out))
    assert not lock.exists() and dist.partial_path(out).is_dir()
    # a lock left by a process that is gone (killed) is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "since": "then"}))
    with dist.partial.output_lock(out) as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not lock.exists()


@pytest.mark.processes
@pytest.mark.slow
def test_a_relative_output_reaches_workers_started_elsewhere(stack_zarr, tiny_model_dir, tmp_path, monkeypatch,
                                                              no_workers):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", no_workers, "--no-nanny",
                               "--nthreads", "1", "--no-dashboard"], cwd=elsewhere, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_workers(no_workers, 1)
        here = tmp_path / "here"
        here.mkdir()
        monkeypatch.chdir(here)
        with distributed.Client(no_workers) as client:
            res = dist.segment(os.path.relpath(stack_zarr), "out.zarr", client=client, model=tiny_model_dir,
                               device="cpu", block_slices=2)
    finally:
        worker.kill()
        worker.wait()
    assert res.out == here / "out.zarr" and read_stack(here / "out.zarr").shape == (6, 64, 80)
    assert sorted(os.listdir(elsewhere)) == []


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def in_private_mounts(script: str) -> list[str]:
    """The command to run the shell ``script`` in mount namespace of its own (a user namespace: no
    root needed), where a ``mount`` changes what this process alone sees."""
    return ["unshare", "-Urm", "sh", "-c", script]


@pytest.mark.processes
@pytest.mark.skipif(not _can_unshare(), reason="needs user namespaces (unshare -Urm) to hide a folder")
def test_an_output_the_workers_cannot_see_is_refused_before_any_block(stack_zarr, tiny_model_dir, tmp_path, capsys,
                                                                       no_workers):
    hidden = tmp_path / "local-disk"
    hidden.mkdir()
    # the worker sees an empty folder over ``hidden``, as a node without the client's disk would
    cmd = [sys.executable, "-m", "distributed.cli.dask_worker", no_workers, "--no-nanny", "--nthreads", "1",
           "--no-dashboard"]
    worker = subprocess.Popen(in_private_mounts(f"mount -t tmpfs none {hidden} && exec {' '.join(cmd)}"), env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_workers(no_workers, 1)
        out = hidden / "out.zarr"
        rc = main(segment_argv(stack_zarr, out, tiny_model_dir, "--scheduler", no_workers))
    finally:
        worker.kill()
        worker.wait()
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "cannot see" in line and str(dist.partial_path(out)) in line
    assert "shared file system" in line and not any((dist.partial_path(out) / dist.DONE_DIR).iterdir())


def _files_of_a_new_partial(tmp_path: Path) -> int:
    """Files and folders a cluster run makes before its first block (the partial output, its
    lock), counted on an ordinary disk."""
    from napari_mitoseg import ngff

    probe = tmp_path / "probe" / ".x.zarr.partial"
    probe.parent.mkdir()
    dist.partial.open_partial(probe, {"run": 1}, (6, 64, 80), False, ngff.VoxelSize())
    return sum(1 for _ in probe.parent.rglob("*")) + 1


@pytest.mark.processes
@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs user namespaces (unshare -Urm) for a small disk of its own")
def test_a_full_disk_is_one_line_and_keeps_the_finished_blocks(stack_zarr, tiny_model_dir, tmp_path):
    disk = tmp_path / "small-disk"
    disk.mkdir()
    # a disk with room for the partial output and about one block (a slice takes a folder or
    # two, its chunk and a marker): the other blocks find no space
    inodes = _files_of_a_new_partial(tmp_path) + 6
    out = disk / "out.zarr"
    argv = [sys.executable, "-m", "napari_mitoseg", *segment_argv(stack_zarr, out, tiny_model_dir,
                                                                 "--scheduler", "{address}")]
    with distributed.LocalCluster(n_workers=0, dashboard_address=None) as cluster:
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address, "--no-nanny",
                  "--nthreads", "1", "--no-dashboard", "--local-directory", str(tmp_path)]
        # the worker and the command share the small disk (one mount namespace); afterwards list
        # what the run kept there
        script = (f"mount -t tmpfs -o nr_inodes={inodes} none {disk} || exit 9; "
                  f"{' '.join(worker)} >/dev/null 2>&1 & wpid=$!; "
                  f"{' '.join(argv).format(address=cluster.scheduler_address)}; rc=$?; kill $wpid; "
                  f"ls {dist.partial_path(out) / dist.DONE_DIR} | wc -l; exit $rc")
        proc = subprocess.run(in_private_mounts(script), env=ENV, capture_output=True, text=True, timeout=300)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2 and "no space left on the device" in line and "run the same command again" in line
    assert int(proc.stdout.split()[-1]) >= 1  # the finished blocks are kept


def test_measurements_onto_a_folder_or_a_read_only_place_are_refused_before_any_block(
        stack_zarr, tiny_model_dir, tmp_path, capsys, monkeypatch):
    ome = tmp_path / "em.ome.zarr"
    g = zarr.open_group(str(ome), mode="w", zarr_format=2)
    g.create_array("0", data=np.asarray(read_stack(stack_zarr)))
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n, "type": "space", "unit": "nanometer"}
                                                          for n in "zyx"],
                               "datasets": [{"path": "0", "coordinateTransformations": [
                                   {"type": "scale", "scale": [30.0, 8.0, 8.0]}]}]}]
    monkeypatch.setattr(dist.cli, "local_client", lambda *a, **k: pytest.fail("a cluster was started"))
    (tmp_path / "table.csv").mkdir()
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    for csv, message in [(tmp_path / "table.csv", "is a folder"), (ro / "m.csv", "read-only")]:
        rc = main(segment_argv(ome, tmp_path / "out.zarr", tiny_model_dir, "--workers", "1", "--instances",
                               "--measurements", str(csv)))
        assert rc == 2 and message in one_error_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["em.ome.zarr", "ro", "table.csv"]


def test_a_corrupt_run_file_says_how_to_start_over(stack_zarr, tiny_model_dir, tmp_path, capsys, monkeypatch,
                                                   no_workers):
    out = tmp_path / "out.zarr"
    partial = dist.partial_path(out)
    (partial / dist.DONE_DIR).mkdir(parents=True)
    (partial / dist.RUN_FILE).write_text('{"image": "em.zarr", "sha')  # cut short, as by a full disk
    monkeypatch.setattr(dist.cli, "local_client", lambda *a, **k: pytest.fail("a cluster was started"))
    rc = main(segment_argv(stack_zarr, out, tiny_model_dir, "--workers", "1"))
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "cannot be read" in line and f"delete {partial} to start over" in line
    with distributed.Client(no_workers) as client, pytest.raises(dist.DistributedError, match="start over"):
        dist.segment(stack_zarr, out, client=client, model=tiny_model_dir, device="cpu")
    assert (partial / dist.RUN_FILE).exists()  # nothing of the user's is deleted


# --------------------------------------------------------------------------- signals


def _wait_for_blocks(partial: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    done = partial / dist.DONE_DIR
    while not (done.is_dir() and len(list(done.iterdir())) >= n):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no block finished"
        time.sleep(0.1)


@pytest.mark.processes
@pytest.mark.slow
def test_sigterm_keeps_the_finished_blocks_and_the_same_command_resumes(stack_zarr, tiny_model_dir, tmp_path,
                                                                        capsys):
    import psutil

    out = tmp_path / "out.zarr"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        argv = segment_argv(stack_zarr, out, tiny_model_dir, "--scheduler", cluster.scheduler_address)
        proc = subprocess.Popen([sys.executable, "-m", "napari_mitoseg", *argv], env=ENV, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        worker = psutil.Process(next(iter(client.run(os.getpid).values())))
        try:
            _wait_for_blocks(dist.partial_path(out), 1, proc)
            worker.suspend()  # the run cannot end before the signal arrives
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            worker.resume()
            proc.kill()
        assert proc.returncode == 143, err
        assert "Traceback" not in err and "mitoseg: terminated; the cluster's tasks are cancelled" in err
        assert f"kept in {dist.partial_path(out)}: run the same command again to resume" in err
        assert not out.exists() and not dist.partial.lock_path(dist.partial_path(out)).exists()
        client.wait_for_workers(1)
        deadline = time.monotonic() + 30  # a block already running finishes in its worker
        while any(client.run(lambda dask_worker: len(dask_worker.active_threads)).values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        done = len(list((dist.partial_path(out) / dist.DONE_DIR).iterdir()))
        assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resumed_blocks"] == done >= 1
    assert read_stack(out).shape == (6, 64, 80)


@pytest.mark.processes
@pytest.mark.slow
def test_ctrl_c_on_a_local_cluster_prints_no_worker_traceback(stack_zarr, tiny_model_dir, tmp_path):
    import psutil

    out = tmp_path / "out.zarr"
    argv = segment_argv(stack_zarr, out, tiny_model_dir, "--workers", "1")
    # a session of its own: Ctrl+C at a terminal signals the whole foreground process group
    proc = subprocess.Popen([sys.executable, "-m", "napari_mitoseg", *argv], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_blocks(dist.partial_path(out), 1, proc, timeout=300)
        workers = psutil.Process(proc.pid).children(recursive=True)
        for w in workers:
            w.suspend()  # the run cannot end before the signal arrives
        os.killpg(proc.pid, signal.SIGINT)
        for w in workers:
            w.resume()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "mitoseg: interrupted; the cluster's tasks are cancelled" in err
