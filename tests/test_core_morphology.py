"""Morphology in physical units on shapes with known answers, proofreading edits, and the
``mitoseg measure`` command."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from napari_mitoseg import proofread
from napari_mitoseg.cli import main
from napari_mitoseg.io import write_labels
from napari_mitoseg.morphology import (
    COLUMNS,
    MeasureError,
    measure,
    object_mesh,
    summarize,
    write_csv,
)


def ellipsoid(semi_nm, voxel_nm, offset=(0.3, 0.2, 0.1)) -> np.ndarray:
    """A voxelised solid ellipsoid (semi-axes in nm, Z Y X), centre off the voxel grid."""
    n = [int(math.ceil(s / v)) + 3 for s, v in zip(semi_nm, voxel_nm, strict=True)]
    grid = np.meshgrid(*[(np.arange(-k, k + 1) + o) * v for k, v, o in zip(n, voxel_nm, offset, strict=True)],
                       indexing="ij")
    return (sum((g / s) ** 2 for g, s in zip(grid, semi_nm, strict=True)) <= 1).astype(np.int32)


def ellipsoid_area(a, b, c):
    """Knud Thomsen's formula (within 1.1 % of the exact area; exact for a ball)."""
    p = 1.6075
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


ELLIPSOIDS = [  # semi-axes (nm), voxel size (nm), surface tolerance (Thomsen's 1.1 % included)
    ((300, 300, 300), (30, 8, 8), 0.03),  # a ball, slices 3.75x thicker than pixels
    ((200, 200, 200), (10, 10, 10), 0.03),  # a ball, isotropic voxels
    ((300, 300, 300), (50, 10, 10), 0.03),  # a ball, 5x anisotropy
    ((400, 200, 120), (30, 8, 8), 0.04),
    ((300, 150, 150), (50, 5, 5), 0.04),  # a tube-like ellipsoid along z, 10x anisotropy
    ((75, 75, 75), (30, 8, 8), 0.03),  # a small ball, 5 slices: a plain blur makes it 11 % small
    ((100, 100, 100), (40, 5, 5), 0.04),  # 5 slices, 8x anisotropy
    ((60, 200, 200), (30, 8, 8), 0.04),  # a disc 4 slices thick
]


@pytest.mark.parametrize(("semi", "vox", "tol"), ELLIPSOIDS)
def test_ellipsoids_volume_surface_axes(semi, vox, tol):
    (r,) = measure(ellipsoid(semi, vox), vox)
    a, b, c = (s / 1000 for s in semi)
    assert r.volume_um3 == pytest.approx(4 / 3 * math.pi * a * b * c, rel=0.02)
    assert r.surface_um2 == pytest.approx(ellipsoid_area(a, b, c), rel=tol)
    major, medium, minor = sorted((2 * a, 2 * b, 2 * c), reverse=True)
    axis_tol = 0.03 if r.slices >= 8 else 0.1  # 4-5 slices draw an ellipsoid coarsely
    assert r.axis_major_um == pytest.approx(major, rel=axis_tol)
    assert r.axis_medium_um == pytest.approx(medium, rel=axis_tol)
    assert r.axis_minor_um == pytest.approx(minor, rel=axis_tol)
    assert r.elongation == pytest.approx(major / medium, rel=0.05)
    if a == b == c:
        assert r.sphericity == pytest.approx(1.0, abs=tol + 0.015)  # 2/3 of the volume's 2 % too
    else:
        assert r.sphericity < 0.97


def test_the_raw_mask_mesh_overestimates_and_the_smoothed_one_does_not():
    """The reason for the blur: a mesh of the binary mask itself is 8-20 % too large on a ball."""
    from skimage.measure import marching_cubes, mesh_surface_area

    vox = (30, 8, 8)
    ball = ellipsoid((300, 300, 300), vox)
    exact = 4 * math.pi * 0.3**2
    v, f, _, _ = marching_cubes(np.pad(ball, 2).astype(float), 0.5, spacing=[s / 1000 for s in vox])
    assert mesh_surface_area(v, f) > 1.08 * exact
    v, f, area = object_mesh(ball > 0, vox)
    assert mesh_surface_area(v, f) == pytest.approx(area, rel=1e-9)
    assert area == pytest.approx(exact, rel=0.03)


