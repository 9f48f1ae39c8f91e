"""Write a volume as a DICOM series (one file per slice) with SimpleITK.

Used by the phantom generator (a test case delivered as a DICOM series, like a scanner
would) and by tests of the DICOM readers. The geometry is exact: ImagePositionPatient per
slice, ImageOrientationPatient, PixelSpacing and SliceThickness come from the RAS affine
(converted to DICOM's LPS by negating the first two world axes), so reading the series back
gives the same voxels at the same world positions.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root
CT_INTERCEPT = -1024.0
_LPS = np.diag([-1.0, -1.0, 1.0])


def make_uid(*entropy: object) -> str:
    """A DICOM UID, deterministic for the given entropy values (e.g. a seed and a role)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(e) for e in entropy]))


def _ds(value: float) -> str:
    """Format a number as a DICOM decimal string (at most 16 characters)."""
    value = 0.0 if abs(value) < 1e-12 else float(value)
    for digits in range(12, 3, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4g}"


def right_handed(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse the third voxel axis of a left-handed grid, keeping every voxel's world position.

    A DICOM series stacks slices along the normal of its ImageOrientationPatient (row x column
    direction), which makes the grid right-handed. Args: ``array`` (I, J, K), ``affine`` 4x4
    voxel -> RAS mm. Returns the (possibly flipped) array and its affine.
    """
    affine = np.asarray(affine, dtype=float)
    if np.linalg.det(affine[:3, :3]) >= 0:
        return array, affine
    flip = np.eye(4)
    flip[2, 2] = -1.0
    flip[2, 3] = array.shape[2] - 1
    return array[:, :, ::-1], affine @ flip


def write_dicom_series(
    array: np.ndarray,
    affine: np.ndarray,
    out_dir: str | Path,
    *,
    modality: str = "CT",
    patient_id: str = "PHANTOM",
    series_description: str = "medresunet phantom",
    series_uid: str | None = None,
    study_uid: str | None = None,
    seed: int | str = 0,
) -> Path:
    """Write a 3D volume as a single-series DICOM folder (``IM0001.dcm``, ... one per slice).

    Args:
        array: (I, J, K) intensities in file voxel order: HU for CT (rounded, stored as
            ``HU + 1024`` with RescaleIntercept -1024 and RescaleSlope 1, clipped to
            [-1024, 3071]), non-negative values for MR (rounded, stored as is).
        affine: 4x4 voxel -> RAS+ mm; its three columns must be orthogonal (DICOM has no
            shear). A left-handed grid is written with its third axis reversed (see
            :func:`right_handed`), so the voxels keep their world positions.
        out_dir: the series folder to create; must not exist or be empty. Written
            atomically (a ``.tmp-`` sibling folder renamed at the end).
        modality: ``"CT"`` or ``"MR"``.
        patient_id: PatientID and PatientName.
        series_description: SeriesDescription.
        series_uid / study_uid: UIDs to use; default: deterministic from ``seed``.
        seed: entropy for the default UIDs (same seed -> same UIDs).

    Returns:
        The series folder.

    Raises:
        ValueError: not a 3D array, affine not 4x4 or with non-orthogonal columns, unknown
            modality, or ``out_dir`` exists and is not empty.
    """
    import SimpleITK as sitk

    array = np.asarray(array)
    affine = np.asarray(affine, dtype=float)
    out_dir = Path(out_dir)
    if array.ndim != 3:
        raise ValueError(f"write_dicom_series: expected a 3D (I, J, K) array, got shape {array.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"write_dicom_series: expected a 4x4 affine, got shape {affine.shape}")
    if modality not in ("CT", "MR"):
        raise ValueError(f"write_dicom_series: modality must be 'CT' or 'MR', got {modality!r}")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"write_dicom_series: affine has a zero-length axis, spacing {spacing.tolist()}")
    direction = affine[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("write_dicom_series: the affine's axes are not orthogonal (sheared grid); "
                         "DICOM cannot represent it")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"write_dicom_series: {out_dir} exists and is not empty")

    array, affine = right_handed(array, affine)
    direction = affine[:3, :3] / spacing
    dir_lps = _LPS @ direction
    origin_lps = _LPS @ affine[:3, 3]

    if modality == "CT":
        stored = np.clip(np.rint(array), CT_INTERCEPT, 3071).astype(np.int16)
        sop_class = CT_IMAGE_STORAGE
    else:
        stored = np.clip(np.rint(array), 0, 65535).astype(np.uint16)
        sop_class = MR_IMAGE_STORAGE
    image = sitk.GetImageFromArray(np.ascontiguousarray(stored.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin_lps])
    image.SetDirection([float(d) for d in dir_lps.flatten()])

    study_uid = study_uid or make_uid(seed, patient_id, "study")
    series_uid = series_uid or make_uid(seed, patient_id, series_description, "series")
    normal = dir_lps[:, 2]
    common = {
        "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0008|0016": sop_class,
        "0008|0020": "20000101", "0008|0021": "20000101",
        "0008|0030": "120000", "0008|0031": "120000",
        "0008|0060": modality,
        "0008|0070": "medresunet",
        "0008|103e": series_description,
        "0010|0010": f"Phantom^{patient_id}",
        "0010|0020": patient_id,
        "0018|0050": _ds(spacing[2]),
        "0018|0088": _ds(spacing[2]),
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0020|0011": "1",
        "0020|0052": make_uid(seed, patient_id, "frame"),
        "0020|0037": "\\".join(_ds(v) for v in (*dir_lps[:, 0], *dir_lps[:, 1])),
    }
    if modality == "CT":
        common.update({"0028|1052": _ds(CT_INTERCEPT), "0028|1053": "1", "0028|1054": "HU"})

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(stored.shape[2]):
            piece = image[:, :, k]
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            tags = dict(common)
            tags["0008|0018"] = make_uid(series_uid, k)
            tags["0020|0013"] = str(k + 1)
            tags["0020|0032"] = "\\".join(_ds(v) for v in position)
            tags["0020|1041"] = _ds(float(np.dot(position, normal)))
            for tag, value in tags.items():
                piece.SetMetaData(tag, value)
            writer.SetFileName(str(tmp / f"IM{k + 1:04d}.dcm"))
            writer.Execute(piece)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("wrote DICOM series %s (%d slices, %s)", out_dir, stored.shape[2], series_uid)
    return out_dir
