"""Overlay slices for the HTML report: per case, the slice where its worst label disagrees most.

Extraction (numpy only) happens where the volumes are in memory (the evaluation worker):
:func:`worst_slice` picks the label, the slice, the display window and the zoom box.
Rendering is :mod:`medresunet.metrics.figures` (two PNGs per case, in physical aspect).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# CT abdomen soft-tissue window (level 40 HU, width 400 HU): liver, kidney and a hypodense
# lesion stay apart; air and bone saturate.
CT_WINDOW_HU = (-160.0, 240.0)
# a volume whose 0.5th percentile is below this is CT (air is -1000 HU; MR is >= 0)
CT_AIR_HU = -500.0
# the zoom box: the labels' bounding box grown by this fraction per side, at least MIN_BOX_MM
BOX_MARGIN = 0.3
MIN_BOX_MM = 24.0
MIN_MARGIN_VOXELS = 2
NEAR_MM = 10.0  # a predicted piece this close to the reference belongs to the zoomed structure


@dataclass(frozen=True)
class OverlaySlice:
    """One 2D slice of a case for display.

    Attributes:
        axis: the voxel axis sliced through (``-1`` for a 2D case).
        index: the slice index along ``axis``.
        ref: reference labels ``(H, W)`` of the slice (H: the first in-plane axis).
        pred: predicted labels ``(H, W)``.
        image: scan intensities ``(H, W)`` (float32) or None.
        spacing_mm: in-plane voxel size ``(dh, dw)`` matching ``(H, W)``, mm.
        n_disagree: voxels of the slice where the focused label's prediction and reference
            differ (all labels when ``label`` is None).
        label: the focused label value (the case's worst label), or None.
        window: display range of ``image`` (HU for CT), or None.
        box: the zoom box ``(h0, h1, w0, w1)``, half-open voxel ranges of the slice.
        n_outside: disagreeing voxels (as ``n_disagree``) outside the box: stray pieces.
    """

    axis: int
    index: int
    ref: np.ndarray
    pred: np.ndarray
    image: np.ndarray | None
    spacing_mm: tuple[float, float]
    n_disagree: int
    label: int | None = None
    window: tuple[float, float] | None = None
    box: tuple[int, int, int, int] | None = None
    n_outside: int = 0


def worst_label(rows: Iterable[Mapping]) -> int | None:
    """The label value of a case's lowest finite Dice (``both_empty`` rows skipped), or None.

    Ties go to the smaller reference volume (a missed lesion before a missed organ).
    """
    best: tuple[float, float, int] | None = None
    for r in rows:
        d, vol = r.get("dice"), r.get("ref_volume_ml")
        if r.get("status") == "both_empty" or not isinstance(d, (int, float)) or not np.isfinite(d):
            continue
        vol = float(vol) if isinstance(vol, (int, float)) and np.isfinite(vol) else np.inf
        key = (float(d), vol, int(r["label"]))
        best = key if best is None or key < best else best
    return None if best is None else best[2]


def display_window(image: np.ndarray, modality: str | None = None) -> tuple[float, float]:
    """The intensity range to show: the CT soft-tissue window for CT, else robust percentiles.

    Args:
        image: the scan ``(*spatial)``.
        modality: ``"CT"``, ``"MR"`` (any non-CT name) or None to tell from the values (CT
            when the 0.5th percentile is below -500, i.e. air in HU).

    Returns:
        ``(low, high)`` in the image's units; ``high > low``.
    """
    values = np.asarray(image, np.float32).ravel()
    if values.size > 1_000_000:  # percentiles of a strided sample: same window, a tenth of the time
        values = values[:: values.size // 1_000_000]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    is_ct = (modality.upper() == "CT") if modality else float(np.percentile(values, 0.5)) < CT_AIR_HU
    if is_ct:
        return CT_WINDOW_HU
    inside = values[values > values.min()]  # MR background is the minimum (0): leave it out
    lo, hi = np.percentile(inside if inside.size else values, (0.5, 99.5))
    return float(lo), float(max(hi, lo + 1e-6))


def _focus(ref_m: np.ndarray, pred_m: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """The structure to zoom on: the reference and the predicted pieces that touch it (or lie
    within :data:`NEAR_MM`); without reference, the largest predicted piece."""
    from scipy import ndimage

    pieces, n = ndimage.label(pred_m, structure=np.ones((3, 3)))
    if not ref_m.any():
        if n == 0:
            return pred_m
        sizes = np.bincount(pieces.ravel())[1:]
        return pieces == int(np.argmax(sizes)) + 1
    steps = max(1, min(64, int(np.ceil(NEAR_MM / min(float(x) for x in spacing_mm)))))
    near = ndimage.binary_dilation(ref_m, iterations=steps)
    keep = np.unique(pieces[near & pred_m])
    return ref_m | np.isin(pieces, keep[keep > 0])


def zoom_box(ref: np.ndarray, pred: np.ndarray, label: int | None,
             spacing_mm: Sequence[float]) -> tuple[int, int, int, int]:
    """The bounding box of the label's structure, with a margin, ``(h0, h1, w0, w1)``.

    The structure is the label's reference with every predicted piece of the label that
    touches it or lies within :data:`NEAR_MM` (:func:`_focus`): the box holds every voxel
    where they disagree. A stray predicted piece farther away stays outside (it is drawn
    on the whole slice and counted in :attr:`OverlaySlice.n_outside`), so that one false
    positive at the edge of the body does not turn the zoom into the whole slice.
    The box is grown by :data:`BOX_MARGIN` of its size per side (at least two voxels) and to
    at least :data:`MIN_BOX_MM` per axis; at the slice's border it slides inside (clipped only
    when the slice is smaller). Without the label in the slice: the box of all foreground;
    without foreground: the whole slice.
    """
    mask = np.zeros(ref.shape, bool)
    if label is not None:
        mask = _focus(ref == label, pred == label, spacing_mm)
    if not mask.any():
        mask = (ref > 0) | (pred > 0)
    if not mask.any():
        return 0, ref.shape[0], 0, ref.shape[1]
    out = []
    for ax in range(2):
        hits = np.flatnonzero(mask.any(axis=1 - ax))
        lo, hi = int(hits[0]), int(hits[-1]) + 1
        n = ref.shape[ax]
        grow = max(MIN_MARGIN_VOXELS, int(np.ceil(BOX_MARGIN * (hi - lo))))
        want = int(np.ceil(MIN_BOX_MM / float(spacing_mm[ax])))
        grow = max(grow, int(np.ceil((want - (hi - lo)) / 2)))
        lo, hi = lo - grow, hi + grow
        shift = max(0, -lo) - max(0, hi - n)  # at a border: slide the box inside, keep its size
        out += [max(0, lo + shift), min(n, hi + shift)]
    return out[0], out[1], out[2], out[3]


def worst_slice(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float],
                image: np.ndarray | None = None, label: int | None = None, axis: int | None = None,
                modality: str | None = None) -> OverlaySlice:
    """The slice where the focused label's prediction and reference disagree most.

    Without disagreement: the slice with most reference voxels of the label (any
    foreground when ``label`` is None), else the middle slice.

    Args:
        pred: predicted labels ``(*spatial)`` (2D or 3D).
        ref: reference labels, same shape.
        spacing_mm: voxel size per axis, mm.
        image: optional scan ``(*spatial)`` on the same grid.
        label: the label value to focus on (see :func:`worst_label`); None: all labels.
        axis: 3D only, the voxel axis to slice through; None: the axis of largest spacing
            (the last of those within 1%: the axial axis of a RAS volume).
        modality: for the display window (:func:`display_window`).
    """
    spacing = [float(s) for s in spacing_mm]
    window = None if image is None else display_window(image, modality)
    if label is None:
        diff, fg = pred != ref, ref > 0
    else:
        diff, fg = (pred == label) != (ref == label), ref == label
    if ref.ndim == 2:
        axis, index, take = -1, 0, (slice(None), slice(None))
        n = int(np.count_nonzero(diff))
        in_plane = (spacing[0], spacing[1])
    else:
        if axis is None:  # spacings within 1% are ties (an oblique grid's are not exact)
            axis = max(a for a in range(ref.ndim) if spacing[a] >= 0.99 * max(spacing))
        others = tuple(a for a in range(ref.ndim) if a != axis)
        per_slice = np.count_nonzero(diff, axis=others)
        if per_slice.max(initial=0) > 0:
            index = int(np.argmax(per_slice))
        else:
            per_fg = np.count_nonzero(fg, axis=others)
            index = int(np.argmax(per_fg)) if per_fg.max(initial=0) > 0 else ref.shape[axis] // 2
        take_l = [slice(None)] * ref.ndim
        take_l[axis] = index
        take = tuple(take_l)
        n = int(per_slice[index])
        in_plane = (spacing[others[0]], spacing[others[1]])
    r, p = np.array(ref[take]), np.array(pred[take])
    img = None if image is None else np.array(image[take], dtype=np.float32)
    box = zoom_box(r, p, label, in_plane)
    d = np.array(diff[take])
    outside = int(d.sum() - d[box[0]:box[1], box[2]:box[3]].sum())
    return OverlaySlice(axis, index, r, p, img, in_plane, n, label, window, box, outside)


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """The volume with its voxel axes permuted and flipped to the closest RAS+ order.

    Args:
        array: ``(*spatial)``, 2D or 3D, in file voxel order.
        affine: its voxel -> RAS mm matrix (``(ndim + 1)`` square or 4x4).

    Returns:
        ``(array in RAS+ voxel order, spacing per new axis in mm)``.
    """
    import nibabel as nib

    nd = array.ndim
    a = np.asarray(affine, float)
    lin = a[:nd, :nd] if a.shape[0] == nd + 1 else a[:3, :3][:nd, :nd]
    full = np.eye(nd + 1)
    full[:nd, :nd] = lin
    ornt = nib.orientations.io_orientation(full)
    out = nib.orientations.apply_orientation(array, ornt)
    spacing = np.sqrt((lin ** 2).sum(axis=0))
    order = np.argsort(ornt[:, 0])  # new axis k comes from old axis order[k]
    return np.ascontiguousarray(out), tuple(float(spacing[i]) for i in order)


def case_overlay(pred: np.ndarray, ref: np.ndarray, affine: np.ndarray, rows: Iterable[Mapping],
                 image: np.ndarray | None = None, modality: str | None = None) -> OverlaySlice:
    """The overlay of one evaluated case: volumes turned to RAS+ voxel order, then the
    :func:`worst_slice` of its :func:`worst_label`.

    Args:
        pred, ref: label volumes ``(*spatial)`` on the reference's grid (file voxel order).
        affine: the reference's voxel -> RAS mm matrix.
        rows: the case's metric rows (``label``, ``status``, ``dice``).
        image: the scan on the same grid, or None.
        modality: for the display window; None: told from the values.
    """
    ref_r, spacing = to_ras(ref, affine)
    pred_r, _ = to_ras(pred, affine)
    img_r = None if image is None else to_ras(image, affine)[0]
    return worst_slice(pred_r, ref_r, spacing, img_r, label=worst_label(rows), modality=modality)
