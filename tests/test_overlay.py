"""Readable overlays: the worst label's slice, the zoom box, physical aspect, PNG sizes."""

from __future__ import annotations

import io

import numpy as np
import pytest

from medresunet.metrics import case_metrics
from medresunet.metrics import figures as fig_mod
from medresunet.metrics import overlay as ov_mod
from medresunet.metrics.figures import display_shape, render_overlay_pngs
from medresunet.metrics.overlay import (
    display_window,
    to_ras,
    worst_label,
    worst_slice,
    zoom_box,
)

Image = pytest.importorskip("PIL.Image")


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _liver_and_lesion(shape=(96, 96, 8)):
    """A big 'liver' (1) with a small 'lesion' (2) that the prediction gets half wrong."""
    ref = np.zeros(shape, np.uint8)
    ref[10:80, 10:80, :] = 1
    ref[60:64, 20:24, 2:6] = 2
    pred = ref.copy()
    pred[60:62, 20:24, 3] = 1  # half the lesion missed on slice 3
    pred[64:66, 20:24, 3] = 2  # and some liver called lesion
    pred[10:12, 10:80, 5] = 0  # a larger liver error on another slice
    return pred, ref


def test_worst_label_slice_and_box_contains_every_disagreeing_voxel():
    pred, ref = _liver_and_lesion()
    rows = case_metrics(pred, ref, (1.0, 1.0, 3.0), {"liver": 1, "lesion": 2})
    assert worst_label(rows) == 2  # the lesion's Dice is the lower
    ov = worst_slice(pred, ref, (1.0, 1.0, 3.0), label=2)
    assert (ov.axis, ov.index, ov.label) == (2, 3, 2)  # the lesion's slice, not the liver's slice 5
    diff = (ov.pred == 2) != (ov.ref == 2)
    assert ov.n_disagree == int(diff.sum()) == 16
    h0, h1, w0, w1 = ov.box
    inside = np.zeros_like(diff)
    inside[h0:h1, w0:w1] = True
    assert diff.any() and not (diff & ~inside).any()
    assert (h1 - h0) < 40 and (w1 - w0) < 40  # zoomed: far smaller than the 96 x 96 slice


def test_zoom_box_margin_minimum_size_and_clipping():
    ref = np.zeros((50, 50), np.uint8)
    pred = ref.copy()
    ref[0:2, 30:32] = 3
    pred[1:3, 31:33] = 3
    h0, h1, w0, w1 = zoom_box(ref, pred, 3, (1.0, 2.0))
    assert h0 == 0 and (h1 - h0) * 1.0 >= ov_mod.MIN_BOX_MM  # slid inside at the border, same size
    assert (w1 - w0) * 2.0 >= ov_mod.MIN_BOX_MM
    assert w0 <= 30 and w1 >= 33
    assert zoom_box(np.zeros((5, 7), np.uint8), np.zeros((5, 7), np.uint8), 1, (1, 1)) == (0, 5, 0, 7)


def test_pngs_decode_to_the_expected_sizes():
    pred, ref = _liver_and_lesion()
    image = np.where(ref > 0, 100.0, -1000.0).astype(np.float32)
    ov = worst_slice(pred, ref, (1.0, 1.0, 3.0), image=image, label=2)
    assert ov.window == ov_mod.CT_WINDOW_HU
    full, inset = render_overlay_pngs(ov)
    assert full[:8] == b"\x89PNG\r\n\x1a\n"
    a, b = _decode(full), _decode(inset)
    assert a.shape == (*display_shape((96, 96), (1.0, 1.0), fig_mod.FULL_LONG_SIDE), 3) == (384, 384, 3)
    h0, h1, w0, w1 = ov.box
    assert b.shape[:2] == display_shape((h1 - h0, w1 - w0), (1.0, 1.0), fig_mod.INSET_LONG_SIDE)
    assert max(b.shape[:2]) == fig_mod.INSET_LONG_SIDE
    colours = {tuple(c) for c in b.reshape(-1, 3)}
    assert fig_mod.REF_RGB in colours and fig_mod.PRED_RGB in colours and fig_mod.BOX_RGB in colours
    # the disagreement is filled: yellowish pixels (red and green high, blue low) in the inset
    assert ((b[..., 0] > 150) & (b[..., 1] > 120) & (b[..., 2] < 80)).sum() > 100


