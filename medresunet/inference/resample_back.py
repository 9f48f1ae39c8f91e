"""The one inverse of the preprocessing: probabilities on the preprocessed grid -> the scan's grid.

:func:`invert_to_scan` is the entry point: the slab-wise separable resampling below when the
recorded operations allow it (the fast path), else MONAI's ``Invertd``
(:func:`invert_with_monai`, the fallback: 2D scans, other operations, oblique maps).

The inference preprocessing (:func:`medresunet.data.transforms.preprocess_transforms`) is
reorientation, resampling (``Spacing``: linear, border padding) and an optional foreground
crop. Undone by ``monai.transforms.Invertd`` it materialises the probabilities of every
class on the full scan grid (for a 512x512x200 CT and 3 classes, 630 MB of float32) through
a generic resampler: about 10 s and the largest memory peak of the whole inference on two
CPU cores.

These three operations compose to one voxel-to-voxel map from the scan's grid to the
preprocessed grid whose matrix is a scaled signed permutation: each scan axis reads one
preprocessed axis, with a scale and an offset. Linear interpolation under such a map is
separable, so :func:`resample_to_scan` interpolates axis by axis (one small matrix product
per axis) one slab of scan slices at a time and takes the argmax per slab: the same
values as ``Invertd`` (to float rounding), a fraction of the time, and no full-grid
probability array unless the caller asks for it.

:func:`plan_from_image` reads the map from the preprocessed MetaTensor (its affine, the
scan's ``original_affine`` and ``spatial_shape``, and the recorded operations); it returns
``None`` for anything else (other operations, a non-axis-aligned map, 2D), and
:func:`invert_to_scan` falls back to ``Invertd``.

Conventions: voxel indices address voxel centres; out-of-grid positions take the value at
the nearest edge of the resampled grid (``Spacing``'s border padding), and the region a
foreground crop removed holds zero probability for every class (its argmax is label 0), as
``Invertd`` gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Scan slices (along the scan's first axis) resampled per slab; 512x200 slices of 3
#: classes in float32 are 1.2 MB per slice, so a slab of 16 stays near 20 MB.
SLAB = 16
_EXPECTED = ("Orientation", "SpatialResample")
_TOL = 1e-6


@dataclass(frozen=True)
class AxisMap:
    """Scan axis ``d`` reads preprocessed axis ``source`` at index ``scale * i + offset``."""

    source: int
    scale: float
    offset: float


@dataclass(frozen=True)
class ResamplePlan:
    """How the scan's grid reads the (uncropped) resampled grid.

    Attributes:
        axes: one :class:`AxisMap` per scan axis.
        scan_shape: the scan's spatial shape (voxels).
        grid_shape: the resampled grid before the foreground crop (voxels).
        crop_start: first voxel of the crop box in the resampled grid, per axis.
    """

    axes: tuple[AxisMap, ...]
    scan_shape: tuple[int, ...]
    grid_shape: tuple[int, ...]
    crop_start: tuple[int, ...]


def axis_maps(scan_to_grid: np.ndarray, tol: float = _TOL) -> tuple[AxisMap, ...] | None:
    """Per-axis maps of a ``(n+1, n+1)`` voxel-to-voxel affine, or None if it mixes axes."""
    m = np.asarray(scan_to_grid, dtype=np.float64)
    n = m.shape[0] - 1
    lin = m[:n, :n]
    scale = np.abs(lin).max()
    if not np.isfinite(m).all() or scale == 0:
        return None
    maps = []
    used = set()
    for d in range(n):
        col = np.abs(lin[:, d])
        src = int(np.argmax(col))
        if src in used or (np.delete(col, src) > tol * scale).any():
            return None
        used.add(src)
        maps.append(AxisMap(src, float(lin[src, d]), float(m[src, n])))
    return tuple(maps)


def plan_from_image(image: Any) -> ResamplePlan | None:
    """The plan for a preprocessed MetaTensor ``(C, X, Y, Z)``, or None when not applicable."""
    meta = getattr(image, "meta", None)
    ops = list(getattr(image, "applied_operations", None) or [])
    if meta is None or image.ndim != 4 or "original_affine" not in meta or "spatial_shape" not in meta:
        return None
    names = [op.get("class") for op in ops]
    crop_start = [0, 0, 0]
    shape = [int(s) for s in image.shape[1:]]
    grid_shape = list(shape)
    if tuple(names[:2]) != _EXPECTED or len(names) > 3 or (len(names) == 3 and names[2] != "CropForeground"):
        return None
    extra = ops[1].get("extra_info") or {}
    if extra.get("mode") != "bilinear" or extra.get("padding_mode") != "border":
        return None
    if len(names) == 3:
        info = ops[2].get("extra_info") or {}
        cropped = [int(c) for c in info.get("cropped", [])]
        padded = (info.get("pad_info") or {}).get("extra_info", {}).get("padded", ())
        if len(cropped) != 6 or any(int(p) for pair in padded for p in pair):
            return None
        crop_start = cropped[0::2]
        grid_shape = [int(s) for s in ops[2].get("orig_size", ())]
        if len(grid_shape) != 3 or [g - b - a for g, b, a in
                                     zip(grid_shape, cropped[0::2], cropped[1::2], strict=True)] != shape:
            return None
    grid_affine = np.asarray(image.affine, dtype=np.float64).copy()
    grid_affine[:3, 3] -= grid_affine[:3, :3] @ np.asarray(crop_start, dtype=np.float64)  # uncropped origin
    original = np.asarray(meta["original_affine"], dtype=np.float64)
    scan_shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).ravel())
    if original.shape != (4, 4) or len(scan_shape) != 3:
        return None
    maps = axis_maps(np.linalg.inv(grid_affine) @ original)
    if maps is None:
        return None
    return ResamplePlan(maps, scan_shape, tuple(grid_shape), tuple(crop_start))


def argmax_labels(scores: torch.Tensor) -> torch.Tensor:
    """``argmax`` over the class axis of ``(K, *spatial)`` scores, on their device.

    uint8 up to 256 classes, else int32. Ties go to the lowest class, as ``torch.argmax``. A
    running maximum over the K class volumes: ``torch.argmax(dim=0)`` reduces across the
    slowest axis and is about 15x slower on the CPU (0.13 s against 9 ms for 3 x 16 x 512 x 200).
    """
    k = int(scores.shape[0])
    dtype = torch.uint8 if k <= 256 else torch.int32
    best = scores[0].clone()
    index = torch.zeros(scores.shape[1:], dtype=dtype, device=scores.device)
    for c in range(1, k):
        index.masked_fill_(scores[c] > best, c)
        torch.maximum(best, scores[c], out=best)
    return index


def _labels_array(index: torch.Tensor) -> np.ndarray:
    """Labels on the host: uint8, or uint16 above 256 classes (one transfer)."""
    out = index.cpu().numpy()
    return out if out.dtype == np.uint8 else out.astype(np.uint16)


def argmax_classes(scores: torch.Tensor) -> np.ndarray:
    """:func:`argmax_labels` as a host array: uint8 (uint16 above 256 classes)."""
    return _labels_array(argmax_labels(scores))


def interpolation_matrix(m: AxisMap, n_out: int, n_src: int) -> torch.Tensor:
    """``(n_out, n_src)`` float32 weights of linear interpolation along one axis (border clamp).

    Row ``i`` holds ``1 - w`` at the lower and ``w`` at the upper neighbour of position
    ``scale * i + offset``; applying it is one matrix product, which runs near the CPU's
    matmul peak where a gather of neighbours along an axis does not.
    """
    pos = m.scale * np.arange(n_out, dtype=np.float64) + m.offset
    near = np.round(pos)
    pos = np.where(np.abs(pos - near) < 1e-6, near, pos)  # affine round-off: 15.999999999999998 is 16
    pos = np.clip(pos, 0.0, n_src - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_src - 1)
    w = pos - lo
    mat = np.zeros((n_out, n_src), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(mat, (rows, lo), 1.0 - w)
    np.add.at(mat, (rows, hi), w)
    return torch.from_numpy(mat.astype(np.float32))


def _grid_in_scan_order(probs: torch.Tensor, plan: ResamplePlan) -> torch.Tensor:
    """The uncropped grid, axes in scan order (axis ``d + 1`` is the one scan axis ``d`` reads).

    One copy of ``probs`` (its dtype and device): the crop's complement holds zero
    probability for every class (label 0), as ``Invertd`` pads.
    """
    perm = tuple(m.source for m in plan.axes)
    grid = torch.zeros((int(probs.shape[0]), *(plan.grid_shape[s] for s in perm)), dtype=probs.dtype,
                       device=probs.device)
    region = tuple(slice(plan.crop_start[s], plan.crop_start[s] + int(probs.shape[1 + s])) for s in perm)
    grid[(slice(None), *region)] = probs.permute(0, *(1 + s for s in perm))
    return grid


def resample_to_scan(probs: torch.Tensor, plan: ResamplePlan, return_probabilities: bool = False,
                     slab: int = SLAB) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (argmax) and optionally probabilities of ``probs`` on the scan's grid.

    Runs where ``probs`` is (a GPU too: one small matrix product per slab and axis, the
    argmax per slab there, and the labels cross to the host once, as uint8); a float16
    ``probs`` stays float16 until each slab is interpolated in float32.

    Args:
        probs: ``(K, *cropped grid)`` float probabilities on the preprocessed grid, any device.
        plan: from :func:`plan_from_image` for the image these probabilities belong to.
        return_probabilities: also return ``(K, *scan_shape)`` float32 probabilities (host).
        slab: scan slices (first axis) resampled at a time.

    Returns:
        ``(labels, probabilities or None)``; labels uint8 (uint16 above 256 classes).
    """
    probs = torch.as_tensor(probs)
    if not probs.is_floating_point():
        probs = probs.float()
    device = probs.device
    k = int(probs.shape[0])
    grid = _grid_in_scan_order(probs, plan)
    (nx, ny, nz), (_, sy, sz) = plan.scan_shape, tuple(int(s) for s in grid.shape[1:])
    wx, wy, wz = (interpolation_matrix(m, n, int(grid.shape[1 + d])) for d, (m, n) in
                  enumerate(zip(plan.axes, plan.scan_shape, strict=True)))
    wx_dev, wy, wz_t = wx.to(device), wy.to(device), wz.t().contiguous().to(device)
    z_first = sy * sz * nz + ny * sy * nz < ny * sy * sz + ny * sz * nz  # fewer multiply-adds
    labels = torch.empty(plan.scan_shape, dtype=torch.uint8 if k <= 256 else torch.int32, device=device)
    full = np.empty((k, *plan.scan_shape), dtype=np.float32) if return_probabilities else None
    for start in range(0, nx, slab):
        stop = min(start + slab, nx)
        used = torch.nonzero(wx[start:stop].abs().sum(0)).flatten()  # on the host: no sync
        c0, c1 = int(used[0]), int(used[-1]) + 1  # the grid slices this slab reads
        block = grid[:, c0:c1].float().reshape(k, c1 - c0, sy * sz)
        part = wx_dev[start:stop, c0:c1] @ block  # (K, n, sy*sz)
        part = part.reshape(k * (stop - start), sy, sz)
        if z_first:
            part = wy @ (part @ wz_t)
        else:
            part = (wy @ part) @ wz_t
        part = part.reshape(k, stop - start, ny, nz)
        labels[start:stop] = argmax_labels(part)
        if full is not None:
            full[:, start:stop] = part.cpu().numpy()
    return _labels_array(labels), full


