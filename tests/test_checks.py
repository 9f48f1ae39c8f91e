"""check_cases on tiny NIfTI files: grids, label values, unreadable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medresunet.data.checks import check_cases
from medresunet.errors import ManifestError
from medresunet.manifest import Case
from tests.synthetic import make_affine, write_nifti

LABELS = {"background": 0, "liver": 1, "tumour": 2}
SHAPE = (6, 5, 4)


@pytest.fixture
def scans(tmp_path: Path) -> dict[str, Path]:
    aff = make_affine("oblique", spacing=(1.0, 1.5, 3.0))
    label = np.zeros(SHAPE, np.uint8)
    label[2:4, 2:4, 1:3] = 1
    label[1, 1, 1] = 2
    paths = {
        "ct": write_nifti(tmp_path / "ct.nii.gz", np.ones(SHAPE, np.float32), aff),
        "pet": write_nifti(tmp_path / "pet.nii.gz", np.ones(SHAPE, np.float32), aff),
        "label": write_nifti(tmp_path / "label.nii.gz", label, aff),
        "label_float": write_nifti(tmp_path / "lf.nii.gz", label.astype(np.float32), aff),
        "shifted": write_nifti(tmp_path / "shifted.nii.gz", label, aff + _shift(0.5)),
        "small": write_nifti(tmp_path / "small.nii.gz", label[:5], aff),
        "outside": write_nifti(tmp_path / "outside.nii.gz", label * 3, aff),
        "fraction": write_nifti(tmp_path / "fraction.nii.gz", label * 0.5, aff, dtype=np.float32),
        "garbage": tmp_path / "garbage.nii.gz",
    }
    paths["garbage"].write_bytes(b"not a nifti")
    return paths


def _shift(mm: float) -> np.ndarray:
    m = np.zeros((4, 4))
    m[0, 3] = mm
    return m


def case(cid: str, images, label=None) -> Case:
    return Case(cid, tuple(images), label)


def problems(cases, n_channels=1) -> str:
    with pytest.raises(ManifestError) as info:
        check_cases(cases, LABELS, n_channels)
    return str(info.value)


def test_good_cases_pass(scans) -> None:
    check_cases([case("a", [scans["ct"], scans["pet"]], scans["label"]),
                 case("b", [scans["ct"], scans["pet"]], scans["label_float"]),
                 case("c", [scans["ct"], scans["pet"]])], LABELS, 2)


def test_label_grid_differs(scans) -> None:
    msg = problems([case("shape", [scans["ct"]], scans["small"]),
                    case("affine", [scans["ct"]], scans["shifted"])])
    assert "2 of 2 case(s)" in msg
    assert "case 'shape'" in msg and "small.nii.gz" in msg and "shape (6, 5, 4)" in msg and "got shape (5, 5, 4)" in msg
    assert "case 'affine'" in msg and "shifted.nii.gz" in msg and "differing by up to 0.5 mm" in msg


def test_label_values(scans) -> None:
    msg = problems([case("out", [scans["ct"]], scans["outside"]),
                    case("frac", [scans["ct"]], scans["fraction"]),
                    case("ok", [scans["ct"]], scans["label"])])
    assert "2 of 3 case(s)" in msg and "case 'ok'" not in msg
    assert "outside.nii.gz" in msg and "expected values in the label map [0, 1, 2], got [3, 6]" in msg
    assert "fraction.nii.gz" in msg and "non-integer values [0.5]" in msg


def test_channel_grids_and_count(scans) -> None:
    msg = problems([case("grid", [scans["ct"], scans["small"]]),
                    case("count", [scans["ct"]])], n_channels=2)
    assert "case 'grid'" in msg and "small.nii.gz (channel 1)" in msg and "got shape (5, 5, 4)" in msg
    assert "case 'count'" in msg and "expected 2 image(s), one per channel, got 1" in msg


def test_unreadable_and_missing(scans, tmp_path: Path) -> None:
    msg = problems([case("bad", [scans["garbage"]], tmp_path / "missing.nii.gz")])
    assert "garbage.nii.gz" in msg and "unreadable" in msg and "missing.nii.gz" in msg
