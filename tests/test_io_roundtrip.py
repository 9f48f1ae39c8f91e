"""read -> write_segmentation -> re-read keeps shape, affine and NIfTI qform/sform codes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medresunet.errors import ScanError
from medresunet.io import (
    Geometry,
    read_geometry,
    read_volume,
    write_probabilities,
    write_segmentation,
)
from tests.synthetic import make_affine, write_nifti

SHAPE = (16, 12, 8)


def _labels(shape, top=2):
    rng = np.random.default_rng(1)
    return rng.integers(0, top + 1, shape).astype(np.int64)


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique", "oblique_lh", "anisotropic"])
def test_nifti_round_trip(tmp_path, kind):
    affine = make_affine(kind)
    src = write_nifti(tmp_path / "scan.nii.gz", np.zeros(SHAPE, np.float32) + 3, affine)
    array, geom = read_volume(src)
    assert array.shape == SHAPE and geom.shape == SHAPE and geom.source == "nifti"
    np.testing.assert_allclose(geom.affine, affine, atol=1e-4)
    assert read_geometry(src).same_grid(geom)
    out = write_segmentation(_labels(SHAPE), geom, tmp_path / "out" / "seg.nii.gz")
    img = nib.load(out)
    assert img.shape == SHAPE and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    np.testing.assert_allclose(img.header.get_qform(), affine, atol=1e-4)
    assert img.header.get_qform(coded=True)[1] == 1 and img.header.get_sform(coded=True)[1] == 1
    np.testing.assert_array_equal(np.asarray(img.dataobj), _labels(SHAPE))
    again = read_geometry(out)
    assert again.same_grid(geom)
    np.testing.assert_allclose(again.spacing, np.linalg.norm(affine[:3, :3], axis=0), atol=1e-5)


def test_codes_kept(tmp_path):
    affine = make_affine("oblique", (0.7, 0.8, 2.0))
    img = nib.Nifti1Image(np.ones(SHAPE, np.float32), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=4)
    nib.save(img, tmp_path / "c.nii.gz")
    geom = read_geometry(tmp_path / "c.nii.gz")
    assert (geom.qform_code, geom.sform_code) == (1, 4)
    out = nib.load(write_segmentation(np.zeros(SHAPE, np.uint8), geom, tmp_path / "s.nii.gz"))
    assert out.header.get_qform(coded=True)[1] == 1 and out.header.get_sform(coded=True)[1] == 4
    np.testing.assert_allclose(out.affine, affine, atol=1e-4)


def test_int16_scaled_and_float32(tmp_path):
    affine = make_affine("anisotropic")
    values = np.random.default_rng(0).uniform(-1000, 1000, SHAPE)
    p = write_nifti(tmp_path / "i.nii.gz", values, affine, dtype=np.int16, slope=0.5, inter=-100)
    array, geom = read_volume(p)
    np.testing.assert_allclose(array, values, atol=0.26)
    p32 = write_nifti(tmp_path / "f.nii", values.astype(np.float32), affine)
    array32, geom32 = read_volume(p32)
    assert array32.dtype == np.float32 and geom32.same_grid(geom)
    out = write_segmentation(_labels(SHAPE), geom, tmp_path / "s.nii.gz")
    assert read_geometry(out).same_grid(geom)


def test_2d_nifti_and_uint16(tmp_path):
    affine = make_affine("oblique", (0.5, 0.6, 1.0))
    p = write_nifti(tmp_path / "two.nii.gz", np.ones((16, 12), np.float32), affine)
    array, geom = read_volume(p)
    assert array.shape == (16, 12) and geom.shape == (16, 12) and len(geom.spacing) == 2
    labels = _labels((16, 12), top=300)
    out = write_segmentation(labels, geom, tmp_path / "s.nii.gz")
    img = nib.load(out)
    assert img.shape == (16, 12) and img.get_data_dtype() == np.uint16
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels)


def test_write_checks_and_probabilities(tmp_path):
    geom = Geometry(shape=SHAPE, affine=make_affine("lps"), source="dicom")
    with pytest.raises(ValueError, match="shape"):
        write_segmentation(np.zeros((4, 4, 4)), geom, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError):
        write_segmentation(np.full(SHAPE, -1), geom, tmp_path / "x.nii.gz")
    out = nib.load(write_segmentation(np.ones(SHAPE, bool), geom, tmp_path / "d.nii.gz"))
    assert out.header.get_sform(coded=True)[1] == 1 and out.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(out.affine, geom.affine, atol=1e-4)
    probs = np.random.default_rng(0).random((3, *SHAPE)).astype(np.float32)
    img = nib.load(write_probabilities(probs, geom, tmp_path / "p.nii.gz"))
    assert img.shape == (*SHAPE, 3)
    np.testing.assert_allclose(np.moveaxis(np.asarray(img.dataobj), -1, 0), probs)
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("content", [b"hello, not an image", b"\x1f\x8b\x08\x00broken gzip"])
def test_bad_nifti(tmp_path, content):
    p = tmp_path / "bad.nii.gz"
    p.write_bytes(content)
    with pytest.raises(ScanError, match="bad.nii.gz"):
        read_volume(p)


def test_truncated_nan_and_4d(tmp_path):
    affine = make_affine("ras")
    good = write_nifti(tmp_path / "g.nii.gz", np.random.default_rng(0).random(SHAPE), affine)
    data = good.read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanError, match="t.nii.gz"):
        read_volume(tmp_path / "t.nii.gz")
    nan = np.zeros(SHAPE, np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(ScanError, match="NaN"):
        read_volume(write_nifti(tmp_path / "n.nii.gz", nan, affine))
    with pytest.raises(ScanError, match="shape"):
        read_volume(write_nifti(tmp_path / "4d.nii.gz", np.zeros((*SHAPE, 2), np.float32), affine))
    array, geom = read_volume(write_nifti(tmp_path / "s.nii.gz", np.zeros((*SHAPE, 1)), affine))
    assert array.shape == SHAPE == geom.shape
    with pytest.raises(ScanError, match="no such"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ScanError, match="unsupported"):
        read_geometry(tmp_path / "x.txt")


def _sheared_affine() -> np.ndarray:
    """A gantry-tilted CT: slices stacked 15 degrees off their normal (column 3 leans in y)."""
    affine = make_affine("lps", (0.8, 0.8, 2.5))
    affine[:3, 2] = [0.0, -2.5 * np.sin(np.radians(15)), 2.5 * np.cos(np.radians(15))]
    return affine


def _assert_sform_only(path, affine):
    img = nib.load(path)
    assert img.header.get_qform(coded=True)[1] == 0, "a qform would drop the shear"
    sform, scode = img.header.get_sform(coded=True)
    assert scode > 0
    np.testing.assert_allclose(sform, affine, atol=1e-4)
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)


def test_sheared_nifti_gets_qform_code_0(tmp_path):
    affine = _sheared_affine()
    src = write_nifti(tmp_path / "tilt.nii.gz", np.zeros(SHAPE, np.float32), affine)
    geom = read_geometry(src)
    np.testing.assert_allclose(geom.affine, affine, atol=1e-4)
    out = write_segmentation(_labels(SHAPE), geom, tmp_path / "seg.nii.gz")
    _assert_sform_only(out, affine)
    assert read_geometry(out).same_grid(geom)


def test_tilted_dicom_series_gets_qform_code_0(tmp_path):
    from tests.dicom_fixtures import write_dicom_series

    affine = _sheared_affine()
    write_dicom_series(tmp_path / "ct", np.zeros(SHAPE) - 1000.0, affine)
    array, geom = read_volume(tmp_path / "ct")
    assert geom.source == "dicom"
    np.testing.assert_allclose(geom.affine, affine, atol=1e-4)
    out = write_segmentation(_labels(SHAPE), geom, tmp_path / "seg.nii.gz")
    _assert_sform_only(out, affine)


def test_orthogonal_affine_keeps_qform(tmp_path):
    geom = Geometry(shape=SHAPE, affine=make_affine("oblique_lh", (0.7, 0.9, 2.0)), source="dicom")
    img = nib.load(write_segmentation(_labels(SHAPE), geom, tmp_path / "seg.nii.gz"))
    assert img.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(img.header.get_qform(), geom.affine, atol=1e-4)
