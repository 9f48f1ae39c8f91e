"""The slab-wise inversion equals MONAI's Invertd on every geometry, with and without a crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medresunet.inference.predictor import Predictor
from medresunet.inference.resample_back import (
    AxisMap,
    argmax_classes,
    axis_maps,
    interpolation_matrix,
    invert_with_monai,
    plan_from_image,
    resample_to_scan,
)
from tests.synthetic import make_affine, write_nifti
from tests.test_inference_predictor import GEOMETRIES, checkpoint, preprocessing, structure


def _scores(shape, k: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.nn.functional.avg_pool3d(torch.randn((1, k, *shape), generator=g) * 4, 3, 1, 1)[0]
    return torch.softmax(logits * 4, 0)


def _both(path, spacing, crop, return_probabilities=True):
    prep = preprocessing(spacing=spacing, scheme="ct", crop=crop)
    predictor = Predictor(checkpoint(prep), device="cpu", model=torch.nn.Identity())
    scan = predictor.load([path])
    image = scan.data["image"]
    probs = _scores(tuple(image.shape[1:]))
    reference = torch.as_tensor(invert_with_monai(scan.transforms, image, probs)).float().numpy()
    plan = plan_from_image(image)
    assert plan is not None, image.applied_operations
    labels, full = resample_to_scan(probs, plan, return_probabilities, slab=5)
    return plan, labels, full, reference, tuple(image.shape[1:])


@pytest.mark.parametrize("crop", [False, True])
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.7, 0.6, 2.3)])
def test_equals_invertd(tmp_path, name, crop, spacing):
    kind, scan_spacing, dtype, slope, inter = GEOMETRIES[name]
    shape = (23, 19, 11)
    image = np.where(structure(shape), 500.0, -1000.0).astype(np.float32)  # air around: the crop removes it
    path = write_nifti(tmp_path / "x.nii.gz", image, make_affine(kind, scan_spacing), dtype=dtype,
                       slope=slope, inter=inter)
    plan, labels, full, reference, grid = _both(path, spacing, crop)
    assert plan.scan_shape == shape
    assert full.shape == reference.shape and full.dtype == np.float32
    np.testing.assert_allclose(full, reference, atol=2e-5)
    assert labels.dtype == np.uint8
    # Where a crop removed the grid every class has probability 0 here (label 0, as Invertd's
    # zero padding means) but Invertd's own coordinate rounding leaves ~1e-7 there, whose
    # argmax is noise: compare labels where the prediction says something.
    informative = reference.max(0) > 1e-3
    agree = (labels == np.argmax(reference, 0))[informative].mean()
    assert agree > 0.999, agree  # only float near-ties may differ
    assert not labels[reference.max(0) < 1e-6].any()
    if crop:
        assert plan.grid_shape != grid  # the crop removed the air around the structure


def test_labels_only_matches_with_probabilities(tmp_path):
    path = write_nifti(tmp_path / "x.nii.gz", np.where(structure((20, 16, 9)), 400.0, -900.0).astype(np.float32),
                       make_affine("oblique", (0.8, 0.8, 2.5)))
    _, labels, full, _, _ = _both(path, (1.3, 1.3, 1.3), True, return_probabilities=True)
    _, labels_only, none, _, _ = _both(path, (1.3, 1.3, 1.3), True, return_probabilities=False)
    assert none is None and np.array_equal(labels, labels_only)


def test_argmax_classes_ties_and_dtype():
    scores = torch.tensor([[[1.0, 2.0, 3.0]], [[1.0, 5.0, 0.0]], [[0.5, 5.0, 3.0]]])
    out = argmax_classes(scores)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 1, 0]]  # ties go to the lowest class, as torch.argmax
    many = torch.rand(300, 4, 5)
    assert argmax_classes(many).dtype == np.uint16
    assert np.array_equal(argmax_classes(many), torch.argmax(many, 0).numpy())


def test_interpolation_matrix_rows():
    mat = interpolation_matrix(AxisMap(0, 0.5, -0.25), 6, 3).numpy()
    np.testing.assert_allclose(mat.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mat[0], [1.0, 0.0, 0.0])  # clamped at the border
    np.testing.assert_allclose(mat[1], [0.75, 0.25, 0.0])  # position 0.25
    np.testing.assert_allclose(mat[5], [0.0, 0.0, 1.0])  # position 2.25 -> clamped


def test_axis_maps_permutation_and_refusal():
    m = np.eye(4)
    m[:3, :3] = [[0.0, 2.0, 0.0], [0.0, 0.0, -1.0], [0.5, 0.0, 0.0]]
    m[:3, 3] = [1.0, 2.0, 3.0]
    maps = axis_maps(m)
    assert [(a.source, a.scale, a.offset) for a in maps] == [(2, 0.5, 3.0), (0, 2.0, 1.0), (1, -1.0, 2.0)]
    m[0, 0] = 0.3  # scan axis 0 now reads two grid axes: not separable
    assert axis_maps(m) is None


def test_predictor_takes_the_slab_path_for_3d_scans(tmp_path, monkeypatch):
    from tests.test_inference_predictor import THRESHOLD, Oracle

    mask = structure((22, 18, 10))
    path = write_nifti(tmp_path / "x.nii.gz", np.where(mask, 100.0, 0.0).astype(np.float32),
                       make_affine("oblique_lh", (0.9, 1.1, 2.0)))
    predictor = Predictor(checkpoint(preprocessing(spacing=(1.0, 1.0, 1.0), crop=True)), device="cpu",
                          model=Oracle(THRESHOLD))

    def no_invertd(*args, **kwargs):
        raise AssertionError("Invertd used for a 3D scan")

    monkeypatch.setattr("medresunet.inference.resample_back.invert_with_monai", no_invertd)
    labels = predictor.predict([path])
    assert labels.shape == mask.shape
    assert 2 * (labels.astype(bool) & mask).sum() / (labels.sum() + mask.sum()) > 0.9


def test_one_inverse_fast_path_or_invertd_fallback(tmp_path, monkeypatch):
    """invert_to_scan is the only inverse: slabs for the 3D scan, Invertd for the 2D one."""
    import medresunet.data.transforms as transforms
    import medresunet.inference.resample_back as rb

    assert not hasattr(Predictor, "_invert") and not hasattr(transforms, "invert_prediction")
    used = []
    real = rb.invert_with_monai
    monkeypatch.setattr(rb, "invert_with_monai", lambda *a, **k: used.append(1) or real(*a, **k))
    for shape, dims in (((23, 19, 11), 3), ((24, 20), 2)):
        path = write_nifti(tmp_path / f"x{dims}.nii.gz", np.where(structure(shape), 500.0, -1000.0).astype(np.float32),
                           make_affine("lps", (0.7, 0.9, 1.0)))
        spacing = (1.0, 1.0, 1.0) if dims == 3 else (0.7, 0.9, 1.0)
        predictor = Predictor(checkpoint(preprocessing(spacing=spacing, scheme="ct", dims=dims)), device="cpu",
                              model=torch.nn.Identity())
        scan = predictor.load([path])
        probs = _scores(tuple(scan.data["image"].shape[1:])) if dims == 3 else \
            torch.softmax(torch.randn(3, *scan.data["image"].shape[1:]), 0)
        labels, full = rb.invert_to_scan(probs, scan.data["image"], scan.transforms, shape, True)
        assert labels.shape == shape and full.shape == (3, *shape)
        assert len(used) == (0 if dims == 3 else 1)
