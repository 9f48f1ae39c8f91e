"""Scan discovery: one case per file or DICOM series folder, stable ids, duplicates refused."""

from __future__ import annotations

import numpy as np
import pytest

from medresunet.errors import UsageError
from medresunet.io import case_id_from_path, discover_scans
from tests.dicom_fixtures import write_dicom_series
from tests.synthetic import make_affine, write_nifti


def test_case_id_from_path(tmp_path):
    assert case_id_from_path("a/b/x.nii.gz") == "x"
    assert case_id_from_path("x.v2.nii") == "x.v2"
    assert case_id_from_path("y.nrrd") == "y" and case_id_from_path("z.MHA") == "z"
    assert case_id_from_path(tmp_path / "folder") == "folder"


def test_discover(tmp_path):
    vol = np.zeros((4, 3, 2), np.int16)
    write_nifti(tmp_path / "b.nii.gz", vol, make_affine())
    (tmp_path / "sub").mkdir()
    write_nifti(tmp_path / "sub" / "a.nii", vol, make_affine())
    (tmp_path / "c.mha").write_bytes(b"")
    (tmp_path / ".tmp-abc.nii.gz").write_bytes(b"")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    write_dicom_series(tmp_path / "pat1" / "ct", vol, make_affine())
    write_dicom_series(tmp_path / "pat2", vol, make_affine())
    refs = discover_scans(tmp_path)
    assert [(r.case_id, r.kind) for r in refs] == [
        ("a", "nifti"), ("b", "nifti"), ("c", "itk"), ("pat1_ct", "dicom"), ("pat2", "dicom")]
    assert refs[3].path == tmp_path / "pat1" / "ct"
    assert discover_scans(tmp_path) == refs
    single = discover_scans(tmp_path / "pat1" / "ct")
    assert [(r.case_id, r.kind) for r in single] == [("ct", "dicom")]
    assert [r.case_id for r in discover_scans(tmp_path / "b.nii.gz")] == ["b"]


def test_discover_errors(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"")
    (tmp_path / "x.nrrd").write_bytes(b"")
    with pytest.raises(UsageError, match="x.nii.gz"):
        discover_scans(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        discover_scans(tmp_path / "nope")
    (tmp_path / "n.txt").write_text("x")
    with pytest.raises(UsageError, match="not a scan"):
        discover_scans(tmp_path / "n.txt")


def test_study_folder_with_series_subfolders(tmp_path):
    """One rule for discovery and reading: the DICOM images directly in a folder."""
    from medresunet.errors import ScanError
    from medresunet.io import read_volume

    affine = make_affine("ras")
    ct = np.arange(8 * 6 * 6, dtype=np.int16).reshape(8, 6, 6)
    study = tmp_path / "in" / "study"
    write_dicom_series(study / "s1", ct, affine, series_uid="1.2.9.1")
    write_dicom_series(study / "s2", ct[:, :, :3] + 5, affine, series_uid="1.2.9.2")
    (study / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 20)  # no image: no case
    # a patient folder with a series of its own and a bigger one in a subfolder
    write_dicom_series(tmp_path / "in" / "pat", ct[:, :, :4] + 9, affine, series_uid="1.2.9.3")
    write_dicom_series(tmp_path / "in" / "pat" / "sub", ct, affine, series_uid="1.2.9.4")
    refs = discover_scans(tmp_path / "in")
    assert [(r.case_id, r.path.relative_to(tmp_path / "in").as_posix()) for r in refs] == [
        ("pat", "pat"), ("pat_sub", "pat/sub"), ("study_s1", "study/s1"), ("study_s2", "study/s2")]
    volumes = {r.case_id: read_volume(r.path)[0] for r in refs}
    np.testing.assert_array_equal(volumes["pat"], ct[:, :, :4] + 9)  # not its child's series
    np.testing.assert_array_equal(volumes["pat_sub"], ct)
    np.testing.assert_array_equal(volumes["study_s2"], ct[:, :, :3] + 5)
    with pytest.raises(ScanError, match="subfolders hold series") as err:
        read_volume(study)
    assert "s1" in str(err.value) and "s2" in str(err.value)


def test_case_id_from_a_manifest_path() -> None:
    assert case_id_from_path("./imagesTr/liver_3.nii.gz") == "liver_3"
    assert case_id_from_path("a.b.nrrd") == "a.b"
    assert case_id_from_path("/x/series_7/") == "series_7"
    assert case_id_from_path("notes.gz") == "notes.gz"  # one rule: a bare .gz is no scan suffix
