"""DICOM series in a folder: find them, pick one, check its slices, compute its geometry.

A series folder is read by one rule, the same that scan discovery uses to make cases: the
DICOM image files directly in the folder, never those of its subfolders (a study folder's
series subfolders are cases of their own). A folder may hold several series and files that
are not DICOM. Series are never mixed: one is picked by SeriesInstanceUID, or the one with most slices
(the choice and the others are logged). A series whose slices are not parallel, not the
same size, stacked at one position twice, or not uniformly spaced (a missing slice) is
refused with :class:`~medresunet.errors.ScanError` instead of being read with a wrong
spacing. Pixels are read by SimpleITK (GDCM: compressed transfer syntaxes, rescale
slope/intercept applied); headers by pydicom.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medresunet.errors import ScanError
from medresunet.io.geometry import Geometry, affine_from_lps

logger = logging.getLogger(__name__)

_TAGS = [
    "SeriesInstanceUID", "SeriesDescription", "SeriesNumber", "Modality", "Rows", "Columns",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "NumberOfFrames", "InstanceNumber",
]
_ORIENT_TOL = 1e-4  # direction cosines
_GAP_REL_TOL = 0.05  # slice spacing may vary by 5 % (+ 0.01 mm) around the median


@dataclass(frozen=True)
class SliceHeader:
    """The header fields of one DICOM file that the geometry needs (LPS mm)."""

    path: Path
    rows: int
    columns: int
    orientation: tuple[float, ...] | None  # ImageOrientationPatient, 6 values
    position: tuple[float, ...] | None  # ImagePositionPatient, 3 values
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) mm
    thickness: float | None
    frames: int
    instance: int


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        files: the series' files (sorted along the slice normal when possible).
        n_slices: number of files.
        description: SeriesDescription (or "").
        modality: Modality (e.g. "CT", "MR") or "".
    """

    uid: str
    files: tuple[Path, ...]
    n_slices: int
    description: str = ""
    modality: str = ""
    slices: tuple[SliceHeader, ...] = field(default=(), repr=False)


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a file starting with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _floats(value, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _read_header(path: Path):
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        return _header_fields(path, ds)
    except Exception as err:  # not DICOM or unreadable (pydicom decodes elements lazily): skipped
        logger.debug("skipping %s: not readable as DICOM (%s)", path, err)
        return None


def _get(ds: Any, keyword: str, default: Any = None) -> Any:
    """A header value, or ``default`` when absent or undecodable (a corrupt element is as if absent)."""
    try:
        return getattr(ds, keyword, default)
    except Exception:  # noqa: BLE001 - pydicom decodes lazily: a damaged VR raises on access
        return default


def _header_fields(path: Path, ds: Any):
    """``((uid, description, modality), SliceHeader)`` of a read dataset, or None without image."""
    uid = _get(ds, "SeriesInstanceUID", None)
    rows, cols = _get(ds, "Rows", None), _get(ds, "Columns", None)
    try:
        rows, cols = int(rows), int(cols)
    except (TypeError, ValueError):  # absent, or a corrupt value: no image to read
        rows = cols = None
    if uid is None or rows is None or cols is None:
        logger.debug("skipping %s: DICOM without image (no SeriesInstanceUID/Rows)", path)
        return None
    ps = _floats(_get(ds, "PixelSpacing", None), 2)
    thick = _get(ds, "SpacingBetweenSlices", None) or _get(ds, "SliceThickness", None)
    try:
        frames = int(_get(ds, "NumberOfFrames", 1) or 1)
        instance = int(_get(ds, "InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        frames, instance = 1, 0
    thick_mm = _floats([thick], 1) if thick else None  # a corrupt value: as if absent
    header = SliceHeader(
        path=path, rows=rows, columns=cols,
        orientation=_floats(_get(ds, "ImageOrientationPatient", None), 6),
        position=_floats(_get(ds, "ImagePositionPatient", None), 3),
        pixel_spacing=(ps[0], ps[1]) if ps else None,
        thickness=thick_mm[0] if thick_mm else None, frames=frames, instance=instance,
    )
    meta = (str(uid), str(_get(ds, "SeriesDescription", "") or ""),
            str(_get(ds, "Modality", "") or ""))
    return meta, header


def _sort_slices(slices: list[SliceHeader]) -> list[SliceHeader]:
    first = slices[0]
    if first.orientation is not None and all(s.position is not None for s in slices):
        normal = np.cross(first.orientation[:3], first.orientation[3:])
        return sorted(slices, key=lambda s: (float(np.dot(s.position, normal)), str(s.path)))
    return sorted(slices, key=lambda s: (s.instance, str(s.path)))


def iter_series_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """The files of a series folder, sorted by name: those directly in ``folder`` with the
    DICOM preamble.

    The one rule of scan discovery (a folder with such a file is a case) and of series
    reading: subfolders are not part of the folder (they are cases of their own); hidden
    files and the ``DICOMDIR`` index of a DICOM medium are left out.
    """
    folder = Path(folder)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    for name in names:
        path = folder / name
        if not name.startswith(".") and name.upper() != "DICOMDIR" and path.is_file() \
                and is_dicom_file(path):
            yield path


def has_series_files(folder: str | os.PathLike[str]) -> bool:
    """True if ``folder`` is a series folder (:func:`iter_series_files` finds a file)."""
    return next(iter_series_files(folder), None) is not None


def subfolders_with_series(folder: str | os.PathLike[str], limit: int = 5) -> list[Path]:
    """Up to ``limit`` folders below ``folder`` that are series folders themselves (for messages)."""
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if Path(dirpath) != Path(folder) and has_series_files(dirpath):
            found.append(Path(dirpath))
            if len(found) >= limit:
                break
    return found


def find_series(folder: str | os.PathLike[str]) -> list[SeriesInfo]:
    """Every DICOM series of the files directly in ``folder`` (not its subfolders), most slices first.

    Files that are not DICOM (any name), hidden files and DICOM files without an image
    are skipped. Raises ScanError if ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ScanError(f"{folder}: expected a folder of DICOM files, but it is not a folder")
    groups: dict[str, list[SliceHeader]] = {}
    info: dict[str, tuple[str, str]] = {}
    for path in iter_series_files(folder):
        found = _read_header(path)
        if found is None:
            continue
        (uid, desc, modality), header = found
        groups.setdefault(uid, []).append(header)
        info.setdefault(uid, (desc, modality))
    series = []
    for uid, slices in groups.items():
        ordered = _sort_slices(slices)
        series.append(SeriesInfo(
            uid=uid, files=tuple(s.path for s in ordered), n_slices=len(ordered),
            description=info[uid][0], modality=info[uid][1], slices=tuple(ordered),
        ))
    series.sort(key=lambda s: (-s.n_slices, s.uid))
    return series


def select_series(folder: str | os.PathLike[str], series_uid: str | None = None) -> SeriesInfo:
    """The series to read from ``folder``: ``series_uid`` if given, else the one with most slices.

    Raises:
        ScanError: no DICOM series in the folder, or ``series_uid`` is not there.
    """
    folder = Path(folder)
    series = find_series(folder)
    if not series:
        nested = subfolders_with_series(folder)
        if nested:
            shown = ", ".join(str(p.relative_to(folder)) for p in nested)
            raise ScanError(f"{folder}: no DICOM series found directly in the folder, but its "
                            f"subfolders hold series ({shown}{', ...' if len(nested) >= 5 else ''}); "
                            "a series is read from the files of one folder: give the series "
                            "folder itself (medresunet-infer makes one case per series folder)")
        raise ScanError(f"{folder}: no DICOM series found (expected DICOM image files "
                        "with the 'DICM' preamble); give a folder of DICOM files")
    others = ", ".join(f"{s.uid} ({s.n_slices} slices, {s.description!r})" for s in series)
    if series_uid is not None:
        for s in series:
            if s.uid == series_uid:
                return s
        raise ScanError(f"{folder}: no DICOM series with SeriesInstanceUID {series_uid}; "
                        f"found: {others}")
    chosen = series[0]
    if len(series) > 1:
        rest = ", ".join(f"{s.uid} ({s.n_slices} slices, {s.description!r})" for s in series[1:])
        logger.info("%s: %d DICOM series; reading %s (%d slices, %r), the one with most slices; "
                    "not read: %s (pass series_uid to choose)", folder, len(series), chosen.uid,
                    chosen.n_slices, chosen.description, rest)
    return chosen


def series_geometry(series: SeriesInfo, folder: str | os.PathLike[str] = "") -> Geometry:
    """Check a series' slices and compute its voxel -> RAS geometry.

    Voxel axes: i along the rows' direction (columns index), j down the columns, k across
    the slices in the order of ``series.files``. Shape ``(Columns, Rows, n_slices)``.

    Raises:
        ScanError: missing orientation/position, slices of different size or orientation,
            two slices at one position, or non-uniform slice spacing (a gap).
    """
    where = f"{folder or series.files[0].parent} (series {series.uid})"
    slices = list(series.slices)
    if any(s.frames > 1 for s in slices):
        raise ScanError(f"{where}: multi-frame DICOM (NumberOfFrames > 1) is not supported; "
                        "convert it to NIfTI (e.g. with dcm2niix) first")
    first = slices[0]
    if first.orientation is None or any(s.position is None or s.orientation is None
                                        for s in slices):
        raise ScanError(f"{where}: slices without ImageOrientationPatient/ImagePositionPatient; "
                        "expected a volumetric series (CT/MR), got e.g. a secondary capture")
    for s in slices[1:]:
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise ScanError(f"{where}: slices of different size: {first.path.name} is "
                            f"{first.rows}x{first.columns}, {s.path.name} is {s.rows}x{s.columns}")
        if not np.allclose(s.orientation, first.orientation, atol=_ORIENT_TOL):
            raise ScanError(f"{where}: slices are not parallel: ImageOrientationPatient "
                            f"{first.orientation} in {first.path.name} but {s.orientation} in "
                            f"{s.path.name}; expected one orientation for the whole series")
    row = np.asarray(first.orientation[:3])
    col = np.asarray(first.orientation[3:])
    normal = np.cross(row, col)
    ps = first.pixel_spacing or (1.0, 1.0)
    positions = np.array([s.position for s in slices], dtype=np.float64)
    if len(slices) > 1:
        steps = np.diff(positions, axis=0)
        dist = steps @ normal
        if np.any(np.abs(dist) < 1e-3):
            k = int(np.argmin(np.abs(dist)))
            raise ScanError(f"{where}: two slices at the same position ({slices[k].path.name}, "
                            f"{slices[k + 1].path.name}); the folder may mix acquisitions, "
                            "pass series_uid or split the folder")
        median = float(np.median(dist))
        bad = np.abs(dist - median) > _GAP_REL_TOL * abs(median) + 0.01
        if np.any(bad):
            k = int(np.argmax(bad))
            raise ScanError(f"{where}: non-uniform slice spacing: {dist[k]:.4g} mm between "
                            f"{slices[k].path.name} and {slices[k + 1].path.name}, median "
                            f"{median:.4g} mm (a missing slice?); refusing to guess the spacing")
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
        spacing_k = float(np.linalg.norm(step))
        axis_k = step / spacing_k
        if abs(float(axis_k @ normal)) < 0.999:
            logger.warning("%s: slices are stacked obliquely to their normal (gantry tilt?); "
                           "the affine is sheared", where)
    else:
        spacing_k = first.thickness or 1.0
        axis_k = normal
    direction = np.stack([row, col, axis_k], axis=1)
    affine = affine_from_lps(direction, (ps[1], ps[0], spacing_k), positions[0])
    return Geometry(shape=(first.columns, first.rows, len(slices)), affine=affine,
                    source="dicom")


def read_series(series: SeriesInfo, folder: str | os.PathLike[str] = "") -> tuple[np.ndarray, Geometry]:
    """Read a checked series' voxels with SimpleITK (rescale slope/intercept applied).

    Returns:
        ``(array (Columns, Rows, n_slices), Geometry)``, index order i, j, k.
    """
    import SimpleITK as sitk

    geometry = series_geometry(series, folder)
    where = f"{folder or series.files[0].parent} (series {series.uid})"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ScanError(f"{where}: SimpleITK cannot read the series' pixels: "
                        f"{str(err).strip().splitlines()[-1] if str(err).strip() else err}") from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(f"{where}: {image.GetNumberOfComponentsPerPixel()}-component pixels "
                        "(e.g. RGB); expected a grey-level series")
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 2:
        array = array[None]
    array = np.ascontiguousarray(array.transpose(2, 1, 0))
    if array.shape != geometry.shape:
        raise ScanError(f"{where}: pixel data of shape {array.shape} does not match the "
                        f"headers' {geometry.shape}")
    return array, geometry
