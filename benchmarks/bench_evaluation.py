"""Speed of medresunet's per-case metrics against MONAI's functions, same process, same values.

A synthetic CT-sized case (512x512x200, spacing 0.8x0.8x2.5 mm, four labels: a large organ,
two mid-sized organs and a small one; the prediction shifted, dilated and eroded) and a small
lesion (a few hundred voxels in the same grid). MONAI's side is ``compute_dice``,
``compute_hausdorff_distance`` (HD, and ``percentile=95``), ``compute_average_surface_distance
(symmetric=True)`` and ``compute_surface_dice`` on one-hot tensors; the one-hot conversion is
not counted in MONAI's time (a conservative speed-up).

``python benchmarks/bench_evaluation.py [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np

METRICS = ("dice", "hd_mm", "hd95_mm", "assd_mm", "nsd")


def _ellipsoid_into(vol: np.ndarray, value: int, center, radii_vox) -> None:
    lo = [max(int(c - r) - 1, 0) for c, r in zip(center, radii_vox, strict=True)]
    hi = [min(int(c + r) + 2, n) for c, r, n in zip(center, radii_vox, vol.shape, strict=True)]
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii_vox, strict=True)) <= 1.0
    box = vol[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    box[inside] = value


def make_case(shape=(512, 512, 200), spacing=(0.8, 0.8, 2.5), seed: int = 0):
    """(pred, ref, spacing) uint8 label volumes with four labels of different sizes."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    sp = np.asarray(spacing)
    organs = [  # value, centre (fraction of shape), radii in mm
        (1, (0.35, 0.45, 0.5), (90.0, 70.0, 80.0)),
        (2, (0.70, 0.55, 0.45), (30.0, 25.0, 50.0)),
        (3, (0.62, 0.30, 0.55), (28.0, 22.0, 45.0)),
        (4, (0.50, 0.70, 0.40), (12.0, 10.0, 15.0)),
    ]
    for value, frac, radii_mm in organs:
        centre = np.asarray(frac) * np.asarray(shape)
        radii = np.asarray(radii_mm) / sp
        _ellipsoid_into(ref, value, centre, radii)
        shift = rng.normal(0.0, 2.0, 3) / sp
        scale = 1.0 + rng.normal(0.0, 0.05, 3)
        _ellipsoid_into(pred, value, centre + shift, radii * scale)
    return pred, ref, tuple(spacing)


def make_lesion_case(shape=(512, 512, 200), spacing=(0.8, 0.8, 2.5)):
    """A small lesion (radius ~4 mm) in a full-size grid: the cost should be milliseconds."""
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    sp = np.asarray(spacing)
    centre = np.asarray(shape) * np.array([0.4, 0.6, 0.5])
    _ellipsoid_into(ref, 1, centre, np.array([4.0, 4.0, 4.0]) / sp)
    _ellipsoid_into(pred, 1, centre + np.array([1.0, 0.0, 0.0]), np.array([4.5, 4.0, 3.5]) / sp)
    return pred, ref, tuple(spacing)


def monai_metrics(pred: np.ndarray, ref: np.ndarray, spacing, values, tolerance_mm: float = 2.0):
    """MONAI's values per metric, shape ``(len(values),)``, and the seconds spent in MONAI."""
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    yp = torch.stack([torch.from_numpy(pred == v) for v in values])[None]
    yt = torch.stack([torch.from_numpy(ref == v) for v in values])[None]
    sp = [float(s) for s in spacing]
    n = len(values)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "dice": compute_dice(yp, yt, include_background=True)[0].numpy(),
            "hd_mm": compute_hausdorff_distance(yp, yt, include_background=True, spacing=sp)[0].numpy(),
            "hd95_mm": compute_hausdorff_distance(yp, yt, include_background=True, percentile=95,
                                                  spacing=sp)[0].numpy(),
            "assd_mm": compute_average_surface_distance(yp, yt, include_background=True, symmetric=True,
                                                        spacing=sp)[0].numpy(),
            "nsd": compute_surface_dice(yp.float(), yt.float(), [tolerance_mm] * n, include_background=True,
                                        spacing=sp)[0].numpy(),
        }
    return out, time.perf_counter() - t0


def _compare(pred, ref, spacing, values, repeats: int) -> dict:
    from medresunet.metrics.case import case_metrics

    labels = {f"label_{v}": v for v in values}
    ours = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows = case_metrics(pred, ref, spacing, labels, nsd_tolerance_mm=2.0)
        ours.append(time.perf_counter() - t0)
    ref_vals, t_monai = monai_metrics(pred, ref, spacing, values)
    diffs = {m: max(abs(r[m] - float(ref_vals[m][i])) for i, r in enumerate(rows)) for m in METRICS}
    t_ours = min(ours)
    return {
        "medresunet_s": round(t_ours, 4),
        "monai_s": round(t_monai, 4),
        "speedup": round(t_monai / t_ours, 1),
        "max_abs_diff": {m: float(d) for m, d in diffs.items()},
    }


def run(quick: bool = False) -> dict:
    """Measure both implementations in this process.

    Args:
        quick: a 256x256x100 grid instead of 512x512x200 and one repeat.

    Returns:
        ``{"speedup_vs_monai", "case": {...}, "lesion": {...}, "shape", ...}`` with timings in
        seconds and the largest absolute difference per metric (Dice, mm, NSD).
    """
    shape = (256, 256, 100) if quick else (512, 512, 200)
    spacing = (1.6, 1.6, 5.0) if quick else (0.8, 0.8, 2.5)
    repeats = 1 if quick else 3
    pred, ref, spacing = make_case(shape, spacing)
    case = _compare(pred, ref, spacing, [1, 2, 3, 4], repeats)
    del pred, ref
    lp, lr, spacing = make_lesion_case(shape, spacing)
    lesion = _compare(lp, lr, spacing, [1], repeats)
    return {
        "benchmark": "evaluation",
        "shape": list(shape),
        "spacing_mm": list(spacing),
        "speedup_vs_monai": case["speedup"],
        "case_4_labels": case,
        "small_lesion": lesion,
        "max_abs_diff": {m: max(case["max_abs_diff"][m], lesion["max_abs_diff"][m]) for m in METRICS},
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