def test_coronal_view_of_thick_slices_keeps_physical_aspect():
    """0.7 x 0.7 x 5 mm: a coronal slice (voxel axes 0 and 2) is 7x taller per voxel than wide."""
    shape = (100, 100, 20)  # 70 mm x 70 mm x 100 mm
    ref = np.zeros(shape, np.uint8)
    ref[30:70, 30:70, 5:15] = 1
    pred = ref.copy()
    pred[30:40, 50, 5:15] = 0
    ov = worst_slice(pred, ref, (0.7, 0.7, 5.0), axis=1)
    assert ov.axis == 1 and ov.spacing_mm == (0.7, 5.0) and ov.ref.shape == (100, 20)
    full, inset = render_overlay_pngs(ov)
    h, w = _decode(full).shape[:2]
    assert h / w == pytest.approx(100.0 / 70.0, rel=0.02)  # physical: 100 mm tall, 70 mm wide
    bh, bw = _decode(inset).shape[:2]
    h0, h1, w0, w1 = ov.box
    assert bh / bw == pytest.approx(((w1 - w0) * 5.0) / ((h1 - h0) * 0.7), rel=0.03)


def test_display_window_ct_and_mr():
    rng = np.random.default_rng(0)
    ct = np.concatenate([np.full(500, -1000.0), rng.normal(50, 30, 500)])
    assert display_window(ct) == ov_mod.CT_WINDOW_HU
    assert display_window(np.abs(ct), modality="CT") == ov_mod.CT_WINDOW_HU
    mr = np.concatenate([np.zeros(5000), rng.normal(400, 50, 5000)])
    lo, hi = display_window(mr)
    assert 200 < lo < 400 < hi < 600  # the tissue's range, not the zero background


def test_to_ras_reorders_lps_and_permuted_axes():
    a = np.arange(24).reshape(2, 3, 4)
    affine = np.array([[0, 0, -2.0, 0], [-1.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])
    out, spacing = to_ras(a, affine)
    # new axis 0 (R) is old axis 2 reversed, 1 (A) old axis 0 reversed, 2 (S) old axis 1
    assert out.shape == (4, 2, 3) and spacing == (2.0, 1.0, 3.0)
    assert out[0, 0, 0] == a[1, 0, 3] and out[3, 1, 2] == a[0, 2, 0]


def test_worst_label_ties_go_to_the_smaller_structure_and_both_empty_is_skipped():
    rows = [{"label": 1, "status": "missed", "dice": 0.0, "ref_volume_ml": 900.0},
            {"label": 3, "status": "missed", "dice": 0.0, "ref_volume_ml": 5.0},
            {"label": 2, "status": "both_empty", "dice": float("nan"), "ref_volume_ml": 0.0}]
    assert worst_label(rows) == 3
    assert worst_label(rows[2:]) is None


def test_a_stray_false_positive_far_away_does_not_widen_the_zoom():
    ref = np.zeros((120, 120), np.uint8)
    ref[50:58, 50:58] = 3  # an 8 mm lesion
    pred = ref.copy()
    pred[50:58, 56:60] = 3  # overlaps and spills over: part of the zoomed structure
    pred[5:7, 110:113] = 3  # a stray piece 60 mm away
    pred[70:72, 50:52] = 3  # a piece 12 voxels below, beyond NEAR_MM: also stray
    ov = worst_slice(pred, ref, (1.0, 1.0), label=3)
    h0, h1, w0, w1 = ov.box
    assert h0 <= 50 and h1 >= 58 and w0 <= 50 and w1 >= 60  # the lesion and its spill
    assert (h1 - h0) <= 30 and (w1 - w0) <= 30  # not stretched to the stray pieces
    assert ov.n_outside == 6 + 4 and ov.n_disagree == 8 * 2 + 6 + 4
    near = pred.copy()
    near[60:62, 50:52] = 3  # 2 voxels below the lesion: within NEAR_MM, inside the box
    box = worst_slice(near, ref, (1.0, 1.0), label=3).box
    assert box[1] >= 62
