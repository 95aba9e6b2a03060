"""Segmenting on a dask.distributed cluster (LocalCluster of worker processes on loopback) and
OME-Zarr label pyramids: same labels as one process, faults, resume, instances, CLI."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import zarr

from napari_mitoseg import api, ngff
from napari_mitoseg import distributed as dist
from napari_mitoseg.inference import PredictOptions
from napari_mitoseg.io import read_stack, read_voxel_size
from napari_mitoseg.synthetic import make_isotropic, make_sample

distributed = pytest.importorskip("distributed")

#: z-smoothing on (its halo crosses every block edge), a threshold that leaves many objects
OPTS = PredictOptions(z_smooth=True, threshold=0.5, fill_holes=True)


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes (with nannies, so a killed one comes back)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def write_ome(path, image, scale=(30.0, 8.0, 8.0)):
    """``image`` as an OME-Zarr v0.4 image with a second, halved level and voxel size ``scale`` (nm)."""
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    g.create_array("s0", data=image, chunks=(1, *image.shape[1:]))
    g.create_array("s1", data=image[:, ::2, ::2])
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]},
        {"path": "s1", "coordinateTransformations": [
            {"type": "scale", "scale": [scale[0], scale[1] * 2, scale[2] * 2]}]},
    ]}]
    return path


@pytest.fixture(scope="module")
def stack():
    image, _ = make_sample((10, 96, 136), seed=3)
    return image


@pytest.fixture
def stack_zarr(stack, tmp_path):
    return write_ome(tmp_path / "em.ome.zarr", stack)


def reference(model_dir, image, opts=OPTS):
    return api.segment(image, api.get_model(model_dir, "cpu"), opts)


def test_cluster_labels_are_the_single_process_labels_bit_for_bit(client, tiny_model_dir, stack_zarr, tmp_path):
    kw = dict(model=tiny_model_dir, device="cpu", threshold=OPTS.threshold, z_smooth=True)
    api.segment_file(stack_zarr, out=tmp_path / "one.zarr", **kw)  # one process, streamed
    res = dist.segment_file(stack_zarr, out=tmp_path / "many.zarr", client=client, **kw)
    one, many = np.asarray(read_stack(tmp_path / "one.zarr")), np.asarray(read_stack(tmp_path / "many.zarr"))
    assert many.dtype == one.dtype == np.uint8 and res.shape == one.shape
    assert 0.05 < one.mean() < 0.95  # a mask with both classes, so equality means something
    np.testing.assert_array_equal(many, one)
    # the result is an OME-Zarr label volume with the input's voxel size; no bookkeeping left
    g = zarr.open_group(str(tmp_path / "many.zarr"), mode="r")
    assert read_voxel_size(tmp_path / "many.zarr") == (30.0, 8.0, 8.0)
    assert "image-label" in g.attrs and sorted(g.array_keys()) == ["0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["em.ome.zarr", "many.zarr", "one.zarr"]


def test_cluster_runs_at_the_scale_one_process_chooses(client, tiny_model_dir, stack_zarr, tmp_path):
    kw = dict(model=tiny_model_dir, device="cpu", threshold=OPTS.threshold, pixel_ratio=2.0, invert=True)
    one = api.segment_file(stack_zarr, out=tmp_path / "one.zarr", **kw)
    many = dist.segment_file(stack_zarr, out=tmp_path / "many.zarr", client=client, **kw)
    assert one.pixel_ratio == many.pixel_ratio == 2.0
    labels = np.asarray(read_stack(tmp_path / "many.zarr"))
    np.testing.assert_array_equal(labels, np.asarray(read_stack(tmp_path / "one.zarr")))
    plain = reference(tiny_model_dir, read_stack(stack_zarr, lazy=False), PredictOptions(threshold=OPTS.threshold))
    assert (labels != plain).any()  # the ratio and the inversion did change the result


def test_cluster_guesses_the_contrast_as_one_process_does(client, tmp_path, caplog):
    from test_core_stack_setup import SHIPPED

    image, _ = make_sample((10, 160, 200), seed=3)
    path = write_ome(tmp_path / "reversed.ome.zarr", 255 - image)
    kw = dict(model=str(SHIPPED), device="cpu")
    one = api.segment_file(path, out=tmp_path / "one.zarr", **kw)
    caplog.set_level("INFO")
    caplog.clear()
    many = dist.segment_file(path, out=tmp_path / "many.zarr", client=client, **kw)
    assert one.invert and many.invert and "contrast looks reversed" in many.note
    # said to the user as a note (the command line prints notes), as one process says it
    assert any(getattr(r, "note", False) and "contrast looks reversed" in r.getMessage() for r in caplog.records)
    labels = np.asarray(read_stack(tmp_path / "many.zarr"))
    np.testing.assert_array_equal(labels, np.asarray(read_stack(tmp_path / "one.zarr")))
    assert labels.mean() > 0.02  # inverted back, the model finds the mitochondria
    taken = dist.segment_file(path, out=tmp_path / "taken.zarr", client=client, guess_contrast=False, **kw)
    assert not taken.invert and (np.asarray(read_stack(tmp_path / "taken.zarr")) != labels).any()


def test_block_edges_follow_the_z_smoothing_halo_and_workers_load_the_model_once(
        client, tiny_model_dir, stack, tmp_path):
    """Blocks of one slice: every slice's smoothing reads both neighbours from other blocks."""
    path = tmp_path / "plain.zarr"
    zarr.open(str(path), mode="w", shape=stack.shape, dtype=stack.dtype, chunks=(1, *stack.shape[1:]))[:] = stack
    dist.segment(path, tmp_path / "out.zarr", client=client, model=tiny_model_dir, device="cpu", options=OPTS,
                 block_slices=1)
    np.testing.assert_array_equal(np.asarray(read_stack(tmp_path / "out.zarr")), reference(tiny_model_dir, stack))
    # ten blocks on two workers: each loaded the model at most once
    loads = client.run(lambda: sum(n for (src, _), n in dist.LOADS.items() if src == str(tiny_model_dir)))
    assert 1 <= sum(loads.values()) <= 2 and all(n <= 1 for n in loads.values())


