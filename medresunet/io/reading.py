"""Read a scan (NIfTI file, NRRD/MHA/MHD file or DICOM series folder) with its geometry.

The array comes back in file voxel order (for DICOM and ITK formats: index order i, j, k,
matching the RAS affine), with NIfTI scl_slope/inter and DICOM rescale applied. Every
failure is a :class:`~medresunet.errors.ScanError` whose message starts with the path.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from medresunet.errors import ScanError
from medresunet.io.geometry import Geometry, affine_from_lps

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def scan_kind(path: str | os.PathLike[str]) -> str | None:
    """``"nifti"``, ``"itk"`` or ``"dicom"`` (a folder) from the path; None if unsupported."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    return None


def _kind_or_error(path: Path) -> str:
    if not path.exists():
        raise ScanError(f"{path}: no such file or folder")
    kind = scan_kind(path)
    if kind is None:
        raise ScanError(f"{path}: unsupported scan format; expected .nii/.nii.gz, "
                        ".nrrd/.nhdr, .mha/.mhd or a DICOM series folder")
    return kind


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    if text:
        text = text.splitlines()[-1] if len(text) > 300 else " ".join(text.split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton dims beyond 3; refuse 1D and real 4D+ data."""
    shape = tuple(int(s) for s in shape)
    if len(shape) > 3:
        if any(s != 1 for s in shape[3:]):
            raise ScanError(f"{path}: image of shape {shape}; expected a 2D or 3D scan "
                            "(give one file per channel / time point)")
        shape = shape[:3]
    if len(shape) < 2:
        raise ScanError(f"{path}: image of shape {shape}; expected a 2D or 3D scan")
    if min(shape) < 1:
        raise ScanError(f"{path}: image of shape {shape} has an empty dimension")
    return shape


def _check_finite(path: Path, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        n = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ScanError(f"{path}: {n} voxels are NaN or infinite; expected finite intensities")


# ----------------------------------------------------------------------------- NIfTI
def _nifti_image(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as err:
        raise ScanError(f"{path}: not a readable NIfTI file ({_reason(err)})") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanError(f"{path}: expected a NIfTI image, got {type(img).__name__}")
    return img


def _nifti_geometry(path: Path, img) -> Geometry:
    shape = _spatial_shape(path, img.shape)
    try:  # nibabel raises plain ValueErrors on impossible quaternions, codes or pixdims
        qform, qcode = img.header.get_qform(coded=True)
        sform, scode = img.header.get_sform(coded=True)
        affine = np.asarray(img.affine, dtype=np.float64)
    except (ValueError, TypeError, ArithmeticError) as err:
        raise ScanError(f"{path}: invalid orientation header ({_reason(err)})") from err
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanError(f"{path}: invalid voxel -> world affine {affine.tolist()}")
    return Geometry(shape=shape, affine=affine, source="nifti",
                    qform=None if qform is None else np.asarray(qform), qform_code=int(qcode),
                    sform=None if sform is None else np.asarray(sform), sform_code=int(scode))


def _nifti_bytes(path: Path) -> bytes | None:
    """The whole decompressed content of a ``.nii.gz`` (CRC checked), or None for ``.nii``.

    nibabel reads a gzip stream only up to the end of the voxel data and never checks
    the trailing CRC, so a damaged deflate stream can decode to wrong voxels silently;
    decompressing it whole here checks the CRC and the length.
    """
    if not path.name.lower().endswith(".gz"):
        return None
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise ScanError(f"{path}: not a valid gzip file, the compressed data are corrupt or "
                        f"truncated ({_reason(err)}); re-export or re-copy the file") from err


def _image_from_bytes(path: Path, raw: bytes):
    import nibabel as nib

    klass = nib.Nifti1Image
    if len(raw) >= 4 and 540 in struct.unpack("<i", raw[:4]) + struct.unpack(">i", raw[:4]):
        klass = nib.Nifti2Image
    try:
        return klass.from_bytes(raw)
    except Exception as err:
        raise ScanError(f"{path}: not a readable NIfTI file ({_reason(err)})") from err


def _check_data_size(path: Path, img, available: int) -> None:
    """Refuse a header whose shape and type need more bytes than the file holds.

    Checked before reading, so that a damaged header (a huge dimension) gives a clear
    error instead of a giant allocation.
    """
    hdr = img.header
    try:
        offset = int(hdr.get_data_offset())
        itemsize = int(np.dtype(hdr.get_data_dtype()).itemsize)
        n_voxels = int(np.prod([int(s) for s in img.shape], dtype=object))
    except Exception as err:
        raise ScanError(f"{path}: invalid NIfTI header ({_reason(err)})") from err
    needed = offset + n_voxels * itemsize
    if offset < 0 or needed > available:
        raise ScanError(f"{path}: corrupt or truncated NIfTI data: the header describes "
                        f"{tuple(int(s) for s in img.shape)} voxels of {hdr.get_data_dtype()} "
                        f"({needed} bytes with the header), the file holds {available} bytes")


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    raw = _nifti_bytes(path)
    img = _nifti_image(path) if raw is None else _image_from_bytes(path, raw)
    geometry = _nifti_geometry(path, img)
    _check_data_size(path, img, len(raw) if raw is not None else path.stat().st_size)
    try:
        array = np.asanyarray(img.dataobj)  # applies scl_slope / scl_inter
    except Exception as err:
        raise ScanError(f"{path}: corrupt or truncated NIfTI data ({_reason(err)})") from err
    return array.reshape(geometry.shape), geometry


# ------------------------------------------------------------------ NRRD / MHA / MHD
def _itk_geometry(path: Path, size, spacing, origin, direction, components: int) -> Geometry:
    d = len(size)
    if components != 1:
        raise ScanError(f"{path}: {components}-component pixels (vector/RGB); expected a "
                        "grey-level scan")
    shape = _spatial_shape(path, tuple(size))
    n = len(shape)
    direction = np.asarray(direction, dtype=np.float64).reshape(d, d)[:n, :n]
    affine = affine_from_lps(direction, tuple(spacing)[:n], tuple(origin)[:n])
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanError(f"{path}: invalid spacing/direction/origin")
    return Geometry(shape=shape, affine=affine, source="itk")


def _itk_file_geometry(path: Path) -> Geometry:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ScanError(f"{path}: not a readable NRRD/MHA/MHD image ({_reason(err)})") from err
    return _itk_geometry(path, reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(),
                         reader.GetDirection(), reader.GetNumberOfComponents())


def _read_itk(path: Path) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ScanError(f"{path}: not a readable NRRD/MHA/MHD image ({_reason(err)})") from err
    geometry = _itk_geometry(path, image.GetSize(), image.GetSpacing(), image.GetOrigin(),
                             image.GetDirection(), image.GetNumberOfComponentsPerPixel())
    array = sitk.GetArrayFromImage(image)  # (..., k, j, i)
    array = np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1]))
    return array.reshape(geometry.shape), geometry


# ---------------------------------------------------------------------------- public
def read_geometry(path: str | os.PathLike[str], series_uid: str | None = None) -> Geometry:
    """The geometry of a scan, from its header(s) only.

    Args:
        path: NIfTI/NRRD/MHA/MHD file or DICOM series folder.
        series_uid: SeriesInstanceUID to pick in a DICOM folder (default: most slices).

    Raises:
        ScanError: missing, unsupported or unreadable; a refused DICOM series.
    """
    from medresunet.io import dicom

    path = Path(path)
    kind = _kind_or_error(path)
    if kind == "nifti":
        return _nifti_geometry(path, _nifti_image(path))
    if kind == "itk":
        return _itk_file_geometry(path)
    return dicom.series_geometry(dicom.select_series(path, series_uid), path)


def read_volume(path: str | os.PathLike[str],
                series_uid: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a scan's voxels and geometry.

    Args:
        path: NIfTI/NRRD/MHA/MHD file or DICOM series folder.
        series_uid: SeriesInstanceUID to pick in a DICOM folder (default: most slices).

    Returns:
        ``(array, geometry)``: ``array.shape == geometry.shape`` (2 or 3 spatial dims in
        file voxel order), NIfTI scaling / DICOM rescale applied (float when scaled,
        else the stored integer or float type).

    Raises:
        ScanError: missing, unsupported, corrupt or truncated file, not an image, NaN/Inf
            voxels, more than 3 non-singleton dims, or a refused DICOM series.
    """
    from medresunet.io import dicom

    path = Path(path)
    kind = _kind_or_error(path)
    if kind == "nifti":
        array, geometry = _read_nifti(path)
    elif kind == "itk":
        array, geometry = _read_itk(path)
    else:
        array, geometry = dicom.read_series(dicom.select_series(path, series_uid), path)
    _check_finite(path, array)
    return array, geometry
