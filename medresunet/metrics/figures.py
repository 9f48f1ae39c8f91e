"""The report's pictures: overlay PNGs of an :class:`~medresunet.metrics.overlay.OverlaySlice`,
box plots, and matplotlib figures as PNG / data URIs.

An overlay is two PNGs: the whole slice and a zoomed inset of its box, both in the scan's
physical aspect ratio (each voxel stretched by its spacing, nearest neighbour: labels never
blur), composed in numpy and encoded with Pillow (a dependency of matplotlib, the ``report``
extra).

Display convention: a slice ``(A, B)`` of a volume in RAS+ voxel order is shown with axis
``A`` horizontal and ``B`` vertical, both reversed (radiological: the patient's right on the
left; anterior or superior at the top), so an axial slice looks as in a PACS viewer.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from medresunet.metrics.overlay import OverlaySlice

REF_RGB = (0, 230, 64)         # reference outline: green
PRED_RGB = (255, 40, 255)      # prediction outline: magenta
DIFF_RGBA = (255, 210, 0, 0.55)  # disagreement fill: yellow
BOX_RGB = (0, 200, 255)        # the zoomed area: cyan frame
COLOURS = {"reference": REF_RGB, "prediction": PRED_RGB, "disagreement": DIFF_RGBA[:3], "zoom": BOX_RGB}

FULL_LONG_SIDE = (320, 512)  # the whole slice: long side in pixels, at least / at most
INSET_LONG_SIDE = 320


def display_shape(shape: Sequence[int], spacing_mm: Sequence[float],
                  long_side: tuple[int, int] | int) -> tuple[int, int]:
    """Pixel size ``(height, width)`` of a slice ``(A, B)`` drawn in physical aspect.

    Axis ``A`` is horizontal, ``B`` vertical. ``long_side``: an exact pixel length of the
    longer side, or ``(min, max)``: one pixel per voxel along the finest axis, scaled by an
    integer (up) or fitted (down) into that range.
    """
    w_mm, h_mm = shape[0] * float(spacing_mm[0]), shape[1] * float(spacing_mm[1])
    if isinstance(long_side, int):
        px_mm = long_side / max(w_mm, h_mm)
    else:
        px_mm = 1.0 / min(float(s) for s in spacing_mm)
        longest = max(w_mm, h_mm) * px_mm
        if longest < long_side[0]:
            px_mm *= int(np.ceil(long_side[0] / longest))
        if max(w_mm, h_mm) * px_mm > long_side[1]:
            px_mm = long_side[1] / max(w_mm, h_mm)
    return max(1, round(h_mm * px_mm)), max(1, round(w_mm * px_mm))


def _nearest(a: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Slice ``(A, B)`` -> display ``(H, W)``: transposed, both axes reversed, nearest neighbour."""
    d = a.T[::-1, ::-1]
    rows = np.minimum((np.arange(out_hw[0]) + 0.5) * d.shape[0] / out_hw[0], d.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(out_hw[1]) + 0.5) * d.shape[1] / out_hw[1], d.shape[1] - 1).astype(int)
    return d[rows][:, cols]


def _edge(mask: np.ndarray, width: int, outer: bool, at_border: bool = False) -> np.ndarray:
    """The band of ``width`` pixels inside (or outside) the mask's border; ``at_border``:
    the image's own border counts as an edge (frames), else not (a label cut by a crop)."""
    from scipy import ndimage

    if outer:
        return ndimage.binary_dilation(mask, iterations=width) & ~mask
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0 if at_border else 1)


def _compose(ov: OverlaySlice, box: tuple[int, int, int, int] | None, out_hw: tuple[int, int],
             line: int, frame: tuple[int, int, int, int] | None) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 of the slice (or its ``box``), outlines ``line`` pixels wide."""
    sl = (slice(None), slice(None)) if box is None else (slice(box[0], box[1]), slice(box[2], box[3]))
    ref, pred = ov.ref[sl], ov.pred[sl]
    if ov.image is not None and ov.window is not None:
        lo, hi = ov.window
        grey = np.clip((ov.image[sl] - lo) / (hi - lo), 0.0, 1.0)
    else:  # no scan: the reference labels as a dim background
        grey = np.where(ref > 0, 0.35, 0.08)
    rgb = np.repeat(_nearest(grey.astype(np.float32), out_hw)[..., None], 3, axis=2)
    if ov.label is None:
        diff = pred != ref
    else:
        diff = (pred == ov.label) != (ref == ov.label)
    d = _nearest(diff, out_hw)
    a = DIFF_RGBA[3]
    rgb[d] = rgb[d] * (1 - a) + np.asarray(DIFF_RGBA[:3], np.float32) / 255.0 * a
    rgb = (rgb * 255).round().astype(np.uint8)
    for values, colour, outer in ((ref, REF_RGB, False), (pred, PRED_RGB, True)):
        up = _nearest(values, out_hw)
        for v in np.unique(values):
            if v == 0:
                continue
            focused = ov.label is None or v == ov.label  # the other labels: thinner lines
            rgb[_edge(up == v, line if focused else max(1, line - 1), outer)] = colour
    if frame is not None:  # the zoom box on the whole slice
        h0, h1, w0, w1 = frame
        m = np.zeros(ov.ref.shape, bool)
        m[h0:h1, w0:w1] = True
        rgb[_edge(_nearest(m, out_hw), line, outer=False, at_border=True)] = BOX_RGB
    if box is not None:
        rgb[_edge(np.ones(out_hw, bool), 2, outer=False, at_border=True)] = BOX_RGB
    return rgb


def render_overlay_pngs(ov: OverlaySlice) -> tuple[bytes, bytes]:
    """Two PNGs of the slice: ``(whole slice, zoomed inset)``, in physical aspect.

    The whole slice (long side 320-512 px, see :data:`FULL_LONG_SIDE`) shows the zoom box
    as a cyan frame; the inset shows the box at :data:`INSET_LONG_SIDE` px. On both: the
    scan in grey (CT soft-tissue window, or robust percentiles), the focused label's
    disagreement filled yellow, reference outlines green (inside the border), prediction
    outlines magenta (outside it): where they agree, the two lines run side by side.
    Needs Pillow (a dependency of matplotlib, the ``report`` extra).
    """
    box = ov.box or (0, ov.ref.shape[0], 0, ov.ref.shape[1])
    full_hw = display_shape(ov.ref.shape, ov.spacing_mm, FULL_LONG_SIDE)
    full = _compose(ov, None, full_hw, max(2, round(max(full_hw) / 200)), frame=box)
    inset_hw = display_shape((box[1] - box[0], box[3] - box[2]), ov.spacing_mm, INSET_LONG_SIDE)
    inset = _compose(ov, box, inset_hw, 3, frame=None)
    return _rgb_png(full), _rgb_png(inset)


def _rgb_png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="png", optimize=True)
    return buf.getvalue()


def figure_png(fig, tight: bool = True) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes (Agg canvas); ``tight``: cropped to its content
    (a second drawing pass), else the figure's own size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight" if tight else None)
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
    return figure_png(fig)