def invert_with_monai(transform: Any, image: Any, pred: torch.Tensor, nearest: bool = False) -> Any:
    """Map ``pred`` ``(K, *spatial)`` on the preprocessed grid back to the scan's grid with ``Invertd``.

    A plain tensor ``pred`` is wrapped in a MetaTensor carrying the image's metadata first
    (``Invertd`` skips plain tensors with only a warning).

    Args:
        transform: the very ``Compose`` (``data.transforms.inference_transforms``) that made ``image``.
        image: the preprocessed image MetaTensor ``(C, *spatial)`` (its
            ``applied_operations`` are read, not consumed).
        pred: logits, probabilities or one-hot ``(K, *spatial)`` on the preprocessed grid.
        nearest: nearest-neighbour resampling (for label maps); else each transform's
            own mode (bilinear for the image), right for probabilities.

    Returns:
        MetaTensor ``(K, *original_spatial)`` with the scan's affine.

    Raises:
        ValueError: ``pred`` is not on the image's grid.
    """
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    if tuple(pred.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(f"prediction spatial shape {tuple(pred.shape[1:])} differs from the "
                         f"preprocessed image {tuple(image.shape[1:])}")
    if not isinstance(pred, MetaTensor):
        pred = MetaTensor(pred, meta=dict(image.meta))
    inverter = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=nearest,
                       to_tensor=True)
    return inverter({"image": image, "pred": pred})["pred"]


