"""Phantom generator and DICOM export: determinism, anatomy, geometry, round trips."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medresunet.data.phantoms import LABELS, grid_affine, make_demo_dataset, make_phantom_case
from medresunet.io import read_volume
from medresunet.io.dicom_export import right_handed, write_dicom_series

COARSE = (4.0, 4.0, 4.0)  # tiny volumes (36 x 30 x 24 voxels)


def test_deterministic_for_a_seed():
    a = make_phantom_case(3, spacing=COARSE, orientation_kind="oblique")
    b = make_phantom_case(3, spacing=COARSE, orientation_kind="oblique")
    c = make_phantom_case(4, spacing=COARSE, orientation_kind="oblique")
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert not np.array_equal(a.label, c.label)


@pytest.mark.parametrize("kind,spacing", [("ras", (3.0, 3.0, 3.0)), ("lps", (2.5, 2.5, 5.0)),
                                          ("oblique", (3.0, 3.0, 4.5))])
def test_anatomy_and_geometry(kind, spacing):
    case = make_phantom_case(1, spacing=spacing, orientation_kind=kind)
    image, label, affine = case
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == label.shape == tuple(int(np.ceil(f / s)) for f, s in zip((144, 120, 96), spacing, strict=True))
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), spacing)
    direction = affine[:3, :3] / np.asarray(spacing)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    if kind == "ras":
        np.testing.assert_allclose(direction, np.eye(3))
    elif kind == "lps":
        np.testing.assert_allclose(direction, np.diag([-1, -1, 1]))
    else:
        assert abs(direction[0, 1]) > 0.2 and abs(direction[1, 2]) > 0.05  # tilted
    # the grid is centred on the body: its central voxel lies within 8 mm of the world origin
    centre = affine @ np.r_[(np.array(label.shape) - 1) / 2, 1.0]
    assert np.all(np.abs(centre[:3]) <= 8.0 + 1e-6)
    # all organs present, inside the body (soft tissue, not air), away from the grid border
    assert set(np.unique(label)) == set(LABELS.values())
    assert image[label > 0].min() > -300
    border = np.ones(label.shape, bool)
    border[1:-1, 1:-1, 1:-1] = False
    assert not label[border].any()
    # volumes in mL: large liver, medium kidney, small lesion
    ml = {n: (label == v).sum() * np.prod(spacing) / 1000 for n, v in LABELS.items() if v}
    assert 60 < ml["liver"] < 160 and 10 < ml["kidney"] < 35 and 3 < ml["lesion"] < 15
    assert ml["liver"] > 2 * ml["kidney"] > 2 * ml["lesion"] * 0.9
    # CT-like intensities: air, distinct organ means
    assert image.min() >= -1024 and np.percentile(image, 5) < -900
    means = {n: image[label == v].mean() for n, v in LABELS.items() if v}
    assert means["kidney"] > means["liver"] + 40 > means["lesion"] + 80


def test_anatomy_lives_in_world_coordinates():
    """The same seed on two grids gives the same organs at the same world positions."""
    ras = make_phantom_case(7, spacing=(3.0, 3.0, 3.0), orientation_kind="ras")
    lps = make_phantom_case(7, spacing=(3.0, 3.0, 3.0), orientation_kind="lps")

    def centroid(case):
        ijk = np.argwhere(case.label == LABELS["liver"]).mean(0)
        return case.affine[:3, :3] @ ijk + case.affine[:3, 3]

    np.testing.assert_allclose(centroid(lps), centroid(ras), atol=0.5)
    # an LPS grid is the RAS grid with the first two axes reversed
    assert np.mean(lps.label != ras.label[::-1, ::-1, :]) < 1e-3


def test_mr_modality_and_two_organs():
    image, label, _ = make_phantom_case(2, spacing=COARSE, modality="MR", n_organs=2)
    assert image.min() >= 0 and set(np.unique(label)) == {0, 1, 2}
    with pytest.raises(ValueError, match="modality"):
        make_phantom_case(2, spacing=COARSE, modality="PET")


def test_grid_affine_rejects_unknown_kind():
    with pytest.raises(ValueError, match="orientation"):
        grid_affine("sideways", (1, 1, 1), (4, 4, 4))


@pytest.mark.parametrize("kind", ["lps", "oblique", "left_handed"])
def test_dicom_export_round_trip(tmp_path, kind):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 1500, size=(7, 5, 4)).astype(np.float32)
    affine = grid_affine("lps" if kind == "lps" else "oblique", (0.7, 0.8, 2.5), hu.shape, (10.0, -20.0, 30.0))
    if kind == "left_handed":
        affine[:3, 1] *= -1
    folder = write_dicom_series(hu, affine, tmp_path / "series", patient_id="p1", seed=5)
    files = sorted(folder.iterdir())
    assert len(files) == 4 and not list(tmp_path.glob(".tmp-*"))
    array, geometry = read_volume(folder)  # the project's DICOM reader
    got = geometry.affine
    want_array, want_affine = right_handed(hu, affine)
    np.testing.assert_array_equal(array, want_array)
    np.testing.assert_allclose(got, want_affine, atol=1e-5)
    # same voxels at the same world positions as the input, whatever the handedness
    corner = np.array([6, 4, 3, 1.0])
    flipped = corner.copy()
    if kind == "left_handed":
        flipped[2] = 0
    np.testing.assert_allclose(got @ flipped, affine @ corner, atol=1e-5)

    import pydicom

    headers = [pydicom.dcmread(f) for f in files]
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert len({h.SOPInstanceUID for h in headers}) == 4
    h = headers[0]
    assert h.Modality == "CT" and float(h.RescaleIntercept) == -1024 and float(h.RescaleSlope) == 1
    assert float(h.SliceThickness) == pytest.approx(2.5)
    assert [float(v) for v in h.PixelSpacing] == pytest.approx([0.8, 0.7])
    lps = np.diag([-1.0, -1.0, 1.0])
    direction = lps @ want_affine[:3, :3] / [0.7, 0.8, 2.5]
    np.testing.assert_allclose([float(v) for v in h.ImageOrientationPatient],
                               np.r_[direction[:, 0], direction[:, 1]], atol=1e-9)
    for k, hk in enumerate(headers):
        np.testing.assert_allclose([float(v) for v in hk.ImagePositionPatient],
                                   lps @ (want_affine @ [0, 0, k, 1])[:3], atol=1e-6)
    # the same UIDs for the same seed
    again = write_dicom_series(hu, affine, tmp_path / "again", patient_id="p1", seed=5)
    assert pydicom.dcmread(sorted(again.iterdir())[0]).SeriesInstanceUID == h.SeriesInstanceUID


def test_dicom_export_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="3D"):
        write_dicom_series(np.zeros((4, 4)), np.eye(4), tmp_path / "a")
    shear = np.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(ValueError, match="orthogonal"):
        write_dicom_series(np.zeros((4, 4, 2)), shear, tmp_path / "b")


def test_dicom_export_read_by_project_reader(tmp_path):
    from medresunet.io import read_volume

    case = make_phantom_case(0, spacing=(6.0, 6.0, 6.0), orientation_kind="oblique")
    folder = write_dicom_series(case.image, case.affine, tmp_path / "ct")
    array, geometry = read_volume(folder)
    assert array.shape == case.image.shape
    np.testing.assert_allclose(array, np.rint(case.image), atol=0.5)
    np.testing.assert_allclose(geometry.affine, case.affine, atol=1e-5)


def test_make_demo_dataset(tmp_path):
    ds = make_demo_dataset(tmp_path / "demo", n_train=3, n_test=2, seed=1, spacing_scale=4.0)
    assert ds.train_ids == ("phantom_000", "phantom_001") and ds.val_ids == ("phantom_002",)
    assert ds.test_ids == ("phantom_003", "phantom_004") and ds.dicom_ids == ("phantom_003",)
    doc = json.loads(ds.manifest.read_text())
    assert doc["channels"] == ["CT"] and doc["labels"] == LABELS
    assert [c["split"] for c in doc["cases"]] == ["train", "train", "val", "test", "test"]
    assert (ds.images_test / "phantom_003").is_dir() and (ds.images_test / "phantom_004.nii.gz").is_file()
    assert nib.load(ds.root / "imagesTr" / "phantom_000.nii.gz").get_data_dtype() == np.float32
    assert nib.load(ds.root / "imagesTr" / "phantom_001.nii.gz").get_data_dtype() == np.int16
    # every image agrees with its label's grid; the DICOM series with its label too
    from medresunet.io import read_geometry
    from medresunet.manifest import load_manifest

    manifest = load_manifest(ds.manifest)
    assert manifest.labels == LABELS and len(manifest.cases) == 5
    for case in manifest.cases:
        image, label = read_geometry(case.images[0]), read_geometry(case.label)
        assert image.shape == label.shape
        np.testing.assert_allclose(image.affine, label.affine, atol=1e-4)
    spacings = {tuple(np.round(read_geometry(c.label).spacing, 3)) for c in manifest.cases}
    assert len(spacings) >= 3  # spacing varies across cases