@pytest.mark.processes
@pytest.mark.slow
def test_a_worker_killed_mid_run_has_its_blocks_rerun(client, tiny_model_dir, tmp_path):
    image, _ = make_sample((8, 160, 160), seed=5)  # slices above the tile size: slower blocks
    src = write_ome(tmp_path / "em.zarr", image)
    before = client.run(os.getpid)
    killed = None
    gen = dist.iter_segment(src, tmp_path / "out.zarr", client=client, model=tiny_model_dir, device="cpu",
                            options=OPTS, block_slices=1)
    while True:
        try:
            prog = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if killed is None and prog.stage == "segment" and prog.done >= 1:
            busy = [w for w, keys in client.processing().items() if keys]
            assert busy, "no block was running when the worker was to be killed"
            killed = before[busy[0]]
            os.kill(killed, signal.SIGKILL)
    assert killed is not None and result.blocks == 8
    np.testing.assert_array_equal(np.asarray(read_stack(tmp_path / "out.zarr")), reference(tiny_model_dir, image))
    import psutil

    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE


@pytest.mark.timeout(180)
def test_blocks_whose_worker_died_after_they_finished_count_as_done(client, tiny_model_dir, stack_zarr, tmp_path,
                                                                     monkeypatch):
    """A worker that dies holding finished blocks' return values makes the client mark them
    "lost" (not done) after they were reported finished; their slices are on disk, so the run
    counts them and ends, and never waits on them (it used to wait forever with no worker left)."""
    from napari_mitoseg.distributed import run as run_module

    real = run_module.as_finished
    lost = []

    def finished_then_lost(futures, watch):
        for fut in real(futures, watch):
            fut._state.lose()  # what the client does on the dead worker's "lost-data"
            lost.append(fut.key)
            yield fut

    monkeypatch.setattr(run_module, "as_finished", finished_then_lost)
    out = tmp_path / "out.zarr"
    res = dist.segment(stack_zarr, out, client=client, model=tiny_model_dir, device="cpu", options=OPTS,
                       block_slices=2)
    assert res.blocks == 5 and len(lost) == 5
    np.testing.assert_array_equal(np.asarray(read_stack(out)),
                                  reference(tiny_model_dir, read_stack(stack_zarr, lazy=False)))


