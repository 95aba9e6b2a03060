"""masks.looks_like_mask: the EM stack is told apart from its mask, labels and blank data."""

import numpy as np
import pytest

from napari_mitoseg.masks import looks_like_mask
from napari_mitoseg.synthetic import make_sample


@pytest.fixture(scope="module")
def pair():
    return make_sample((3, 100, 124), seed=0)


def test_em_image_is_not_a_mask(pair, rng):
    image, _ = pair
    assert not looks_like_mask(image)
    assert not looks_like_mask(image[1])  # one (Y, X) slice
    assert not looks_like_mask(image.astype(np.float32) / 255)  # float grey values
    assert not looks_like_mask(rng.integers(0, 4096, (2, 64, 64), dtype=np.uint16))


def test_masks_and_label_volumes_are(pair):
    from skimage.measure import label

    _, mask = pair
    assert looks_like_mask(mask)  # 0/1
    assert looks_like_mask(mask * 255)  # 0/255
    assert looks_like_mask(mask.astype(bool))
    assert looks_like_mask(mask.astype(np.float32))  # 0.0/1.0
    ids = label(make_sample((3, 256, 256), seed=1)[1]).astype(np.int32)
    assert ids.max() > 2 and looks_like_mask(ids)  # instance ids: many values, flat patches
    assert looks_like_mask(np.zeros((2, 32, 32), np.uint8))  # blank


def test_only_a_sample_is_read():
    class Lazy:
        """A (Z, Y, X) array that records which slices are read."""

        shape, dtype, ndim = (50, 2048, 2048), np.dtype(np.uint8), 3

        def __init__(self):
            self.read = []

        def __getitem__(self, key):
            z, ys, xs = key
            self.read.append((z, ys.stop - ys.start, xs.stop - xs.start))
            return np.zeros((ys.stop - ys.start, xs.stop - xs.start), np.uint8)

    lazy = Lazy()
    assert looks_like_mask(lazy)
    assert sorted(z for z, _, _ in lazy.read) == [0, 25, 49]
    assert all(h == w == 512 for _, h, w in lazy.read)


def test_not_an_image_shape():
    assert not looks_like_mask(np.zeros((0, 10, 10), np.uint8))
    assert not looks_like_mask(np.zeros((2, 3, 10, 10), np.uint8))