@pytest.mark.parametrize(("sides", "vox"), [((1200, 900, 900), (30, 8, 8)), ((900, 1200, 1500), (40, 6, 6)),
                                            ((600, 600, 600), (10, 10, 10))])
def test_boxes(sides, vox):
    n = [round(s / v) for s, v in zip(sides, vox, strict=True)]
    lab = np.zeros([k + 6 for k in n], np.uint16)
    lab[3:-3, 3:-3, 3:-3] = 7
    (r,) = measure(lab, vox)
    a, b, c = (k * v / 1000 for k, v in zip(n, vox, strict=True))
    assert r.id == 7 and r.voxels == np.prod(n)
    assert r.volume_um3 == pytest.approx(a * b * c, rel=1e-9)
    assert r.surface_um2 == pytest.approx(2 * (a * b + a * c + b * c), rel=0.05)
    # the equivalent ellipsoid of a box of side L has axes sqrt(5/3) L
    axes = sorted((a, b, c), reverse=True)
    got = (r.axis_major_um, r.axis_medium_um, r.axis_minor_um)
    assert got == pytest.approx([math.sqrt(5 / 3) * s for s in axes], rel=1e-6)
    assert (r.slices, r.z_extent_um) == (n[0], pytest.approx(n[0] * vox[0] / 1000))
    assert (r.z_first, r.z_last) == (3, 3 + n[0] - 1)
    assert not r.touches_border


def test_capsule_like_a_tubular_mitochondrion():
    vox, radius, length = (30, 8, 8), 150, 1500  # a 300 nm thick, 1.8 um long tube along x
    n = [int(math.ceil((radius if i < 2 else radius + length / 2) / v)) + 3 for i, v in enumerate(vox)]
    z, y, x = np.meshgrid(*[(np.arange(-k, k + 1) + 0.25) * v for k, v in zip(n, vox, strict=True)],
                          indexing="ij")
    tube = (z**2 + y**2 + np.clip(np.abs(x) - length / 2, 0, None) ** 2) <= radius**2
    (r,) = measure(tube.astype(np.uint8), vox)
    rr, ll = radius / 1000, length / 1000
    assert r.surface_um2 == pytest.approx(2 * math.pi * rr * ll + 4 * math.pi * rr**2, rel=0.03)
    assert r.volume_um3 == pytest.approx(math.pi * rr**2 * ll + 4 / 3 * math.pi * rr**3, rel=0.02)
    assert r.elongation > 3 and r.flatness == pytest.approx(1, abs=0.05)


def test_centroids_border_ids_and_summary():
    vox = (30.0, 5.0, 5.0)
    lab = np.zeros((4, 10, 10), np.int32)
    lab[1:3, 2:4, 4:8] = 5  # 2 x 2 x 4 voxels, inside
    lab[3, 0, 0] = 9  # touches the border
    rows = measure(lab, vox)
    assert [r.id for r in rows] == [5, 9]
    r = rows[0]
    assert r.voxels == 16 and r.volume_um3 == pytest.approx(16 * 30 * 5 * 5 / 1e9)
    assert (r.centroid_z_um, r.centroid_y_um, r.centroid_x_um) == pytest.approx((0.045, 0.0125, 0.0275))
    assert (r.z_first, r.z_last, r.slices) == (1, 2, 2)
    assert [x.touches_border for x in rows] == [False, True]
    assert [x.id for x in measure(lab, vox, ids=[9])] == [9]
    s = summarize(rows, lab.shape, vox)
    stack = 400 * 750 / 1e9
    assert s.objects == 2 and s.touching_border == 1
    assert s.stack_volume_um3 == pytest.approx(stack)
    assert s.volume_fraction == pytest.approx(17 / 400)
    assert s.density_per_um3 == pytest.approx(2 / stack)
    assert s.mean_volume_um3 == pytest.approx(8.5 * 750 / 1e9)
    assert s.median_volume_um3 == pytest.approx(8.5 * 750 / 1e9)
    assert summarize([], lab.shape, vox).objects == 0


def test_bad_input_is_refused():
    lab = np.ones((2, 3, 3), np.int32)
    for bad in [(0, 1, 1), (1, 1), (1, -2, 1), ("a", 1, 1), (math.nan, 1, 1)]:
        with pytest.raises(MeasureError, match="voxel size"):
            measure(lab, bad)
    with pytest.raises(MeasureError, match="integers"):
        measure(lab.astype(float), (1, 1, 1))
    assert measure(np.zeros((3, 3), np.int32), (1, 1, 1)) == []