def test_an_interrupted_run_resumes_and_skips_its_finished_blocks(client, tiny_model_dir, stack_zarr, tmp_path):
    out = tmp_path / "out.zarr"
    kw = dict(client=client, model=tiny_model_dir, device="cpu", options=OPTS, block_slices=1)
    gen = dist.iter_segment(stack_zarr, out, **kw)
    for prog in gen:
        if prog.done >= 2:
            break
    gen.close()  # as Ctrl+C does: cancels the blocks still queued
    # a block already running when the run stopped still finishes in its worker thread (and
    # marks itself done), though the scheduler has forgotten it: wait for the threads to idle
    def running(dask_worker):
        return len(dask_worker.active_threads)

    deadline = time.monotonic() + 60
    while any(client.run(running).values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    partial = dist.partial_path(out)
    assert not out.exists() and partial.is_dir()
    done = sorted((partial / dist.DONE_DIR).iterdir())
    assert 2 <= len(done) < 10
    # mark a finished block's slice: a resumed run must keep it, not segment it again
    z = int(done[0].name.split("-")[0])
    zarr.open_array(str(partial / "0"), mode="r+")[z] = 7
    res = dist.segment(stack_zarr, out, **kw)
    assert res.resumed == len(done) and res.blocks == 10
    labels, ref = np.asarray(read_stack(out)), reference(tiny_model_dir, read_stack(stack_zarr, lazy=False))
    assert (labels[z] == 7).all()
    others = [i for i in range(10) if i != z]
    np.testing.assert_array_equal(labels[others], ref[others])
    assert not partial.exists()


def test_a_partial_run_with_other_settings_is_not_mixed_in(client, tiny_model_dir, stack_zarr, tmp_path):
    out = tmp_path / "out.zarr"
    gen = dist.iter_segment(stack_zarr, out, client=client, model=tiny_model_dir, device="cpu", options=OPTS)
    next(gen)
    gen.close()
    with pytest.raises(dist.DistributedError, match="other settings"):
        dist.segment(stack_zarr, out, client=client, model=tiny_model_dir, device="cpu",
                     options=PredictOptions(threshold=0.3))
    assert dist.partial_path(out).is_dir() and not out.exists()


def test_instances_across_blocks_are_the_in_memory_objects(client, tiny_model_dir, stack_zarr, tmp_path):
    from napari_mitoseg.morphology import measure
    from napari_mitoseg.postprocess import instances

    opts = PredictOptions(z_smooth=True, threshold=0.5005)  # many objects, some below min_size
    res = dist.segment(stack_zarr, tmp_path / "inst.zarr", client=client, model=tiny_model_dir, device="cpu",
                       options=opts, block_slices=3, instances=True, min_size=20)
    mask = reference(tiny_model_dir, read_stack(stack_zarr, lazy=False), opts)
    expected = instances(mask, min_size=20)
    assert len(np.unique(instances(mask, min_size=1))) > len(np.unique(expected))
    labels = np.asarray(read_stack(tmp_path / "inst.zarr"))
    assert expected.max() >= 5 and res.objects == expected.max()
    zs = [np.flatnonzero((expected == i).any(axis=(1, 2))) for i in range(1, expected.max() + 1)]
    assert any(z[0] // 3 != z[-1] // 3 for z in zs)  # some object crosses a block edge and was merged
    np.testing.assert_array_equal(labels, expected)  # same objects, same ids
    want = measure(expected, (30.0, 8.0, 8.0))  # the whole volume in memory
    assert [(m.id, m.voxels, m.z_first, m.z_last, m.touches_border) for m in res.measurements] == \
        [(m.id, m.voxels, m.z_first, m.z_last, m.touches_border) for m in want]
    for field in ("volume_um3", "surface_um2", "axis_major_um", "axis_minor_um", "centroid_y_um", "centroid_z_um"):
        np.testing.assert_allclose([getattr(m, field) for m in res.measurements],
                                   [getattr(m, field) for m in want], rtol=1e-6, err_msg=field)


def test_cli_on_a_running_scheduler_reports_progress(client, tiny_model_dir, stack_zarr, tmp_path, capsys):
    from napari_mitoseg.cli import main

    out, csv = tmp_path / "out.zarr", tmp_path / "objects.csv"
    rc = main(["segment", str(stack_zarr), "-o", str(out), "--model", str(tiny_model_dir), "--device", "cpu",
               "--threshold", "0.5", "--z-smooth", "--scheduler", client.scheduler.address,
               "--block-slices", "4", "--instances", "--measurements", str(csv), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "blocks 3/3" in cap.err and "blocks/min" in cap.err and "left" in cap.err
    summary = json.loads(cap.out)
    assert summary["blocks"] == 3 and summary["objects"] == int(np.asarray(read_stack(out)).max())
    assert len(csv.read_text().splitlines()) == summary["objects"] + 1


def test_ctrl_c_cancels_the_cluster_tasks_and_keeps_finished_blocks(client, tiny_model_dir, stack_zarr, tmp_path,
                                                                   monkeypatch, capsys):
    from napari_mitoseg.cli import main

    calls = []

    def interrupt(progress):
        calls.append(progress)
        if progress.done >= 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(dist.cli, "_print_progress", interrupt)
    out = tmp_path / "out.zarr"
    rc = main(["segment", str(stack_zarr), "-o", str(out), "--model", str(tiny_model_dir), "--device", "cpu",
               "--scheduler", client.scheduler.address, "--block-slices", "1"])
    assert rc == 130 and "run the same command again to resume" in capsys.readouterr().err
    assert not out.exists() and dist.partial_path(out).is_dir()

    def ours(dask_scheduler):
        return [str(k) for k in dask_scheduler.tasks if str(k).startswith("mitoseg-block")]

    deadline = time.monotonic() + 10
    while client.run_on_scheduler(ours) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.run_on_scheduler(ours) == []
    assert len(list((dist.partial_path(out) / dist.DONE_DIR).iterdir())) < 10


@pytest.mark.parametrize("argv, message", [
    (["-o", "out.tif"], "writes a .zarr folder"),
    (["-o", "out.zarr", "--gt", "gt.zarr"], "not available on a cluster"),
    (["-o", "out.zarr", "--workers", "2"], "not both"),
    (["-o", "out.zarr", "--block-slices", "0"], "at least one slice"),
    (["-o", "out.zarr", "--measurements", "m.csv"], "needs --instances"),
])
def test_cli_cluster_requests_fail_before_any_cluster_starts(argv, message, stack_zarr, tmp_path, capsys,
                                                             monkeypatch):
    from napari_mitoseg.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dist.cli, "local_client", lambda *a, **k: pytest.fail("a cluster was started"))
    rc = main(["segment", str(stack_zarr), "--scheduler", "tcp://127.0.0.1:1", *argv])
    assert rc == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["em.ome.zarr"]


def test_cli_zero_workers_is_refused(stack_zarr, tmp_path, capsys, monkeypatch):
    from napari_mitoseg.cli import main

    monkeypatch.setattr(dist.cli, "local_client", lambda *a, **k: pytest.fail("a cluster was started"))
    rc = main(["segment", str(stack_zarr), "-o", str(tmp_path / "out.zarr"), "--workers", "0"])
    assert rc == 2 and "--workers must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.slow
def test_cli_workers_starts_a_local_cluster(tiny_model_dir, stack_zarr, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "napari_mitoseg", "segment", str(stack_zarr), "-o", str(out),
                           "--model", str(tiny_model_dir), "--device", "cpu", "--threshold", "0.5", "--z-smooth",
                           "--workers", "1", "--block-slices", "4"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "local cluster of 1 worker(s)" in proc.stderr and "blocks 3/3" in proc.stderr
    np.testing.assert_array_equal(np.asarray(read_stack(out)), reference(
        tiny_model_dir, read_stack(stack_zarr, lazy=False), PredictOptions(threshold=0.5, z_smooth=True)))


# --------------------------------------------------------------------------- OME-Zarr


def test_label_pyramid_is_max_pooled_to_the_spec_and_opens_lazily_in_napari(tmp_path, rng, monkeypatch):
    import skimage.measure

    from napari_mitoseg import _reader

    monkeypatch.setattr(ngff, "PYRAMID_MIN_SIDE", 80)
    labels = (rng.random((4, 300, 260)) < 0.01) * rng.integers(1, 1000, (4, 300, 260))
    labels = labels.astype(np.int32)
    path = ngff.write_ome_labels(tmp_path / "lab.zarr", labels, ngff.VoxelSize(8.0, 8.0, 8.0, "nanometer"))
    g = zarr.open_group(str(path), mode="r")
    assert g.metadata.zarr_format == 2
    assert json.loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    ms = g.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    shapes = [g[d["path"]].shape for d in ms["datasets"]]
    # isotropic voxels: Z halves with Y and X
    assert scales == [[8.0, 8.0, 8.0], [16.0, 16.0, 16.0], [32.0, 32.0, 32.0]]
    assert shapes == [(4, 300, 260), (2, 150, 130), (1, 75, 65)]
    np.testing.assert_array_equal(g["0"][:], labels)
    np.testing.assert_array_equal(g["1"][:], skimage.measure.block_reduce(labels, (2, 2, 2), np.max))
    np.testing.assert_array_equal(g["2"][:], skimage.measure.block_reduce(g["1"][:], (2, 2, 2), np.max))
    [(data, meta, kind)] = _reader.read(str(path))
    assert kind == "labels" and meta["multiscale"] and [d.shape for d in data] == shapes
    assert type(data[0]).__module__.startswith("dask")


def test_thin_sections_keep_every_slice_in_the_pyramid():
    assert ngff.pyramid_factors((100, 4096, 4096), ngff.VoxelSize(30, 8, 8))[:2] == [(1, 2, 2), (1, 2, 2)]
    # once the pixels are as coarse as the sections, Z halves too
    assert ngff.pyramid_factors((100, 4096, 4096), ngff.VoxelSize(30, 8, 8))[2:4] == [(2, 2, 2), (2, 2, 2)]
    assert ngff.pyramid_factors((5, 200, 200), ngff.VoxelSize()) == []


def test_a_block_widens_to_the_batch_edges_of_a_single_pass(tiny_model_dir, stack, tmp_path, monkeypatch):
    """On a GPU slices go through in batches from slice 0: a block reads from and to the same
    batch edges (here batches of 4), and writes only its own slices."""
    import napari_mitoseg.inference as inference

    assert dist.blocks._batch_size(api.get_model(tiny_model_dir, "cpu"), stack.shape, OPTS) == 1  # CPU: no batches
    monkeypatch.setattr(dist.blocks, "_batch_size", lambda *a: 4)
    seen = []
    real = inference.iter_predict

    def spy(model, image, options=None, *, zrange=None, **kw):
        a, b = zrange or (0, image.shape[0])
        seen.append(b - a)
        return real(model, image, options, zrange=zrange, **kw)

    monkeypatch.setattr(inference, "iter_predict", spy)
    path = tmp_path / "im.zarr"
    zarr.open(str(path), mode="w", shape=stack.shape, dtype=stack.dtype)[:] = stack
    target = zarr.open(str(tmp_path / "out.zarr"), mode="w", shape=stack.shape, dtype=np.uint8, fill_value=9)
    (tmp_path / "done").mkdir()
    dist.segment_block(str(path), str(tiny_model_dir), "cpu", OPTS, 5, 7, 1, str(tmp_path / "out.zarr"),
                       str(tmp_path / "done"))
    assert seen == [4]  # slices 4-7 (halo 4 and 7, already on batch edges), not 4-8 or 3-8
    dist.segment_block(str(path), str(tiny_model_dir), "cpu", OPTS, 1, 2, 1, str(tmp_path / "out.zarr"),
                       str(tmp_path / "done"))
    assert seen == [4, 4]  # slices 0-3 for block 1 (halo 0-2)
    out, ref = target[:], reference(tiny_model_dir, stack)
    np.testing.assert_array_equal(out[[1, 5, 6]], ref[[1, 5, 6]])
    assert (out[[0, 2, 3, 4, 7, 8, 9]] == 9).all()
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["1-2", "5-7"]


def test_api_segment_file_points_to_the_cluster_path(stack_zarr, tmp_path):
    with pytest.raises(TypeError, match=r"distributed\.segment_file"):
        api.segment_file(stack_zarr, out=tmp_path / "out.zarr", client=object())
    assert not (tmp_path / "out.zarr").exists()


def test_ortho_on_a_cluster_gives_the_single_process_labels(client, tiny_model_dir, stack, tmp_path):
    path = tmp_path / "plain.zarr"
    zarr.open(str(path), mode="w", shape=stack.shape, dtype=stack.dtype, chunks=(1, *stack.shape[1:]))[:] = stack
    opts = PredictOptions(z_smooth=True, threshold=0.5, ortho=True)
    dist.segment(path, tmp_path / "out.zarr", client=client, model=tiny_model_dir, device="cpu", options=opts,
                 block_slices=3)
    labels = np.asarray(read_stack(tmp_path / "out.zarr"))
    np.testing.assert_array_equal(labels, reference(tiny_model_dir, stack, opts))
    assert (labels != reference(tiny_model_dir, stack)).any()  # the XZ and YZ passes did count


def test_multi_scale_on_a_cluster_gives_the_single_process_labels(client, tiny_model_dir, stack, tmp_path):
    path = tmp_path / "plain.zarr"
    zarr.open(str(path), mode="w", shape=stack.shape, dtype=stack.dtype, chunks=(1, *stack.shape[1:]))[:] = stack
    opts = PredictOptions(z_smooth=True, threshold=0.5, scales=(1.0, 1.5))
    dist.segment(path, tmp_path / "out.zarr", client=client, model=tiny_model_dir, device="cpu", options=opts,
                 block_slices=3)
    labels = np.asarray(read_stack(tmp_path / "out.zarr"))
    np.testing.assert_array_equal(labels, reference(tiny_model_dir, stack, opts))
    assert (labels != reference(tiny_model_dir, stack)).any()  # the second scale did count


def test_wide_z_smoothing_of_a_near_isotropic_stack_on_a_cluster_gives_the_single_process_labels(
        client, tiny_model_dir, tmp_path):
    """The z step is estimated once for the stack; blocks of two slices read the wider halo."""
    image = make_isotropic((16, 96, 112))
    path = tmp_path / "plain.zarr"
    zarr.open(str(path), mode="w", shape=image.shape, dtype=image.dtype, chunks=(1, *image.shape[1:]))[:] = image
    opts = PredictOptions(z_smooth=True, threshold=0.5)
    job = dist.prepare(path, tmp_path / "out.zarr", model=tiny_model_dir, device="cpu", options=opts,
                       block_slices=2)
    assert 0.8 < job.options.z_step < 1.3
    dist.segment(path, tmp_path / "out.zarr", client=client, model=tiny_model_dir, device="cpu", options=opts,
                 block_slices=2)
    labels = np.asarray(read_stack(tmp_path / "out.zarr"))
    np.testing.assert_array_equal(labels, reference(tiny_model_dir, image, opts))
    narrow = reference(tiny_model_dir, image, PredictOptions(z_smooth=True, threshold=0.5, z_step=4.0))
    assert (labels != narrow).any()  # the wide smoothing did count
