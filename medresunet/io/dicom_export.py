"""Write a volume as a DICOM series (one file per slice): the project's one DICOM series writer.

Used by the phantom generator (a test case delivered as a DICOM series, like a scanner
would) and, through :func:`series_slices`, by the tests of the DICOM readers (which add
gaps and tilted slices to it). The geometry is exact: ImagePositionPatient per slice,
ImageOrientationPatient, PixelSpacing and SliceThickness come from the RAS affine
(converted to DICOM's LPS by negating the first two world axes), so reading the series back
gives the same voxels at the same world positions. The files are written with pydicom
(explicit VR little endian, CT or MR image storage).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class SeriesIdentity:
    """The identity of a series to write.

    Attributes:
        modality: ``"CT"`` (stored as ``HU + 1024`` with RescaleIntercept -1024, clipped
            to [-1024, 3071] HU) or ``"MR"`` (non-negative values stored as they are, no
            rescale tags).
        patient_id: PatientID and PatientName.
        series_description: SeriesDescription.
        series_uid / study_uid: UIDs to use; default: deterministic from ``seed``.
        seed: entropy for the default UIDs (same seed -> same UIDs).
    """

    modality: str = "CT"
    patient_id: str = "PHANTOM"
    series_description: str = "medresunet phantom"
    series_uid: str | None = None
    study_uid: str | None = None
    seed: int | str = 0


def _stored(array: np.ndarray, modality: str) -> np.ndarray:
    if modality == "CT":
        return (np.clip(np.rint(array), CT_INTERCEPT, 3071) - CT_INTERCEPT).astype(np.uint16)
    return np.clip(np.rint(array), 0, 65535).astype(np.uint16)


def _series_tags(info: SeriesIdentity, dir_lps: np.ndarray, spacing: np.ndarray) -> dict:
    """The tags shared by every slice of the series (pydicom keywords)."""
    study_uid = info.study_uid or make_uid(info.seed, info.patient_id, "study")
    series_uid = info.series_uid or make_uid(info.seed, info.patient_id, info.series_description, "series")
    tags = {
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CT_IMAGE_STORAGE if info.modality == "CT" else MR_IMAGE_STORAGE,
        "StudyDate": "20000101", "SeriesDate": "20000101", "StudyTime": "120000", "SeriesTime": "120000",
        "Modality": info.modality, "Manufacturer": "medresunet", "SeriesDescription": info.series_description,
        "PatientName": f"Phantom^{info.patient_id}", "PatientID": info.patient_id,
        "SliceThickness": _ds(spacing[2]), "SpacingBetweenSlices": _ds(spacing[2]),
        "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SeriesNumber": 1,
        "FrameOfReferenceUID": make_uid(info.seed, info.patient_id, "frame"),
        "ImageOrientationPatient": [_ds(v) for v in (*dir_lps[:, 0], *dir_lps[:, 1])],
        "PixelSpacing": [_ds(spacing[1]), _ds(spacing[0])],
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15, "PixelRepresentation": 0,
    }
    if info.modality == "CT":
        tags.update(RescaleIntercept=_ds(CT_INTERCEPT), RescaleSlope="1", RescaleType="HU")
    return tags


def series_slices(array: np.ndarray, affine: np.ndarray, info: SeriesIdentity | None = None) -> list[Any]:
    """The series as pydicom datasets, one per slice along the third voxel axis (not written).

    Args:
        array: (I, J, K) intensities in voxel order (see :class:`SeriesIdentity` for the storage).
        affine: 4x4 voxel -> RAS+ mm, right-handed (the slices stack along row x column);
            the third column may lean off the slice normal (a gantry tilt).
        info: the series' identity and modality.

    Returns:
        ``K`` datasets (file meta included), in slice order.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    info = info or SeriesIdentity()
    affine = np.asarray(affine, dtype=float)
    lps = np.eye(4)
    lps[:3] = _LPS @ affine[:3]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    dir_lps = lps[:3, :3] / spacing
    stored = _stored(np.asarray(array), info.modality)
    tags = _series_tags(info, dir_lps, spacing)
    slices = []
    for k in range(stored.shape[2]):
        ds = Dataset()
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        position = lps[:3, 3] + k * lps[:3, 2]
        ds.SOPInstanceUID = make_uid(tags["SeriesInstanceUID"], k)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(np.dot(position, np.cross(dir_lps[:, 0], dir_lps[:, 1]))))
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        slices.append(ds)
    return slices


def _check_series_input(array: np.ndarray, affine: np.ndarray, out_dir: Path, modality: str) -> None:
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


def write_dicom_series(array: np.ndarray, affine: np.ndarray, out_dir: str | Path,
                       info: SeriesIdentity | None = None, **identity: Any) -> Path:
    """Write a 3D volume as a single-series DICOM folder (``IM0001.dcm``, ... one per slice).

    Args:
        array: (I, J, K) intensities in file voxel order: HU for CT, non-negative values
            for MR (see :class:`SeriesIdentity`).
        affine: 4x4 voxel -> RAS+ mm; its three columns must be orthogonal. A left-handed
            grid is written with its third axis reversed (see :func:`right_handed`), so the
            voxels keep their world positions.
        out_dir: the series folder to create; must not exist or be empty. Written
            atomically (a ``.tmp-`` sibling folder renamed at the end).
        info: the series' identity; or give its fields as keywords (``modality``,
            ``patient_id``, ``series_description``, ``series_uid``, ``study_uid``, ``seed``).

    Returns:
        The series folder.

    Raises:
        ValueError: not a 3D array, affine not 4x4 or with non-orthogonal columns, unknown
            modality, or ``out_dir`` exists and is not empty.
    """
    info = info or SeriesIdentity(**identity)
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=float)
    out_dir = Path(out_dir)
    _check_series_input(array, affine, out_dir, info.modality)
    slices = series_slices(*right_handed(array, affine), info)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        for k, ds in enumerate(slices):
            ds.save_as(tmp / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("wrote DICOM series %s (%d slices, %s)", out_dir, len(slices), slices[0].SeriesInstanceUID)
    return out_dir
