"""DICOM SEG written from a label volume on a series grid, read back with highdicom and pydicom.

Every series is written by the test fixtures with shuffled file names; one has its
InstanceNumbers and file names running against the slice order, one folder holds two
series. Each SEG frame must reference the source instance at the frame's position, and the
mask rebuilt on the source grid must equal the labels voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from medresunet.errors import ScanError  # noqa: E402
from medresunet.io.dicom import select_series, series_geometry  # noqa: E402
from medresunet.io.dicom_seg import Algorithm, labels_from_seg, segment_codes, write_dicom_seg  # noqa: E402
from tests.dicom_fixtures import write_dicom_series  # noqa: E402
from tests.synthetic import ellipsoid, make_affine  # noqa: E402

SHAPE = (20, 16, 9)
LABELS = {"background": 0, "liver": 1, "lesion": 3}
ALGORITHM = Algorithm("medresunet", "9.9.9", "ab" * 32, "best.pt")


def _labels(shape=SHAPE) -> np.ndarray:
    """An off-centre structure plus a one-slice blob: any flip, transposition or shift shows."""
    s = np.asarray(shape)
    out = np.zeros(shape, dtype=np.uint8)
    out[ellipsoid(shape, s * [0.35, 0.4, 0.45], np.maximum(s * [0.2, 0.25, 0.3], 1.5))] = 1
    out[s[0] - 5:s[0] - 2, 1:4, 1] = 3
    out[:, :, -1] = 0  # an empty slice: its frames are omitted
    return out


def _volume(shape=SHAPE) -> np.ndarray:
    return np.where(_labels(shape) > 0, 150.0, -700.0)


def _reverse_order(folder: Path) -> None:
    """InstanceNumber and file names running against the slice order."""
    files = sorted(folder.glob("*.dcm"))
    headers = [pydicom.dcmread(f) for f in files]
    normal = np.cross(np.asarray(headers[0].ImageOrientationPatient[:3], float),
                      np.asarray(headers[0].ImageOrientationPatient[3:], float))
    order = np.argsort([float(np.dot(np.asarray(h.ImagePositionPatient, float), normal)) for h in headers])
    for f in files:
        f.rename(f.with_suffix(".old"))
    n = len(files)
    for rank, index in enumerate(order):
        ds = headers[index]
        ds.InstanceNumber = n - rank
        ds.save_as(folder / f"IM{n - rank:04d}.dcm", enforce_file_format=True)
    for f in folder.glob("*.old"):
        f.unlink()


def _series(tmp_path: Path, kind: str) -> tuple[Path, str | None]:
    folder = tmp_path / kind
    if kind == "axial":
        write_dicom_series(folder, _volume(), make_affine("ras", (0.8, 0.9, 2.0)))
    elif kind == "oblique":
        write_dicom_series(folder, _volume(), make_affine("oblique", (0.9, 0.8, 2.5)))
    elif kind == "reversed":
        write_dicom_series(folder, _volume(), make_affine("lps", (0.7, 0.7, 3.0)))
        _reverse_order(folder)
    elif kind in ("two_series", "two_series_chosen"):
        write_dicom_series(folder, _volume(), make_affine("oblique", (0.9, 0.8, 2.5)),
                           series_uid="1.2.826.0.1.3680043.8.498.1", prefix="A")
        other = (18, 14, 5)
        write_dicom_series(folder, _volume(other), make_affine("ras", (1.0, 1.0, 4.0)),
                           series_uid="1.2.826.0.1.3680043.8.498.2", prefix="B")
        if kind == "two_series_chosen":
            return folder, "1.2.826.0.1.3680043.8.498.2"
    return folder, None


@pytest.mark.parametrize("kind", ["axial", "oblique", "reversed", "two_series", "two_series_chosen"])
def test_seg_frames_reference_their_slices(tmp_path: Path, kind: str) -> None:
    folder, uid = _series(tmp_path, kind)
    series = select_series(folder, uid)
    geometry = series_geometry(series, folder)
    labels = _labels(geometry.shape)
    out = write_dicom_seg(labels, geometry, folder, tmp_path / "out" / "case.seg.dcm", LABELS,
                          ALGORITHM, series_uid=uid)

    sources = {str(ds.SOPInstanceUID): ds for ds in
               (pydicom.dcmread(p, stop_before_pixels=True) for p in series.files)}
    order = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in series.files]
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    first = next(iter(sources.values()))
    assert seg.PatientID == first.PatientID and seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.SeriesInstanceUID not in {str(s.SeriesInstanceUID) for s in sources.values()}
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "lesion"]
    liver = seg.SegmentSequence[0]
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SCT Liver
    algo = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmVersion == "9.9.9" and "ab" * 32 in str(algo.AlgorithmParameters)

    # every frame: its referenced instance lies at the frame's position and orientation, and
    # that position maps through the NIfTI affine onto the slice index of that instance
    inv = np.linalg.inv(geometry.affine)
    iop = np.asarray(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                     .ImageOrientationPatient, float)
    n_frames = int(seg.NumberOfFrames)
    nonempty = sum(int((labels[:, :, k] == v).any()) for k in range(labels.shape[2]) for v in (1, 3))
    assert n_frames == nonempty  # empty frames omitted
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(position, np.asarray(sources[ref].ImagePositionPatient, float), atol=1e-4)
        np.testing.assert_allclose(iop, np.asarray(sources[ref].ImageOrientationPatient, float), atol=1e-5)
        ras = np.array([-position[0], -position[1], position[2], 1.0])
        ijk = inv @ ras
        np.testing.assert_allclose(ijk[:2], 0.0, atol=1e-3)
        assert round(float(ijk[2])) == order.index(ref)

    # rebuilt from the frames on the source grid (pydicom pixels + per-frame references)
    rebuilt = labels_from_seg(out, series, [1, 3])
    np.testing.assert_array_equal(rebuilt, labels)
    # and through highdicom's own reader, frame by source instance in slice order
    hseg = hd.seg.segread(out)
    pixels = hseg.get_pixels_by_source_instance(order, combine_segments=True, relabel=False,
                                                skip_overlap_checks=True)
    values = np.array([0, 1, 3])[pixels.astype(int)]
    np.testing.assert_array_equal(values.transpose(2, 1, 0), labels)


def test_seg_refuses_another_grid(tmp_path: Path) -> None:
    folder, _ = _series(tmp_path, "axial")
    geometry = series_geometry(select_series(folder), folder)
    from medresunet.io.geometry import Geometry

    shifted = Geometry(geometry.shape, geometry.affine @ np.diag([1, 1, -1, 1.0]), "dicom")
    target = tmp_path / "x.seg.dcm"
    with pytest.raises(ScanError, match="not the series' grid"):
        write_dicom_seg(_labels(), shifted, folder, target, LABELS, ALGORITHM)
    assert not target.exists()


def test_segment_codes() -> None:
    assert segment_codes("kidney")[1].value == "64033007"
    assert segment_codes("liver_lesion")[0].value == "49755003"  # morphologically altered
    assert segment_codes("thing42")[1].value == "85756007"  # tissue
