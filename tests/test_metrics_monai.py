"""Agreement with MONAI's metric functions on seeded random shapes (Dice 1e-6, mm 1e-4)."""

from __future__ import annotations

import warnings

import monai.metrics as monai_metrics
import numpy as np
import pytest
import torch
from scipy import ndimage

from medresunet.io.geometry import Geometry
from medresunet.metrics import case_metrics
from tests.synthetic import make_affine

TOL = {"dice": 1e-6, "hd_mm": 1e-4, "hd95_mm": 1e-4, "assd_mm": 1e-4, "nsd": 1e-6}


def monai_values(pred, ref, spacing, values, tolerance_mm):
    """MONAI's compute_dice / hausdorff (max, 95) / ASSD (symmetric) / surface dice."""
    yp = torch.stack([torch.from_numpy(pred == v) for v in values])[None]
    yt = torch.stack([torch.from_numpy(ref == v) for v in values])[None]
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": monai_metrics.compute_dice(yp, yt, include_background=True)[0].numpy(),
            "hd_mm": monai_metrics.compute_hausdorff_distance(yp, yt, include_background=True,
                                                              spacing=sp)[0].numpy(),
            "hd95_mm": monai_metrics.compute_hausdorff_distance(yp, yt, include_background=True, percentile=95,
                                                                spacing=sp)[0].numpy(),
            "assd_mm": monai_metrics.compute_average_surface_distance(yp, yt, include_background=True,
                                                                      symmetric=True, spacing=sp)[0].numpy(),
            "nsd": monai_metrics.compute_surface_dice(yp.float(), yt.float(), [tolerance_mm] * len(values),
                                                      include_background=True, spacing=sp)[0].numpy(),
        }


def random_labels(rng, shape, n_labels):
    out = np.zeros(shape, np.uint8)
    for v in range(1, n_labels + 1):
        smooth = ndimage.gaussian_filter(rng.random(shape), rng.uniform(0.8, 2.0))
        mask = smooth > np.quantile(smooth, rng.uniform(0.6, 0.95))
        out[mask & (out == 0)] = v
    return out


def _check(pred, ref, spacing, n_labels, tolerance_mm):
    labels = {"background": 0, **{f"l{v}": v for v in range(1, n_labels + 1)}}
    rows = case_metrics(pred, ref, spacing, labels, nsd_tolerance_mm=tolerance_mm)
    expected = monai_values(pred, ref, spacing, list(range(1, n_labels + 1)), tolerance_mm)
    n_ok = 0
    for i, row in enumerate(rows):
        if row["status"] != "ok":
            continue
        n_ok += 1
        for metric, tol in TOL.items():
            assert row[metric] == pytest.approx(float(expected[metric][i]), abs=tol), (metric, row)
    return n_ok


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["oblique", "oblique_lh", "anisotropic"])
def test_random_3d_shapes_match_monai(seed, kind):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(10, 22, size=3))
    affine = make_affine(kind, spacing=tuple(rng.uniform(0.4, 3.0, size=3)))
    spacing = Geometry(shape, affine, "nifti").spacing  # column norms of an oblique affine
    ref = random_labels(rng, shape, 3)
    # prediction: the reference perturbed (shifted, a label dilated), plus noise blobs
    pred = np.roll(ref, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 3)))
    pred = np.where(ndimage.binary_dilation(pred == 1) & (pred == 0), 1, pred).astype(np.uint8)
    pred[random_labels(rng, shape, 1) > 0] = int(rng.integers(1, 4))
    assert _check(pred, ref, spacing, 3, float(rng.uniform(0.5, 4.0))) > 0


@pytest.mark.parametrize("seed", range(4))
def test_random_2d_shapes_match_monai(seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(20, 40, size=2))
    ref = random_labels(rng, shape, 2)
    pred = random_labels(rng, shape, 2)
    assert _check(pred, ref, tuple(rng.uniform(0.5, 2.0, size=2)), 2, 1.5) > 0


def test_single_voxel_and_border_structures_match_monai():
    ref = np.zeros((9, 9, 9), np.uint8)
    pred = np.zeros((9, 9, 9), np.uint8)
    ref[0:4, 0:9, 0:2] = 1      # touches three volume faces
    pred[0:3, 0:9, 0:3] = 1
    ref[7, 7, 7] = 2            # single voxels
    pred[8, 6, 8] = 2
    assert _check(pred, ref, (1.1, 0.6, 2.4), 2, 2.0) == 2
