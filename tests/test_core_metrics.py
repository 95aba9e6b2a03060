"""Foreground scores against hand-computed values, and the empty cases."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mitoseg.metrics import Counts, ShapeMismatchError, counts, evaluate, iou, score, score_per_slice


def test_hand_computed_one_of_each():
    pred = np.array([1, 1, 0, 0])
    gt = np.array([1, 0, 1, 0])
    assert counts(pred, gt) == Counts(tp=1, fp=1, fn=1, tn=1)
    s = score(pred, gt)
    assert s.iou == pytest.approx(1 / 3)
    assert s.dice == pytest.approx(0.5)
    assert s.precision == pytest.approx(0.5)
    assert s.recall == pytest.approx(0.5)


def test_hand_computed_2d_with_labels_binarised():
    gt = np.zeros((4, 5), np.uint8)
    gt[1:3, 1:4] = 1  # 6 pixels
    pred = np.zeros((4, 5), np.int32)
    pred[1:3, 2:5] = 7  # 6 pixels, instance id 7: 4 overlap, 2 false positives
    pred[0, 0] = 3  # one more false positive
    # tp 4, fp 3, fn 2
    s = score(pred, gt)
    assert s.iou == pytest.approx(4 / 9)
    assert s.dice == pytest.approx(8 / 13)
    assert s.precision == pytest.approx(4 / 7)
    assert s.recall == pytest.approx(4 / 6)
    assert iou(pred, gt) == s.iou


def test_empty_prediction():
    gt = np.zeros((3, 3))
    gt[1, 1] = 1
    assert score(np.zeros((3, 3)), gt).as_dict() == {"iou": 0.0, "dice": 0.0, "precision": 0.0, "recall": 0.0}


def test_empty_ground_truth():
    pred = np.zeros((3, 3))
    pred[0, 0] = 1
    assert score(pred, np.zeros((3, 3))).as_dict() == {"iou": 0.0, "dice": 0.0, "precision": 0.0,
                                                         "recall": 0.0}


def test_both_empty_scores_one():
    assert score(np.zeros((3, 3)), np.zeros((3, 3))).as_dict() == {"iou": 1.0, "dice": 1.0, "precision": 1.0,
                                                                     "recall": 1.0}


def test_ignore_mask_leaves_pixels_out():
    pred = np.array([1, 1, 0, 0])
    gt = np.array([1, 0, 1, 0])
    c = counts(pred, gt, ignore=np.array([False, True, True, False]))
    assert c == Counts(tp=1, fp=0, fn=0, tn=1)
    assert score(pred, gt, ignore=np.array([False, True, True, False])).iou == 1.0


def test_shape_mismatch_is_an_error():
    msg = r"prediction shape \(2, 3\) does not match ground truth shape \(3, 2\)"
    with pytest.raises(ShapeMismatchError, match=msg):
        score(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ShapeMismatchError):
        score_per_slice(np.zeros((2, 3, 3)), np.zeros((3, 3, 3)))
    with pytest.raises(ShapeMismatchError):
        evaluate(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))


def test_per_slice_and_overall_pool_the_counts():
    gt = np.zeros((3, 2, 2), np.uint8)
    pred = np.zeros((3, 2, 2), np.uint8)
    gt[0] = 1  # slice 0: 4 true, 2 found
    pred[0, 0] = 1
    pred[1, 0, 0] = 1  # slice 1: empty truth, one false positive
    # slice 2: both empty
    per = score_per_slice(pred, gt)
    assert [s.iou for s in per] == [0.5, 0.0, 1.0]
    assert [s.recall for s in per] == [0.5, 0.0, 1.0]
    rep = evaluate(pred, gt)
    assert rep.per_slice == per
    # overall pools pixels (tp 2, fp 1, fn 2), it is not the mean of the slices
    assert rep.overall.iou == pytest.approx(2 / 5)
    d = rep.as_dict()
    assert set(d) == {"iou", "dice", "precision", "recall", "slices"}
    assert len(d["slices"]) == 3 and d["slices"][2]["dice"] == 1.0


def test_2d_pair_counts_as_one_slice():
    assert len(score_per_slice(np.ones((4, 4)), np.ones((4, 4)))) == 1
