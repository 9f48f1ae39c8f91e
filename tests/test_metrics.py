"""Per-case metrics: closed-form boxes, anisotropic spacing, every status, empty labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medresunet.metrics import METRICS, case_metrics
from medresunet.metrics.case import image_diagonal_mm
from medresunet.metrics.surface import label_boxes, mask_edges, union_box


def _box(shape, lo, hi, value=1, dtype=np.uint8):
    out = np.zeros(shape, dtype)
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = value
    return out


def _one(pred, ref, spacing=(1.0, 1.0, 1.0), **kw):
    rows = case_metrics(pred, ref, spacing, {"background": 0, "organ": 1}, **kw)
    assert len(rows) == 1
    return rows[0]


def test_nested_boxes_closed_form():
    # reference 20^3 box, prediction shrunk by one voxel on every face
    ref = _box((30, 30, 30), (5, 5, 5), (25, 25, 25))
    pred = _box((30, 30, 30), (6, 6, 6), (24, 24, 24))
    row = _one(pred, ref, nsd_tolerance_mm=1.0)
    n_ref, n_pred = 20**3, 18**3
    assert row["status"] == "ok"
    assert row["dice"] == pytest.approx(2 * n_pred / (n_ref + n_pred), abs=1e-12)
    assert row["iou"] == pytest.approx(n_pred / n_ref, abs=1e-12)
    # pred edge voxels are all 1 mm from the reference surface; reference faces 1 mm,
    # edges sqrt(2), corners sqrt(3) from the prediction's surface
    faces, lines, corners = 6 * 18 * 18, 12 * 18, 8
    pred_edge = 18**3 - 16**3
    assert row["hd_mm"] == pytest.approx(math.sqrt(3), abs=1e-5)
    assert row["hd95_mm"] == pytest.approx(math.sqrt(2), abs=1e-5)
    total = pred_edge * 1.0 + faces * 1.0 + lines * math.sqrt(2) + corners * math.sqrt(3)
    assert row["assd_mm"] == pytest.approx(total / (pred_edge + faces + lines + corners), abs=1e-5)
    assert row["nsd"] == pytest.approx((pred_edge + faces) / (pred_edge + faces + lines + corners), abs=1e-9)
    assert _one(pred, ref, nsd_tolerance_mm=2.0)["nsd"] == 1.0
    assert row["ref_volume_ml"] == pytest.approx(n_ref / 1000.0)
    assert row["pred_volume_ml"] == pytest.approx(n_pred / 1000.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 3.0), (0.7, 1.3, 2.5)])
def test_shift_along_anisotropic_axis(spacing):
    ref = _box((16, 16, 16), (4, 4, 4), (12, 12, 10))
    pred = _box((16, 16, 16), (4, 4, 6), (12, 12, 12))  # shifted by 2 voxels along axis 2
    row = _one(pred, ref, spacing)
    assert row["dice"] == pytest.approx(2 * 8 * 8 * 4 / (2 * 8 * 8 * 6))
    assert row["hd_mm"] == pytest.approx(2 * spacing[2], abs=1e-5)
    voxel = float(np.prod(spacing)) / 1000.0
    assert row["ref_volume_ml"] == pytest.approx(8 * 8 * 6 * voxel)


def test_identical_masks():
    ref = _box((12, 14, 10), (2, 3, 1), (9, 10, 8))
    row = _one(ref.copy(), ref, (0.5, 0.8, 2.0))
    assert (row["dice"], row["iou"], row["hd_mm"], row["hd95_mm"], row["assd_mm"], row["nsd"]) == (
        1.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_every_status_and_empty_distance():
    shape, spacing = (10, 12, 8), (1.0, 2.0, 3.0)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[1:4, 1:4, 1:4] = 1          # 1 ok
    pred[1:4, 1:5, 1:4] = 1
    ref[5:8, 5:8, 2:5] = 2          # 2 missed
    pred[6:9, 1:3, 5:7] = 3         # 3 false positive
    labels = {"background": 0, "ok": 1, "missed": 2, "fp": 3, "absent": 4}
    rows = {r["label_name"]: r for r in case_metrics(pred, ref, spacing, labels)}
    assert [r["label"] for r in rows.values()] == [1, 2, 3, 4]
    assert {n: r["status"] for n, r in rows.items()} == {
        "ok": "ok", "missed": "missed", "fp": "false_positive", "absent": "both_empty"}
    for name in ("missed", "fp"):
        r = rows[name]
        assert (r["dice"], r["iou"], r["nsd"]) == (0.0, 0.0, 0.0)
        assert all(math.isnan(r[m]) for m in ("hd_mm", "hd95_mm", "assd_mm"))
    assert rows["missed"]["ref_volume_ml"] == pytest.approx(27 * 6 / 1000)
    assert rows["missed"]["pred_volume_ml"] == 0.0
    assert rows["fp"]["pred_volume_ml"] == pytest.approx(12 * 6 / 1000)
    absent = rows["absent"]
    assert all(math.isnan(absent[m]) for m in METRICS if "volume" not in m)
    assert absent["ref_volume_ml"] == absent["pred_volume_ml"] == 0.0

    diag = image_diagonal_mm(shape, spacing)
    assert diag == pytest.approx(math.sqrt(10**2 + 24**2 + 24**2))
    rows_d = {r["label_name"]: r for r in case_metrics(pred, ref, spacing, labels, empty_distance="diagonal")}
    for name in ("missed", "fp"):
        assert rows_d[name]["hd_mm"] == rows_d[name]["hd95_mm"] == rows_d[name]["assd_mm"] == pytest.approx(diag)
    assert math.isnan(rows_d["absent"]["hd_mm"])  # both_empty stays NaN
    assert rows_d["ok"] == rows["ok"]


def test_mask_touching_the_volume_border_has_an_edge_there():
    ref = np.ones((6, 6, 6), bool)
    edges = mask_edges(ref)
    assert edges.sum() == 6**3 - 4**3
    row = _one(np.ones((6, 6, 6), np.uint8), ref.astype(np.uint8))
    assert row["hd_mm"] == 0.0 and row["dice"] == 1.0


def test_input_types_and_2d():
    ref = _box((20, 16), (3, 3), (12, 10))
    pred = _box((20, 16), (4, 3), (13, 10))
    r_int = _one(pred, ref, (0.8, 1.2))
    assert r_int["hd_mm"] == pytest.approx(0.8, abs=1e-6)
    assert _one(pred.astype(np.float32), ref.astype(np.float64), (0.8, 1.2)) == r_int
    assert _one(pred.astype(bool), ref.astype(bool), (0.8, 1.2)) == r_int
    with pytest.raises(ValueError, match="non-integer"):
        _one(pred * 0.5, ref, (0.8, 1.2))
    with pytest.raises(ValueError, match="shape"):
        _one(pred[:-1], ref, (0.8, 1.2))
    with pytest.raises(ValueError, match="spacing"):
        _one(pred, ref, (0.8, 1.2, 1.0))
    with pytest.raises(ValueError, match="empty_distance"):
        _one(pred, ref, (0.8, 1.2), empty_distance="zero")


def test_boxes_ignore_other_values():
    vol = np.zeros((8, 8, 8), np.int16)
    vol[1:3, 2:4, 3:5] = 2
    vol[5, 5, 5] = 9
    vol[0, 0, 0] = -1
    boxes = label_boxes(vol, 3)
    assert boxes[0] is None and boxes[2] is None
    assert boxes[1] == (slice(1, 3), slice(2, 4), slice(3, 5))
    assert union_box(boxes[1], None, vol.shape, margin=1) == (slice(0, 4), slice(1, 5), slice(2, 6))
    assert union_box(None, None, vol.shape) is None


def test_boxes_of_empty_and_strided_volumes():
    assert label_boxes(np.zeros((4, 5, 6), np.uint8), 2) == [None, None]
    vol = np.zeros((10, 8, 6), np.uint16)
    vol[3:5, 1:2, 4:6] = 300
    strided = vol[::-1, :, :]  # not C-contiguous
    assert label_boxes(strided, 300)[299] == (slice(5, 7), slice(1, 2), slice(4, 6))
