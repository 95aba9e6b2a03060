"""From mask to one object per mitochondrion, and measurements."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_mitoseg.postprocess import ObjectMeasure, instances, measure, remove_small, write_csv


def _two_objects_and_a_speck():
    m = np.zeros((6, 20, 20), np.uint8)
    m[0:4, 2:6, 2:6] = 1  # 64 voxels, spans slices 0-3: one object in 3D
    m[2:6, 10:13, 10:13] = 1  # 36 voxels
    m[5, 18, 18] = 1  # 1 voxel
    return m


def test_instances_count_3d_connected_objects_and_drop_small_ones():
    lab = instances(_two_objects_and_a_speck(), min_size=10)
    assert lab.dtype == np.int32
    assert lab.shape == (6, 20, 20)
    assert sorted(np.unique(lab)) == [0, 1, 2]  # consecutive ids, the speck gone
    assert len(np.unique(lab[0:4, 2:6, 2:6])) == 1  # one id through its slices
    assert lab[5, 18, 18] == 0


def test_size_limit_is_inclusive_at_min_size():
    m = _two_objects_and_a_speck()
    assert remove_small(m, min_size=36)[2, 11, 11]  # exactly min_size: kept
    assert not remove_small(m, min_size=37)[2, 11, 11]
    assert remove_small(m, min_size=0).sum() == m.sum()
    assert instances(m, min_size=0).max() == 3


def test_diagonal_contact_is_not_a_connection():
    m = np.zeros((2, 4, 4), np.uint8)
    m[0, 0, 0] = 1
    m[1, 1, 1] = 1  # touches only at a corner
    assert instances(m, min_size=1).max() == 2
    m[1, 0, 0] = 1  # face contact across slices joins them
    m[1, 0, 1] = 1
    assert instances(m, min_size=1).max() == 1


def test_measure_volumes_and_centroids_in_physical_units():
    lab = np.zeros((4, 10, 10), np.int32)
    lab[1:3, 2:4, 4:8] = 5  # 2 x 2 x 4 = 16 voxels
    lab[3, 0, 0] = 9
    rows = measure(lab, voxel_size=(30.0, 5.0, 5.0))
    assert [r.id for r in rows] == [5, 9]
    r = rows[0]
    assert r.voxels == 16
    assert r.volume == pytest.approx(16 * 30 * 5 * 5)
    assert (r.centroid_z, r.centroid_y, r.centroid_x) == pytest.approx((1.5 * 30, 2.5 * 5, 5.5 * 5))
    assert (r.z_first, r.z_last, r.slices) == (1, 2, 2)
    assert rows[1].volume == pytest.approx(750.0)


def test_measure_2d_and_empty():
    assert measure(np.zeros((5, 5), np.int32)) == []
    lab = np.zeros((5, 5), np.int32)
    lab[1:3, 1:3] = 1
    (r,) = measure(lab)
    assert (r.voxels, r.slices) == (4, 1)


def test_csv_has_a_header_and_one_row_per_object(tmp_path):
    rows = measure(instances(_two_objects_and_a_speck(), min_size=10), voxel_size=(2.0, 1.0, 1.0))
    path = write_csv(rows, tmp_path / "out" / "mito.csv")
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(ObjectMeasure.__dataclass_fields__)
    assert [int(r["id"]) for r in read] == [1, 2]
    assert [float(r["volume"]) for r in read] == [128.0, 72.0]
    assert [p.name for p in path.parent.iterdir()] == ["mito.csv"]
