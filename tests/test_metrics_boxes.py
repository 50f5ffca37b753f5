"""Box IoU (spec §6.0): hand-computed cases, including the 1e-8 in the denominator."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fast3d_cli.metrics import box_iou, pairwise_box_iou

CUBE2 = [0, 0, 0, 2, 2, 2]  # volume 8


def test_identical_boxes_are_just_below_one():
    iou = box_iou(CUBE2, CUBE2)
    assert iou == 8 / (8 + 1e-8)
    assert 1 - 1e-8 < iou < 1


def test_disjoint_boxes():
    assert box_iou(CUBE2, [5, 5, 5, 1, 1, 1]) == 0.0


def test_touching_faces_have_zero_iou():
    assert box_iou(CUBE2, [2, 0, 0, 2, 2, 2]) == 0.0  # faces meet at x = 1


def test_nested_box():
    assert box_iou(CUBE2, [0.5, 0.5, 0.5, 1, 1, 1]) == 1 / (8 + 1 - 1 + 1e-8)


def test_half_shifted_box():
    # overlap x in [0, 1]: 1 * 2 * 2 = 4; union 8 + 8 - 4 = 12
    assert box_iou(CUBE2, [1, 0, 0, 2, 2, 2]) == 4 / (12 + 1e-8)


def test_partial_overlap_on_every_axis():
    # a = [0,2]^3, b = [1,3] x [1,4] x [-1,1.5]: inter = 1 * 1 * 1.5, vol_b = 2 * 3 * 2.5
    iou = box_iou([1, 1, 1, 2, 2, 2], [2, 2.5, 0.25, 2, 3, 2.5])
    assert iou == pytest.approx(1.5 / (8 + 15 - 1.5 + 1e-8), rel=1e-12)


def test_geometric_half_is_below_half():
    # inter 1, union 2: the epsilon makes it 0.4999999975, so it fails an IoU >= 0.5 test
    iou = box_iou([1, 0, 0, 2, 1, 1], [0.5, 0, 0, 1, 1, 1])
    assert 0.5 - 1e-8 < iou < 0.5


def test_zero_size_box():
    flat = [0, 0, 0, 0, 0, 0]
    assert box_iou(flat, flat) == 0.0
    assert box_iou(flat, CUBE2) == 0.0
    assert box_iou([0, 0, 0, 2, 2, 0], CUBE2) == 0.0  # flat in z


def test_negative_size_acts_like_its_absolute_value():
    assert box_iou([0, 0, 0, -2, 2, -2], [1, 0, 0, 2, 2, 2]) == box_iou(CUBE2, [1, 0, 0, 2, 2, 2])


def test_accepts_torch_and_numpy():
    t = torch.tensor([[0, 0, 0, 2, 2, 2], [1, 0, 0, 2, 2, 2]], dtype=torch.float32)
    assert box_iou(t[0], t[1]) == box_iou(np.array(CUBE2), [1, 0, 0, 2, 2, 2])


def test_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        box_iou([0, 0, 0, 1, 1], CUBE2)
    with pytest.raises(ValueError):
        box_iou([CUBE2, CUBE2], CUBE2)
    with pytest.raises(ValueError):
        pairwise_box_iou(np.zeros(6), np.zeros((2, 6)))


def test_pairwise_shape_and_values():
    a = np.array([CUBE2, [10, 0, 0, 2, 2, 2]])
    b = np.array([[1, 0, 0, 2, 2, 2], CUBE2, [0.5, 0.5, 0.5, 1, 1, 1]])
    m = pairwise_box_iou(a, b)
    assert m.shape == (2, 3)
    assert m[0].tolist() == [4 / (12 + 1e-8), 8 / (8 + 1e-8), 1 / (8 + 1e-8)]
    assert m[1].tolist() == [0.0, 0.0, 0.0]
    assert pairwise_box_iou(a, np.zeros((0, 6))).shape == (2, 0)


_boxes = arrays(
    np.float64,
    st.tuples(st.integers(1, 4), st.just(6)),
    elements=st.floats(-3, 3, allow_nan=False, width=32),
)


@settings(max_examples=40, deadline=None)
@given(_boxes, _boxes)
def test_pairwise_equals_scalar_and_is_symmetric(a, b):
    m = pairwise_box_iou(a, b)
    assert np.all((m >= 0) & (m <= 1))
    for i in range(len(a)):
        for j in range(len(b)):
            assert m[i, j] == box_iou(a[i], b[j]) == box_iou(b[j], a[i])
