"""Write segmentations (and probabilities) in the input scan's own geometry, atomically.

The output is NIfTI (``.nii.gz`` or ``.nii``) with exactly the input's shape and voxel ->
RAS affine. For NIfTI input the qform/sform matrices and codes of the input are kept; for
DICOM/NRRD/MHA input the series' RAS affine goes in both sform and qform with code 1
(scanner). A sheared affine (a gantry-tilted CT) cannot be a qform: then the qform gets
code 0 and the sform alone carries the full affine, so that no viewer reads a qform that
silently drops the shear. Files appear under their final name only when complete
(:func:`medresunet.io.atomic.atomic_path`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medresunet.io.atomic import atomic_path
from medresunet.io.geometry import Geometry, has_shear


def _header(geometry: Geometry, dtype, shape: tuple[int, ...]):
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_xyzt_units("mm", "sec")
    if geometry.source == "nifti":
        qform = geometry.qform if geometry.qform is not None else geometry.affine
        sform = geometry.sform if geometry.sform is not None else geometry.affine
        hdr.set_qform(qform, code=geometry.qform_code)
        hdr.set_sform(sform, code=geometry.sform_code)
    else:
        hdr.set_qform(geometry.affine, code=1)
        hdr.set_sform(geometry.affine, code=1)
    if has_shear(geometry.affine):
        hdr.set_qform(None, code=0)  # a quaternion would drop the shear
        sform, scode = hdr.get_sform(coded=True)
        if not scode or not np.allclose(sform, geometry.affine, atol=1e-4):
            hdr.set_sform(geometry.affine, code=1)
    return hdr


def _save(data: np.ndarray, geometry: Geometry, path: str | os.PathLike[str]) -> Path:
    import nibabel as nib

    path = Path(path)
    if not path.name.endswith((".nii.gz", ".nii")):
        raise ValueError(f"{path}: output must be NIfTI (.nii.gz or .nii)")
    img = nib.Nifti1Image(data, None, header=_header(geometry, data.dtype, data.shape))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint8 for labels 0..255, uint16 up to 65535.

    Raises:
        ValueError: negative, non-integer or too large labels.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.dtype(np.uint8)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise ValueError("labels must be integers, got non-integer floats")
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    lo, hi = labels.min(), labels.max()
    if lo < 0:
        raise ValueError(f"labels must be >= 0, got minimum {lo}")
    if hi <= 255:
        return np.dtype(np.uint8)
    if hi <= 65535:
        return np.dtype(np.uint16)
    raise ValueError(f"labels must be <= 65535, got maximum {hi}")


def write_segmentation(labels: np.ndarray, geometry: Geometry,
                       path: str | os.PathLike[str]) -> Path:
    """Write a label volume in the scan's geometry.

    Args:
        labels: integer labels, shape ``geometry.shape`` (file voxel order).
        geometry: the input scan's geometry (from :func:`read_geometry`/:func:`read_volume`).
        path: output ``.nii.gz`` (or ``.nii``); parent folders are created.

    Returns:
        The written path. Stored as uint8 (uint16 when a label exceeds 255).

    Raises:
        ValueError: shape mismatch or labels that are not non-negative integers.
    """
    labels = np.asarray(labels)
    if tuple(labels.shape) != tuple(geometry.shape):
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match the scan's "
                         f"shape {geometry.shape}")
    data = np.asarray(labels, dtype=label_dtype(labels))
    return _save(data, geometry, path)


def write_probabilities(probs: np.ndarray, geometry: Geometry,
                        path: str | os.PathLike[str]) -> Path:
    """Write per-class probabilities ``(C, *geometry.shape)`` as a 4D NIfTI ``(*shape3, C)``.

    The class axis is the fourth NIfTI dim (a 2D scan becomes ``(X, Y, 1, C)``). Stored as
    float32: NIfTI-1 has no float16 type.

    Raises:
        ValueError: shape mismatch.
    """
    probs = np.asarray(probs)
    if probs.ndim != geometry.ndim + 1 or tuple(probs.shape[1:]) != geometry.shape:
        raise ValueError(f"probabilities of shape {tuple(probs.shape)}; expected "
                         f"(C, {', '.join(map(str, geometry.shape))})")
    data = np.moveaxis(probs.astype(np.float32, copy=False), 0, -1)
    if geometry.ndim == 2:
        data = data[:, :, None, :]
    return _save(np.asarray(data), geometry, path)
