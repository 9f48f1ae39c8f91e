"""DICOM SEG output through highdicom: the NIfTI label volume of a DICOM series, as DICOM.

Right by construction rather than by convention: the label volume is the one written as
NIfTI, on the series' own grid (:func:`medresunet.io.dicom.series_geometry`: voxel ``i``
along the rows' direction, ``j`` down the columns, ``k`` across the slices sorted by their
position along the slice normal). Frame ``k`` is ``labels[:, :, k].T`` (rows x columns) and
is handed to highdicom together with the source instance at that same ``k``, so every frame
references the SOPInstanceUID of the slice it was computed on and carries that slice's
ImagePositionPatient and ImageOrientationPatient. File order and InstanceNumber play no
part (sorting by either is how viewers end up mirrored). Before writing, the grid of the
labels is checked against the series' geometry recomputed from the headers.

One BINARY segment per foreground label, numbered 1..n in label-value order, named from
the label map, with SNOMED CT category and type codes (the label name looked up in
pydicom's SCT dictionary; a lesion-like name is a morphologically altered structure, an
unknown name a generic tissue). Empty frames are omitted. Patient and study attributes come
from the source (highdicom copies them); the SEG is a new series.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medresunet.errors import ScanError
from medresunet.io.atomic import atomic_path
from medresunet.io.dicom import SeriesInfo, select_series, series_geometry
from medresunet.io.geometry import Geometry

log = logging.getLogger(__name__)

SEG_SUFFIX = ".seg.dcm"
# Type 2 patient/study attributes (present, possibly empty, in a conforming image) that
# highdicom copies into the SEG; a source lacking one gets it empty rather than a crash.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")
_LESION_WORDS = ("lesion", "tumor", "tumour", "neoplasm", "mass", "nodule", "cyst", "metasta")


@dataclass(frozen=True)
class Algorithm:
    """What made the segmentation: goes into each segment's AlgorithmIdentificationSequence.

    Attributes:
        name: algorithm name (e.g. ``"medresunet"``).
        version: the medresunet version that ran.
        model_sha256: SHA-256 of the checkpoint (or of the exported model's source checkpoint).
        model_name: the model file's name, for a human reader.
    """

    name: str
    version: str
    model_sha256: str
    model_name: str = ""


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part)


def segment_codes(name: str):
    """``(category, type)`` SNOMED CT codes for a label name.

    Args:
        name: the label's name from the label map (e.g. ``"liver"``, ``"left_kidney"``).

    Returns:
        Two ``pydicom.sr.coding.Code``: Anatomical Structure + the organ for a name that
        pydicom's SCT dictionary knows (``liver`` -> Liver 10200004), Morphologically Altered
        Structure + Lesion/Tumor for lesion-like names, else Tissue + Tissue.
    """
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    altered = Code("49755003", "SCT", "Morphologically Altered Structure")
    low = name.lower()
    candidates = [_camel(name), _camel(name.rstrip("s")), _camel(low.split("_")[-1])]
    found = None
    for key in candidates:
        try:
            found = getattr(codes.SCT, key)
            break
        except AttributeError:
            continue
    if any(w in low for w in _LESION_WORDS):
        return altered, found if found is not None else codes.SCT.Lesion
    if found is not None:
        return codes.SCT.AnatomicalStructure, found
    return codes.SCT.Tissue, codes.SCT.Tissue


def _segments(labels: Mapping[str, int], algorithm: Algorithm):
    """Segment descriptions (1..n, label-value order) and the value -> segment lookup table."""
    import highdicom as hd

    fg = sorted((int(v), str(k)) for k, v in labels.items() if int(v) != 0)
    if not fg:
        raise ValueError("write_dicom_seg: the label map has no foreground label")
    ident = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"),
        version=algorithm.version,
        parameters={"model_sha256": algorithm.model_sha256, "model": algorithm.model_name or "-"})
    lut = np.zeros(max(v for v, _ in fg) + 1, dtype=np.uint16)
    descriptions = []
    for number, (value, name) in enumerate(fg, start=1):
        category, kind = segment_codes(name)
        lut[value] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ident, tracking_id=f"label {value}"[:64],
            tracking_uid=hd.UID()))
    return descriptions, lut


def _source_datasets(series: SeriesInfo) -> list:
    """The series' headers in ``series.files`` order (sorted along the slice normal)."""
    import pydicom

    out = []
    for path in series.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        out.append(ds)
    return out


def frames_from_labels(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``labels (I, J, K)`` on the series grid -> segment-number frames ``(K, rows=J, cols=I)``."""
    values = np.asarray(labels)
    if values.size and int(values.max()) >= len(lut):
        raise ValueError(f"write_dicom_seg: label value {int(values.max())} is not in the label map")
    return np.ascontiguousarray(lut[values].transpose(2, 1, 0)).astype(
        np.uint8 if len(lut) <= 256 else np.uint16)


def write_dicom_seg(labels: np.ndarray, geometry: Geometry, folder: str | os.PathLike[str],
                    target: str | os.PathLike[str], label_map: Mapping[str, int],
                    algorithm: Algorithm, series_uid: str | None = None,
                    description: str = "medresunet segmentation") -> Path:
    """Write ``labels`` (the NIfTI output of a DICOM series) as one DICOM SEG file.

    Args:
        labels: ``(I, J, K)`` integer labels on the series grid (``geometry.shape``).
        geometry: the grid ``labels`` lies on (the series' geometry, as the reader made it).
        folder: the DICOM folder the scan was read from.
        target: output path, e.g. ``OUTPUT/<id>.seg.dcm``; written atomically.
        label_map: name -> label value (``background`` 0 is not a segment).
        algorithm: the algorithm identification written into every segment.
        series_uid: the series read from ``folder`` (default: the one with most slices, as
            the reader chooses).
        description: SeriesDescription of the new series.

    Returns:
        The written path.

    Raises:
        ScanError: the folder's series cannot be used, or its grid is not ``geometry``.
    """
    import highdicom as hd

    folder = Path(folder)
    series = select_series(folder, series_uid)
    grid = series_geometry(series, folder)
    if not grid.same_grid(geometry) or tuple(np.shape(labels)) != grid.shape:
        raise ScanError(f"{folder}: the segmentation's grid ({geometry.describe()}, labels "
                        f"{tuple(np.shape(labels))}) is not the series' grid ({grid.describe()}); "
                        "DICOM SEG is written only on the series' own grid")
    descriptions, lut = _segments(label_map, algorithm)
    frames = frames_from_labels(labels, lut)
    sources = _source_datasets(series)
    if not frames.any():
        log.warning("%s: the segmentation is empty; the DICOM SEG holds no frame", folder)
    try:
        number = int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000
    except (TypeError, ValueError):
        number = 1000
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medresunet",
        manufacturer_model_name=algorithm.name, software_versions=algorithm.version,
        device_serial_number=algorithm.model_sha256[:16] or "unknown", omit_empty_frames=True,
        series_description=description[:64], content_label="MEDRESUNET",
        content_description=f"{algorithm.name} {algorithm.version}"[:64])
    target = Path(target)
    with atomic_path(target) as tmp:
        seg.save_as(tmp)
    log.debug("wrote DICOM SEG %s (%d frames, %d segments)", target,
              int(getattr(seg, "NumberOfFrames", 0)), len(descriptions))
    return target


def seg_target(output: str | os.PathLike[str], case_id: str) -> Path:
    """``OUTPUT/<id>.seg.dcm``."""
    return Path(output) / f"{case_id}{SEG_SUFFIX}"


def labels_from_seg(seg_path: str | os.PathLike[str], series: SeriesInfo,
                    values: Sequence[int]) -> np.ndarray:
    """Rebuild the label volume ``(I, J, K)`` of a SEG on its source series' grid.

    Each frame is placed at the slice whose SOPInstanceUID it references; segment ``n``
    takes ``values[n - 1]``. Used to check a SEG against the NIfTI it came from.
    """
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(seg_path)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for p in series.files]
    first = series.slices[0]
    out = np.zeros((first.columns, first.rows, len(uids)), dtype=np.uint16)
    frames = seg.pixel_array if int(seg.NumberOfFrames) > 1 else seg.pixel_array[None]
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ident = item if "SegmentIdentificationSequence" in item else seg.SharedFunctionalGroupsSequence[0]
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        k = uids.index(str(ref))
        mask = frames[index].T.astype(bool)
        out[:, :, k][mask] = values[number - 1]
    return out
