"""The MONAI loader gives RAS affines and (i, j, k) arrays for NIfTI, NRRD/MHA and DICOM."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medresunet.errors import ScanError
from medresunet.io import make_loader, read_volume
from tests.dicom_fixtures import write_dicom_series
from tests.synthetic import make_affine, write_nifti

SHAPE = (16, 12, 8)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _volume():
    return np.random.default_rng(0).integers(-1000, 1000, SHAPE).astype(np.int16)


def _write_itk(path, volume, affine):
    """Write (I, J, K) + RAS affine with SimpleITK (LPS, array k, j, i)."""
    lps = LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("kind", ["lps", "oblique_lh"])
def test_nifti_loader_matches_nibabel(tmp_path, kind):
    affine = make_affine(kind, (0.8, 0.9, 2.5))
    p = write_nifti(tmp_path / "a.nii.gz", _volume(), affine, dtype=np.int16, slope=2.0, inter=-10)
    t = make_loader("image")({"image": str(p)})["image"]
    img = nib.load(p)
    assert tuple(t.shape) == SHAPE
    np.testing.assert_allclose(t.affine.numpy(), img.affine, atol=1e-6)
    np.testing.assert_allclose(t.numpy(), img.get_fdata(), atol=1e-3)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_loader_ras(tmp_path, suffix):
    affine = make_affine("oblique", (0.8, 0.9, 2.5))
    vol = _volume()
    p = _write_itk(tmp_path / f"a{suffix}", vol, affine)
    t = make_loader(["image"])({"image": str(p)})["image"]
    np.testing.assert_allclose(t.affine.numpy(), affine, atol=1e-4)
    np.testing.assert_array_equal(t.numpy(), vol)
    arr, geom = read_volume(p)
    assert geom.source == "itk"
    np.testing.assert_array_equal(arr, vol)


def test_dicom_twin_world_positions(tmp_path):
    affine = make_affine("oblique", (0.8, 0.9, 2.5))
    vol = _volume()
    nii = write_nifti(tmp_path / "twin.nii.gz", vol, affine, dtype=np.int16)
    write_dicom_series(tmp_path / "dcm", vol, affine)
    loader = make_loader(["a", "b"])
    out = loader({"a": str(nii), "b": str(tmp_path / "dcm")})
    a, b = out["a"], out["b"]
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    voxel = np.array([3.0, 7.0, 5.0, 1.0])
    np.testing.assert_allclose(a.affine.numpy() @ voxel, b.affine.numpy() @ voxel, atol=1e-3)


def test_channels_stacked_and_mismatch(tmp_path):
    affine = make_affine("ras")
    p1 = write_nifti(tmp_path / "c1.nii.gz", _volume(), affine)
    p2 = _write_itk(tmp_path / "c2.mha", _volume(), affine)
    t = make_loader("image")({"image": [str(p1), str(p2)]})["image"]
    assert tuple(t.shape) == (2, *SHAPE)
    p3 = write_nifti(tmp_path / "c3.nii.gz", _volume(), make_affine("lps"))
    with pytest.raises(ScanError, match="c3.nii.gz"):
        make_loader("image")({"image": [str(p1), str(p3)]})


def test_loader_errors_are_scan_errors(tmp_path):
    (tmp_path / "text.nii.gz").write_text("not an image")
    (tmp_path / "junk.mha").write_bytes(b"\x00\x01garbage")
    loader = make_loader("image")
    for name in ("text.nii.gz", "junk.mha"):
        with pytest.raises(ScanError, match=name):
            loader({"image": str(tmp_path / name)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError, match="no DICOM"):
        loader({"image": str(tmp_path / "empty")})