def test_csv_columns(tmp_path):
    rows = measure(ellipsoid((100, 100, 100), (20, 10, 10)), (20, 10, 10))
    path = write_csv(rows, tmp_path / "m.csv")
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS
    assert float(table[0]["volume_um3"]) == pytest.approx(rows[0].volume_um3)


# --------------------------------------------------------------------------- proofreading


def _two_touching_balls():
    vox = (20.0, 10.0, 10.0)
    a = ellipsoid((200, 200, 200), vox, offset=(0, 0, 0))
    lab = np.zeros((a.shape[0], a.shape[1], 2 * a.shape[2]), np.int32)
    k = a.shape[2]
    lab[:, :, 4:4 + k] |= a
    lab[:, :, k - 4:2 * k - 4] |= a  # overlapping by a neck
    return lab * 3, vox


def test_split_two_touching_balls_at_their_neck():
    lab, vox = _two_touching_balls()
    edit = proofread.split(lab, 3, vox)
    out = proofread.apply(lab.copy(), edit)
    assert sorted(np.unique(out)) == [0, 3, 4]
    assert np.count_nonzero(out) == np.count_nonzero(lab)
    cut = lab.shape[2] // 2
    xs3, xs4 = np.nonzero(out == 3)[2], np.nonzero(out == 4)[2]
    assert abs(np.count_nonzero(out == 3) / np.count_nonzero(out == 4) - 1) < 0.2
    assert (xs3.max() < cut + 4 and xs4.min() > cut - 4) or (xs4.max() < cut + 4 and xs3.min() > cut - 4)


def test_split_a_plain_tube_across_its_long_axis():
    lab = np.zeros((5, 10, 60), np.uint8)
    lab[1:4, 3:7, 5:55] = 1
    out = proofread.apply(lab.copy(), proofread.split(lab, 1, (1, 1, 1), new_id=9))
    assert sorted(np.unique(out)) == [0, 1, 9]
    from skimage.measure import label

    for i in (1, 9):
        assert label(out == i).max() == 1  # each part in one piece
        assert 0.2 < np.count_nonzero(out == i) / np.count_nonzero(lab) < 0.8


def test_merge_and_delete():
    lab = np.zeros((2, 5, 5), np.int32)
    lab[0, :2] = 4
    lab[1, 3:] = 2
    lab[0, 4, 4] = 8
    merged = proofread.apply(lab.copy(), proofread.merge(lab, [4, 2]))
    assert sorted(np.unique(merged)) == [0, 2, 8] and np.count_nonzero(merged == 2) == 20
    gone = proofread.apply(lab.copy(), proofread.delete(lab, [8, 4]))
    assert sorted(np.unique(gone)) == [0, 2]
    with pytest.raises(MeasureError, match="no object with id 5"):
        proofread.delete(lab, [5])
    with pytest.raises(MeasureError, match="at least two"):
        proofread.merge(lab, [4])
    with pytest.raises(MeasureError, match="already used"):
        proofread.split(lab, 4, (1, 1, 1), new_id=2)


# --------------------------------------------------------------------------- mitoseg measure


def _two_objects_mask():
    m = np.zeros((12, 40, 60), np.uint8)
    m[2:8, 5:20, 5:20] = 1
    m[4:12, 20:35, 30:55] = 1  # touches the last slice
    return m


