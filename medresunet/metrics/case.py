"""Per-case, per-label segmentation metrics (pure: no file IO, no printing).

Definitions equal MONAI's (``compute_dice``, ``compute_hausdorff_distance`` with and without
``percentile=95``, ``compute_average_surface_distance(symmetric=True)``,
``compute_surface_dice(use_subvoxels=False)``), computed on each label's bounding box;
see :mod:`medresunet.metrics.surface`.

Status rules (DESIGN.md section 4):

- ``ok``: both masks non-empty; every metric computed.
- ``both_empty``: the label is in neither; Dice, IoU, distances and NSD NaN, volumes 0.
- ``missed``: in the reference only; Dice 0, IoU 0, NSD 0, HD/HD95/ASSD NaN (or the image
  diagonal in mm with ``empty_distance="diagonal"``).
- ``false_positive``: in the prediction only; as ``missed``.

NSD of a missed / false-positive label is 0, as MONAI's ``compute_surface_dice`` gives
(no edge voxel lies within tolerance of an empty surface).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from medresunet.metrics.overlap import dice_score
from medresunet.metrics.surface import label_boxes, surface_distances, union_box

STATUSES = ("ok", "both_empty", "missed", "false_positive")
METRICS = ("dice", "iou", "hd_mm", "hd95_mm", "assd_mm", "nsd", "ref_volume_ml", "pred_volume_ml")
EMPTY_DISTANCE_CHOICES = ("nan", "diagonal")


def _as_label_array(array: np.ndarray, name: str) -> np.ndarray:
    """An integer view (or, for float input holding integers, an integer copy) of a label volume."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.view(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array, equal_nan=False):
            raise ValueError(f"{name}: label volume holds non-integer values; expected integer labels")
        return rounded.astype(np.int32)
    raise ValueError(f"{name}: label volume of dtype {array.dtype}; expected integers")


def image_diagonal_mm(shape: Sequence[int], spacing_mm: Sequence[float]) -> float:
    """The diagonal of the image extent in mm: ``sqrt(sum((n_i * s_i)^2))``."""
    return float(math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing_mm, strict=True))))


def _row(value: int, name: str, status: str, **metrics: float) -> dict:
    row = {"label": int(value), "label_name": name, "status": status}
    row.update({m: float(metrics.get(m, float("nan"))) for m in METRICS})
    return row


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float],
                 labels: Mapping[str, int], nsd_tolerance_mm: float = 2.0,
                 empty_distance: str = "nan") -> list[dict]:
    """Metrics of one case, one row per foreground label.

    Args:
        pred: predicted label volume ``(*spatial)`` (2D or 3D), integer values, on the
            reference's grid.
        ref: reference label volume, same shape.
        spacing_mm: voxel size per array axis in mm (the reference affine's column norms).
        labels: name -> label value; value 0 (background) is skipped.
        nsd_tolerance_mm: NSD tolerance in mm.
        empty_distance: ``"nan"`` or ``"diagonal"``: HD/HD95/ASSD of a missed or
            false-positive label (the image diagonal in mm is the challenge convention).

    Returns:
        One dict per foreground label, in the order of ``labels``: ``label, label_name,
        status, dice, iou, hd_mm, hd95_mm, assd_mm, nsd, ref_volume_ml, pred_volume_ml``
        (floats; NaN where undefined). The caller adds ``case_id``.

    Raises:
        ValueError: shapes differ, spacing has the wrong length, bad options.
    """
    pred = _as_label_array(pred, "prediction")
    ref = _as_label_array(ref, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values; the volume has {ref.ndim} axes")
    if empty_distance not in EMPTY_DISTANCE_CHOICES:
        raise ValueError(f"empty_distance must be one of {EMPTY_DISTANCE_CHOICES}, got {empty_distance!r}")
    if not (nsd_tolerance_mm >= 0 and math.isfinite(nsd_tolerance_mm)):
        raise ValueError(f"nsd_tolerance_mm must be finite and >= 0, got {nsd_tolerance_mm}")

    fg = [(str(name), int(v)) for name, v in labels.items() if int(v) > 0]
    max_label = max((v for _, v in fg), default=0)
    pred_boxes = label_boxes(pred, max_label)
    ref_boxes = label_boxes(ref, max_label)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    empty = image_diagonal_mm(ref.shape, spacing) if empty_distance == "diagonal" else float("nan")

    rows = []
    for name, value in fg:
        box = union_box(pred_boxes[value - 1], ref_boxes[value - 1], ref.shape, margin=1)
        if box is None:
            rows.append(_row(value, name, "both_empty", ref_volume_ml=0.0, pred_volume_ml=0.0))
        else:
            rows.append(_label_row(pred[box] == value, ref[box] == value, (value, name), spacing,
                                   voxel_ml, empty, nsd_tolerance_mm))
    return rows


def _label_row(p: np.ndarray, r: np.ndarray, label: tuple[int, str], spacing: tuple[float, ...],
               voxel_ml: float, empty: float, nsd_tolerance_mm: float) -> dict:
    """The row of one label from its masks ``p`` (prediction) and ``r`` (reference), not both empty."""
    value, name = label
    n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    vols = {"ref_volume_ml": n_r * voxel_ml, "pred_volume_ml": n_p * voxel_ml}
    if n_r == 0 or n_p == 0:
        status = "missed" if n_p == 0 else "false_positive"
        return _row(value, name, status, dice=0.0, iou=0.0, hd_mm=empty, hd95_mm=empty,
                    assd_mm=empty, nsd=0.0, **vols)
    inter = int(np.count_nonzero(p & r))
    dist = surface_distances(p, r, spacing)
    return _row(value, name, "ok", dice=dice_score(inter, n_p, n_r), iou=inter / (n_p + n_r - inter),
                hd_mm=dist.hausdorff(None), hd95_mm=dist.hausdorff(95.0), assd_mm=dist.assd(),
                nsd=dist.nsd(nsd_tolerance_mm), **vols)
