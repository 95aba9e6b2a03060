"""From mask to one object per mitochondrion (measurements: test_core_morphology.py)."""

from __future__ import annotations

import numpy as np

from napari_mitoseg.postprocess import instances, remove_small


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
