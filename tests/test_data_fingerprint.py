"""Dataset fingerprint: reoriented median spacing, anisotropy rule, CT foreground statistics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from medresunet.config import DataConfig
from medresunet.data.fingerprint import fingerprint, reoriented_spacing, target_spacing_from
from tests.synthetic import make_affine, sphere_phantom, write_nifti


def _case(tmp_path, name, spacing, kind="ras", seed=0):
    image, label = sphere_phantom((20, 18, 10), seed=seed, spacing=spacing)
    aff = make_affine(kind, spacing=spacing)
    img = write_nifti(tmp_path / f"{name}.nii.gz", image, aff)
    lab = write_nifti(tmp_path / f"{name}_seg.nii.gz", label, aff, dtype=np.uint8)
    case = SimpleNamespace(case_id=name, images=(img,), label=lab)
    return case, image, label


def test_reoriented_spacing_permutes_axes():
    aff = np.eye(4)
    aff[:3, :3] = [[0, 1.0, 0], [0, 0, -1.5], [3.0, 0, 0]]   # voxel axes: S, R, P
    assert reoriented_spacing(aff, "RAS") == pytest.approx((1.0, 1.5, 3.0))
    assert reoriented_spacing(make_affine("oblique", (1, 2, 3)), "RAS") == pytest.approx((1, 2, 3))


def test_target_spacing_median_and_thick_axis():
    assert target_spacing_from([[1, 1, 2], [1, 1, 2], [0.5, 0.5, 1]]) == pytest.approx((1, 1, 2))
    # median (1, 1, 4) is anisotropic: the thick axis takes the 10th percentile (2.4)
    assert target_spacing_from([[1, 1, 4], [1, 1, 4], [0.8, 0.8, 2]]) == pytest.approx((1, 1, 2.4))


def test_fingerprint_spacing_and_ct_stats(tmp_path):
    c1, im1, lb1 = _case(tmp_path, "a", (1.0, 1.0, 3.0), "lps", 0)
    c2, im2, lb2 = _case(tmp_path, "b", (1.0, 1.0, 3.0), "oblique", 1)
    c3, im3, lb3 = _case(tmp_path, "c", (0.8, 0.8, 2.5), "ras", 2)
    cfg = DataConfig(patch_size=(16, 16, 8))
    prep = fingerprint([c1, c2, c3], ("CT",), cfg, spatial_dims=3, quiet=True)
    assert prep.target_spacing == pytest.approx((1.0, 1.0, 3.0))
    fg = np.concatenate([im[lb > 0] for im, lb in ((im1, lb1), (im2, lb2), (im3, lb3))]).astype(np.float64)
    lo, hi = np.percentile(fg, [0.5, 99.5])
    norm = prep.normalization[0]
    assert norm.scheme == "ct"
    assert norm.clip == pytest.approx((lo, hi), rel=1e-4, abs=1e-2)
    clipped = np.clip(fg, lo, hi)
    assert norm.mean == pytest.approx(clipped.mean(), rel=1e-4)
    assert norm.std == pytest.approx(clipped.std(), rel=1e-4)

    windowed = fingerprint([c1], ("CT",), DataConfig(patch_size=(16, 16, 8), ct_window=(-50.0, 100.0),
                                                      target_spacing=(2.0, 2.0, 2.0)), 3, quiet=True)
    assert windowed.normalization[0].clip == (-50.0, 100.0)
    assert windowed.target_spacing == (2.0, 2.0, 2.0)
    assert windowed.normalization[0].mean == pytest.approx(np.clip(im1[lb1 > 0], -50, 100).mean(), rel=1e-4)


def test_fingerprint_mr_channels_are_zscore(tmp_path):
    c1, _, _ = _case(tmp_path, "a", (1.0, 1.0, 3.0))
    prep = fingerprint([c1], ("T2",), DataConfig(patch_size=(16, 16)), spatial_dims=2, quiet=True)
    assert prep.normalization[0].scheme == "zscore" and prep.normalization[0].mean is None
    assert prep.spatial_dims == 2 and prep.patch_size == (16, 16)
