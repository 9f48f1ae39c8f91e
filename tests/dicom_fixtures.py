"""Write tiny DICOM series for tests: with pydicom from scratch, or with SimpleITK.

A volume is given in index order ``(I, J, K)`` (columns, rows, slices) with a 4x4
voxel -> RAS mm affine, exactly like a NIfTI twin written with ``synthetic.write_nifti``;
so voxel ``(i, j, k)`` of the series lies at ``affine @ (i, j, k, 1)`` as long as the
affine is right-handed (readers stack slices along ``row x column``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _lps_geometry(affine: np.ndarray):
    lps = LPS @ np.asarray(affine, dtype=float)
    cols = lps[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    row_cos, col_cos = cols[:, 0] / spacing[0], cols[:, 1] / spacing[1]
    return lps, spacing, row_cos, col_cos


def _stored(volume: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    raw = np.round((np.asarray(volume, dtype=float) - intercept) / slope)
    if raw.min() < 0:
        return raw.astype(np.int16)
    return raw.astype(np.uint16)


def write_dicom_series(folder, volume, affine, *, series_uid: str | None = None,
                       study_uid: str | None = None, modality: str = "CT",
                       intercept: float | None = -1024.0, slope: float = 1.0,
                       description: str = "test series", skip_slices=(),
                       tilt_slice: int | None = None, prefix: str = "IM") -> list[Path]:
    """Write ``volume (I, J, K)`` as a single-frame DICOM series with pydicom, one file a slice.

    Args:
        folder: output folder (created).
        volume: intensities (HU for CT) in index order ``(I, J, K)``.
        affine: 4x4 voxel -> RAS mm.
        intercept, slope: RescaleIntercept/Slope; stored = (volume - intercept) / slope.
            ``intercept=None`` writes no rescale tags.
        skip_slices: slice indices not written (makes a gap).
        tilt_slice: a slice index written with a rotated ImageOrientationPatient.
        prefix: file name prefix (files are named in a shuffled order on purpose).

    Returns:
        The written files.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(volume)
    lps, spacing, row_cos, col_cos = _lps_geometry(affine)
    stored = _stored(volume, slope, 0.0 if intercept is None else intercept)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    sop_class = pydicom.uid.CTImageStorage if modality == "CT" else pydicom.uid.MRImageStorage
    n = volume.shape[2]
    order = np.random.default_rng(0).permutation(n)  # file names not in slice order
    paths = []
    for k in range(n):
        if k in skip_slices:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = "Test^Phantom", "PHANTOM"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.SeriesDescription = modality, description
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.FrameOfReferenceUID = study_uid
        iop = np.concatenate([row_cos, col_cos])
        if tilt_slice is not None and k == tilt_slice:
            c, s = np.cos(0.2), np.sin(0.2)
            iop = np.array([c, s, 0.0, -s, c, 0.0])
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
        if intercept is not None:
            ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:g}", f"{slope:g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / f"{prefix}{order[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_dicom_series_sitk(folder, volume, affine, *, intercept: float = -1024.0,
                            slope: float = 1.0, modality: str = "CT",
                            series_uid: str | None = None) -> list[Path]:
    """Write ``volume (I, J, K)`` as a DICOM series with SimpleITK's GDCM writer (CT style)."""
    import SimpleITK as sitk
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps, spacing, row_cos, col_cos = _lps_geometry(affine)
    # GDCM applies the inverse rescale itself when writing: give it the real values (HU).
    hu = np.round(np.asarray(volume, dtype=float)).astype(np.int16)
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    iop = "\\".join(f"{v:.6f}" for v in np.concatenate([row_cos, col_cos]))
    paths = []
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        tags = {
            "0008|0060": modality, "0020|000d": study_uid, "0020|000e": series_uid,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": generate_uid(),
            "0020|0037": iop, "0020|0013": str(k + 1), "0008|103e": "sitk series",
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",
            "0018|0050": f"{spacing[2]:.6f}",
            "0028|1052": f"{intercept:g}", "0028|1053": f"{slope:g}", "0028|1054": "HU",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        path = folder / f"slice{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        paths.append(path)
    return paths
