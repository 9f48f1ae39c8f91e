"""Overlay slices for the HTML report: the slice of worst disagreement of each case.

Extraction (numpy only) happens where the volumes are in memory (the evaluation worker);
rendering (optional matplotlib) happens in :mod:`medresunet.metrics.report`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OverlaySlice:
    """One 2D slice of a case for display.

    Attributes:
        axis: the voxel axis sliced through (``-1`` for a 2D case).
        index: the slice index along ``axis``.
        ref: reference labels ``(H, W)`` of the slice.
        pred: predicted labels ``(H, W)``.
        image: scan intensities ``(H, W)`` (float32) or None.
        spacing_mm: in-plane voxel size ``(dy, dx)`` matching ``(H, W)``, for the aspect ratio.
        n_disagree: number of voxels where prediction and reference differ in this slice.
    """

    axis: int
    index: int
    ref: np.ndarray
    pred: np.ndarray
    image: np.ndarray | None
    spacing_mm: tuple[float, float]
    n_disagree: int


def worst_slice(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float],
                image: np.ndarray | None = None) -> OverlaySlice:
    """The slice where prediction and reference disagree most.

    For 3D the slice axis is the one with the largest spacing (the last on ties, the usual
    axial axis). Without disagreement: the slice with most reference foreground, else the
    middle slice.

    Args:
        pred: predicted labels ``(*spatial)``.
        ref: reference labels, same shape.
        spacing_mm: voxel size per axis, mm.
        image: optional scan ``(*spatial)`` on the same grid.
    """
    spacing = [float(s) for s in spacing_mm]
    if ref.ndim == 2:
        n = int(np.count_nonzero(pred != ref))
        img = None if image is None else np.asarray(image, np.float32)
        return OverlaySlice(-1, 0, np.asarray(ref), np.asarray(pred), img, (spacing[0], spacing[1]), n)
    axis = max(range(ref.ndim), key=lambda a: (spacing[a], a))
    others = tuple(a for a in range(ref.ndim) if a != axis)
    per_slice = np.count_nonzero(pred != ref, axis=others)
    if per_slice.max(initial=0) > 0:
        index = int(np.argmax(per_slice))
    else:
        fg = np.count_nonzero(ref, axis=others)
        index = int(np.argmax(fg)) if fg.max(initial=0) > 0 else ref.shape[axis] // 2
    take = [slice(None)] * ref.ndim
    take[axis] = index
    take_t = tuple(take)
    img = None if image is None else np.array(image[take_t], dtype=np.float32)
    in_plane = (spacing[others[0]], spacing[others[1]])
    return OverlaySlice(axis, index, np.array(ref[take_t]), np.array(pred[take_t]), img, in_plane,
                        int(per_slice[index]))


def render_overlay_png(case_id: str, ov: OverlaySlice, label_names: dict[int, str]) -> bytes:
    """A PNG of the slice: the scan (or the reference labels) in grey, voxels of disagreement
    shaded yellow, reference outlines in green, prediction outlines in magenta. Needs matplotlib.

    The slice is shown with its first axis vertical (array rows) and the in-plane spacing
    as the aspect ratio.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.2), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    # display with voxel axis 0 horizontal (rows = axis 1), origin lower
    base = ov.image if ov.image is not None else (ov.ref > 0).astype(np.float32)
    ax.imshow(base.T, cmap="gray", origin="lower", aspect=ov.spacing_mm[1] / ov.spacing_mm[0],
              interpolation="nearest", vmin=float(np.percentile(base, 1)), vmax=float(np.percentile(base, 99)) + 1e-6)
    aspect = ov.spacing_mm[1] / ov.spacing_mm[0]
    diff = (ov.pred != ov.ref).T
    if diff.any():  # disagreement shaded, so failures show at a glance
        shade = np.zeros((*diff.shape, 4), np.float32)
        shade[diff] = (1.0, 0.85, 0.0, 0.45)
        ax.imshow(shade, origin="lower", aspect=aspect, interpolation="nearest")
    for values, colour, width in ((ov.ref, "#19e633", 2.2), (ov.pred, "#ff1acc", 1.1)):
        for v in np.unique(values):
            mask = (values == v).T
            if v == 0 or mask.all() or min(mask.shape) < 2:
                continue
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width)
    where = "2D" if ov.axis < 0 else f"axis {ov.axis}, slice {ov.index}"
    ax.set_title(f"{case_id}: {where}\n{ov.n_disagree} voxels differ (yellow); green ref, magenta pred", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return _png_bytes(fig)


def _png_bytes(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for embedding in HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_boxplots_png(values: dict[str, dict[str, list[float]]]) -> bytes:
    """Box plots of Dice and HD95 per label.

    Args:
        values: ``{"dice": {label_name: [finite values]}, "hd95_mm": {...}}``.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=90)
    for i, (metric, title) in enumerate((("dice", "Dice"), ("hd95_mm", "HD95 (mm)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        per = values.get(metric, {})
        names = list(per)
        data = [per[n] if per[n] else [np.nan] for n in names]
        if names:
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png_bytes(fig)