def test_cli_measure_splits_a_mask_and_writes_table_and_meshes(tmp_path, capsys):
    import trimesh

    src = write_labels(tmp_path / "mask.tif", _two_objects_mask() * 255)
    out, meshes = tmp_path / "res" / "table.csv", tmp_path / "meshes"
    assert main(["measure", str(src), "--voxel-size", "30", "8", "8", "-o", str(out),
                 "--meshes", str(meshes), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["objects"] == 2 and summary["split_mask"] and summary["touching_border"] == 1
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS
    assert [int(r["id"]) for r in table] == [1, 2]
    vols = [float(r["volume_um3"]) for r in table]
    assert vols == pytest.approx([6 * 15 * 15 * 30 * 64 / 1e9, 8 * 15 * 25 * 30 * 64 / 1e9])
    assert [r["touches_border"] for r in table] == ["False", "True"]
    assert summary["volume_fraction"] == pytest.approx((6 * 225 + 8 * 375) / (12 * 40 * 60))
    assert sorted(p.name for p in meshes.iterdir()) == ["mito_000001.ply", "mito_000002.ply"]
    mesh = trimesh.load(meshes / "mito_000001.ply")
    assert mesh.is_watertight
    # um, (x, y, z): the first box spans x, y 5-20 pixels of 8 nm and z 2-8 slices of 30 nm
    lo, hi = mesh.bounds
    assert lo == pytest.approx([5 * 0.008 - 0.004, 5 * 0.008 - 0.004, 2 * 0.03 - 0.015], abs=0.01)
    assert hi == pytest.approx([20 * 0.008 - 0.004, 20 * 0.008 - 0.004, 8 * 0.03 - 0.015], abs=0.01)
    # outward normals (positive volume); a small box loses its corners to the blur
    assert mesh.volume == pytest.approx(vols[0], rel=0.2)
    assert mesh.area == pytest.approx(float(table[0]["surface_um2"]), rel=1e-6)


def test_cli_measure_reads_the_voxel_size_the_file_records(tmp_path, capsys):
    import tifffile

    src = tmp_path / "mask.tif"  # an ImageJ TIFF of 40 nm slices of 10 nm pixels
    tifffile.imwrite(src, _two_objects_mask(), imagej=True, resolution=(100.0, 100.0),
                     metadata={"spacing": 0.04, "unit": "um", "axes": "ZYX"})
    assert main(["measure", str(src), "-o", str(tmp_path / "t.csv"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["voxel_size_nm"] == [40.0, 10.0, 10.0]
    assert out["stack_volume_um3"] == pytest.approx(12 * 40 * 60 * 40 * 100 / 1e9)
    # a typed voxel size wins
    assert main(["measure", str(src), "--voxel-size", "30", "8", "8", "-o", str(tmp_path / "u.csv"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["voxel_size_nm"] == [30.0, 8.0, 8.0]


def test_cli_measure_keeps_instance_ids(tmp_path, capsys):
    lab = _two_objects_mask().astype(np.uint16)
    lab[lab > 0] = 0
    lab[2:8, 5:20, 5:20] = 12
    lab[2:8, 20:25, 5:20] = 40  # touching id 12: stays separate
    src = write_labels(tmp_path / "lab.tif", lab)
    assert main(["measure", str(src), "--voxel-size", "10", "10", "10", "-o", str(tmp_path / "t.csv")]) == 0
    assert "objects=2" in capsys.readouterr().out
    with open(tmp_path / "t.csv", newline="") as f:
        assert [int(r["id"]) for r in csv.DictReader(f)] == [12, 40]


def test_cli_measure_refuses_bad_input_before_work(tmp_path, capsys):
    src = write_labels(tmp_path / "mask.tif", _two_objects_mask())
    before = src.read_bytes()
    cases = [
        (["--voxel-size", "0", "8", "8", "-o", str(tmp_path / "a.csv")], "voxel size"),
        (["-o", str(tmp_path / "a.csv")], "records no voxel size"),
        (["--voxel-size", "30", "8", "8", "-o", str(src)], "is the input"),
        (["--voxel-size", "30", "8", "8", "-o", str(tmp_path)], "is a folder"),
        (["--voxel-size", "30", "8", "8", "-o", str(tmp_path / "b.csv"), "--meshes", str(src)],
         "meshes folder"),
        (["--voxel-size", "30", "8", "8", "-o", str(tmp_path / "b.csv"), "--meshes", str(tmp_path / "b.csv")],
         "meshes folder"),
    ]
    for args, msg in cases:
        assert main(["measure", str(src), *args]) == 2
        assert msg in capsys.readouterr().err
    assert main(["measure", str(tmp_path / "missing.tif"), "--voxel-size", "1", "1", "1",
                 "-o", str(tmp_path / "c.csv")]) == 2
    assert "mitoseg: error:" in capsys.readouterr().err
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]


# --------------------------------------------------------------------------- outputs never half-written


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_interrupted_measure_leaves_the_old_table_and_meshes(tmp_path, monkeypatch):
    from napari_mitoseg import morphology

    first = write_labels(tmp_path / "first.tif", _two_objects_mask())
    table, meshes = tmp_path / "m.csv", tmp_path / "meshes"
    morphology.measure_file(first, (30, 8, 8), table, meshes=meshes)
    before_table, before_meshes = table.read_bytes(), _files(meshes)
    other = np.zeros((12, 40, 60), np.uint8)
    other[1:6, 10:30, 10:30] = 1  # other objects, so every new mesh differs from the old one
    other[7:11, 5:15, 40:55] = 1
    second = write_labels(tmp_path / "second.tif", other)
    real = morphology.write_mesh
    calls = []

    def interrupted_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # Ctrl+C after the first new mesh is written
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(morphology, "write_mesh", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        morphology.measure_file(second, (30, 8, 8), table, meshes=meshes)
    assert calls  # the run was inside the meshes when it stopped
    assert table.read_bytes() == before_table
    assert _files(meshes) == before_meshes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.tif", "m.csv", "meshes", "second.tif"]


def test_meshes_of_an_earlier_run_are_not_left_beside_the_new_ones(tmp_path, capsys):
    src = write_labels(tmp_path / "mask.tif", _two_objects_mask())
    args = ["--voxel-size", "30", "8", "8", "-o", str(tmp_path / "m.csv"), "--meshes", str(tmp_path / "meshes")]
    assert main(["measure", str(src), *args]) == 0
    assert sorted(p.name for p in (tmp_path / "meshes").iterdir()) == ["mito_000001.ply", "mito_000002.ply"]
    one = _two_objects_mask()
    one[:, :, 25:] = 0  # only the first object is left
    src = write_labels(tmp_path / "mask.tif", one)
    assert main(["measure", str(src), *args]) == 0
    assert sorted(p.name for p in (tmp_path / "meshes").iterdir()) == ["mito_000001.ply"]
    with open(tmp_path / "m.csv", newline="") as f:
        assert [int(r["id"]) for r in csv.DictReader(f)] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "mask.tif", "meshes"]


def test_a_meshes_folder_holding_other_files_is_refused(tmp_path, capsys):
    from napari_mitoseg.morphology import write_meshes

    src = write_labels(tmp_path / "mask.tif", _two_objects_mask())
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert main(["measure", str(src), "--voxel-size", "30", "8", "8", "-o", str(tmp_path / "m.csv"),
                 "--meshes", str(folder)]) == 2
    assert "holds files other than meshes" in capsys.readouterr().err
    with pytest.raises(MeasureError, match="holds files other than meshes"):
        write_meshes(_two_objects_mask(), (30, 8, 8), folder)
    assert _files(folder) == {"notes.txt": b"mine"}
    # a table inside the meshes folder would be replaced with it
    assert main(["measure", str(src), "--voxel-size", "30", "8", "8", "-o", str(tmp_path / "new" / "m.csv"),
                 "--meshes", str(tmp_path / "new")]) == 2
    assert "lies inside the meshes folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    # nor may the meshes folder hold the labels being measured
    inside = write_labels(tmp_path / "meshes" / "mask.tif", _two_objects_mask())
    assert main(["measure", str(inside), "--voxel-size", "30", "8", "8", "-o", str(tmp_path / "m.csv"),
                 "--meshes", str(inside.parent)]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert inside.exists() and not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize("slices", [1, 2])
@pytest.mark.parametrize("radius_nm", [40, 80, 300])
def test_thin_discs_mesh_holds_the_voxel_volume(slices, radius_nm):
    """Objects one or two sections thin (a third of the objects of an SBEM stack at 30 nm): the
    mesh encloses the voxel volume, so surface and sphericity are not inflated."""
    from napari_mitoseg.morphology import mesh_area_volume

    vox = (30.0, 9.3, 9.3)
    r = int(radius_nm / vox[1]) + 3
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (yy * vox[1]) ** 2 + (xx * vox[2]) ** 2 <= radius_nm**2
    mask = np.repeat(disc[None], slices, axis=0)
    verts, faces, area = object_mesh(mask, vox)
    _, volume = mesh_area_volume(verts, faces)
    voxel_volume = mask.sum() * np.prod(vox) / 1e9
    assert volume == pytest.approx(voxel_volume, rel=0.03)
    cylinder = (2 * math.pi * radius_nm**2 + 2 * math.pi * radius_nm * slices * vox[0]) / 1e6
    assert area <= 1.1 * cylinder  # a rounded disc, never a swollen one
