"""DICOM series: rescale, several series and junk in one folder, refused gaps and tilts."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medresunet.errors import ScanError
from medresunet.io import find_series, read_geometry, read_volume, select_series
from medresunet.io.dicom_export import write_dicom_series as export_series
from tests.dicom_fixtures import write_dicom_series
from tests.synthetic import make_affine

SHAPE = (16, 12, 8)


def _ct():
    return np.random.default_rng(0).integers(-1000, 1500, SHAPE).astype(np.int16)


def test_exported_ct_rescale(tmp_path):
    affine = make_affine("lps", (0.7, 0.7, 2.0))
    vol = _ct()
    export_series(vol, affine, tmp_path / "ct")  # the library's writer, rescale intercept -1024
    array, geom = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(array, vol)  # HU, rescale applied
    assert geom.source == "dicom" and geom.shape == SHAPE
    np.testing.assert_allclose(geom.affine, affine, atol=1e-4)
    assert read_geometry(tmp_path / "ct").same_grid(geom)


def test_mr_without_rescale(tmp_path):
    affine = make_affine("oblique", (0.9, 0.8, 3.0))
    vol = np.random.default_rng(1).integers(0, 3000, SHAPE).astype(np.int16)
    write_dicom_series(tmp_path / "mr", vol, affine, modality="MR")
    array, geom = read_volume(tmp_path / "mr")
    np.testing.assert_array_equal(array, vol)
    np.testing.assert_allclose(geom.affine, affine, atol=1e-4)
    np.testing.assert_allclose(geom.spacing, (0.9, 0.8, 3.0), atol=1e-5)


def test_two_series_and_junk(tmp_path, caplog):
    folder = tmp_path / "study"
    affine = make_affine("ras")
    big, small = _ct(), _ct()[:, :, :5]
    write_dicom_series(folder, big, affine, series_uid="1.2.3.4.1", prefix="A")
    write_dicom_series(folder, small + 7, affine, series_uid="1.2.3.4.2", prefix="B")
    write_dicom_series(folder / "sub", _ct(), affine, series_uid="1.2.3.4.3")  # its own case
    (folder / "notes.dcm").write_text("not dicom at all")
    (folder / "random").write_bytes(np.random.default_rng(0).bytes(400))
    (folder / "DICOMDIR_like").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 20)
    series = find_series(folder)
    assert [(s.uid, s.n_slices) for s in series] == [("1.2.3.4.1", 8), ("1.2.3.4.2", 5)]
    with caplog.at_level(logging.INFO, logger="medresunet.io.dicom"):
        array, geom = read_volume(folder)
    np.testing.assert_array_equal(array, big)
    assert "1.2.3.4.2" in caplog.text
    array2, geom2 = read_volume(folder, series_uid="1.2.3.4.2")
    np.testing.assert_array_equal(array2, small + 7)
    assert geom2.shape == (16, 12, 5)
    assert select_series(folder, "1.2.3.4.2").n_slices == 5
    with pytest.raises(ScanError, match="9.9.9"):
        read_volume(folder, series_uid="9.9.9")


def test_gap_refused(tmp_path):
    write_dicom_series(tmp_path / "gap", _ct(), make_affine("ras"), skip_slices=(4,))
    with pytest.raises(ScanError, match="non-uniform slice spacing"):
        read_volume(tmp_path / "gap")
    with pytest.raises(ScanError, match="gap"):
        read_geometry(tmp_path / "gap")


def test_non_parallel_refused(tmp_path):
    write_dicom_series(tmp_path / "tilt", _ct(), make_affine("ras"), tilt_slice=3)
    with pytest.raises(ScanError, match="not parallel"):
        read_volume(tmp_path / "tilt")


def test_no_dicom(tmp_path):
    (tmp_path / "a.dcm").write_text("text")
    with pytest.raises(ScanError, match="no DICOM series"):
        read_volume(tmp_path)
