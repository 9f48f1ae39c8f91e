"""The affines the geometry tests use, a NIfTI writer with scale factors, and the phantoms.

Shared by the test modules; written with non-identity, anisotropic affines so that a
transposed axis or a dropped sign cannot pass unnoticed. The phantoms with known answers
(:func:`sphere_phantom`, :func:`ellipsoid`) are the library's (:mod:`medresunet.data.phantoms`).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medresunet.data.phantoms import ellipsoid, rotation, sphere_phantom  # the one phantom module

__all__ = ["ellipsoid", "make_affine", "rotation", "sphere_phantom", "write_nifti"]


def make_affine(kind: str = "ras", spacing=(1.0, 1.0, 1.0), origin=(-20.0, 15.0, 7.5)) -> np.ndarray:
    """A 4x4 voxel -> RAS mm affine.

    kind: ``ras`` (axes along R, A, S), ``lps`` (axes along L, P, S), ``oblique``
    (right-handed rotation), ``oblique_lh`` (left-handed: a rotation with a flipped axis),
    ``anisotropic`` (RAS with the given spacing, default 1x1x3 mm).
    """
    spacing = np.asarray(spacing, dtype=float)
    if kind == "ras":
        rot = np.eye(3)
    elif kind == "lps":
        rot = np.diag([-1.0, -1.0, 1.0])
    elif kind == "oblique":
        rot = rotation(2, 20.0) @ rotation(0, 10.0)
    elif kind == "oblique_lh":
        rot = rotation(2, -25.0) @ rotation(1, 12.0) @ np.diag([1.0, -1.0, 1.0])
    elif kind == "anisotropic":
        rot = np.eye(3)
        if np.allclose(spacing, 1.0):
            spacing = np.array([1.0, 1.0, 3.0])
    else:
        raise ValueError(f"unknown affine kind {kind!r}")
    affine = np.eye(4)
    affine[:3, :3] = rot * spacing[None, :]
    affine[:3, 3] = origin
    return affine


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray, dtype=None,
                slope: float | None = None, inter: float | None = None) -> Path:
    """Write ``array`` as NIfTI-1 with ``affine`` as both sform and qform (code 1).

    With ``slope``/``inter`` the data are stored as ``(array - inter) / slope`` in
    ``dtype`` (e.g. int16) and the scale factors go in the header.
    """
    path = Path(path)
    data = np.asarray(array)
    if slope is not None:
        inter = 0.0 if inter is None else inter
        data = np.round((data - inter) / slope)
    if dtype is not None:
        data = data.astype(dtype)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path