def invert_to_scan(probs: torch.Tensor, image: Any, transform: Any, scan_shape: tuple[int, ...],
                   return_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probabilities) on the scan's grid from probabilities on the preprocessed grid.

    Args:
        probs: ``(K, *spatial)`` float probabilities on the preprocessed grid, any device (the
            slab-wise path runs there; ``Invertd`` on the host).
        image: the preprocessed image MetaTensor ``(C, *spatial)`` they belong to.
        transform: the ``Compose`` that made ``image`` (for the ``Invertd`` fallback).
        scan_shape: the scan's spatial shape (voxels), from the reader's geometry.
        return_probabilities: also return ``(K, *scan_shape)`` float32 probabilities.

    Returns:
        ``(labels, probabilities or None)``; labels uint8 (uint16 above 256 classes).

    Raises:
        ValueError: the inverted prediction does not have the scan's shape.
    """
    plan = plan_from_image(image)
    if plan is not None and plan.scan_shape == tuple(scan_shape):  # the usual 3D case: slab by slab
        return resample_to_scan(probs, plan, return_probabilities)
    out = torch.as_tensor(invert_with_monai(transform, image, probs.cpu().float())).float()
    shape = tuple(scan_shape)
    if tuple(out.shape[1:]) != shape:
        if int(np.prod(out.shape[1:])) == int(np.prod(shape)) and \
                [s for s in out.shape[1:] if s != 1] == [s for s in shape if s != 1]:
            out = out.reshape(out.shape[0], *shape)  # a 2D scan: drop the singleton axis
        else:
            raise ValueError(f"the inverted prediction has shape {tuple(out.shape[1:])}, the scan "
                             f"{shape}; the preprocessing could not be inverted")
    return argmax_classes(out), (out.numpy() if return_probabilities else None)
