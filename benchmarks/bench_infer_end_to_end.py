"""End-to-end inference: ``medresunet-infer`` against a MONAI script doing the same steps.

One CT-like NIfTI scan (512x512x200 int16, 0.8x0.8x2.5 mm, LPS-like axes) and one checkpoint
(the ``configs/3d.yaml`` ResidualUNet, random weights with seed 0, 3 classes; CT
normalisation clip [-200, 300] HU, z-score with mean 50 and std 100; no foreground crop;
target spacing 1.6x1.6x2.5 mm, quick: 4x4x4 mm so that the run stays short). Each side runs
as its own process, timed from start to exit, with its own peak resident memory (its
``VmHWM`` at exit; ``ru_maxrss`` would carry the benchmark process's RSS over the exec):

* medresunet: ``python -m pipelines.infer --model CKPT --input SCAN --output DIR --device cpu``;
* MONAI: the script in :data:`MONAI_SCRIPT` -- ``LoadImaged`` (nibabel),
  ``EnsureChannelFirstd``, ``Orientationd(RAS)``, ``Spacingd`` (bilinear),
  ``ScaleIntensityRanged`` (the same clip and scaling), ``sliding_window_inference`` fp32
  (Gaussian, overlap 0.5, 2 windows a pass, the same network and weights), softmax,
  ``Invertd`` back to the scan's grid, argmax, ``SaveImage`` (uint8 ``.nii.gz``).

Reported: the time ratio, both peak memories, and the voxel agreement of the two label maps.

``python benchmarks/bench_infer_end_to_end.py [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FULL = {"shape": (512, 512, 200), "spacing": (0.8, 0.8, 2.5), "target": (1.6, 1.6, 2.5), "repeats": 1}
QUICK = {"shape": (512, 512, 200), "spacing": (0.8, 0.8, 2.5), "target": (4.0, 4.0, 4.0), "repeats": 1}
TINY = {"shape": (40, 36, 24), "spacing": (0.8, 0.8, 2.5), "target": (2.0, 2.0, 2.5), "repeats": 1}
CLIP = (-200.0, 300.0)
MEAN, STD = 50.0, 100.0
LABELS = {"background": 0, "organ": 1, "lesion": 2}

MONAI_SCRIPT = '''
import sys, numpy as np, torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import (Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd,
                              SaveImage, ScaleIntensityRanged, Spacingd)
from medresunet.networks import ResidualUNet

ckpt_path, scan, out_dir = sys.argv[1:4]
ckpt = torch.load(ckpt_path, weights_only=True)
prep = ckpt["preprocessing"]
norm = prep["normalization"][0]
lo, hi = norm["clip"]
b_lo, b_hi = (lo - norm["mean"]) / norm["std"], (hi - norm["mean"]) / norm["std"]
net = ResidualUNet(**ckpt["model"]).eval()
net.load_state_dict(ckpt["state_dict"])
pre = Compose([
    LoadImaged("image", reader="NibabelReader", image_only=True),
    EnsureChannelFirstd("image"),
    Orientationd("image", axcodes="RAS"),
    Spacingd("image", pixdim=prep["target_spacing"], mode="bilinear"),
    ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=b_lo, b_max=b_hi, clip=True),
])
data = pre({"image": scan})
with torch.inference_mode():
    logits = sliding_window_inference(data["image"][None], prep["patch_size"], 2, net, overlap=0.5,
                                      mode="gaussian", cval=b_lo)
    probs = torch.softmax(logits[0], 0)
data["pred"] = MetaTensor(probs, affine=data["image"].affine, meta=dict(data["image"].meta))
data = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(data)
labels = torch.argmax(torch.as_tensor(data["pred"]), 0, keepdim=True).to(torch.uint8)
labels = MetaTensor(labels, affine=data["pred"].affine, meta=dict(data["pred"].meta))
SaveImage(output_dir=out_dir, output_postfix="", output_ext=".nii.gz", output_dtype=np.uint8,
          separate_folder=False, resample=False, print_log=False)(labels)
'''


def write_ct(path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float],
             seed: int = 0) -> Path:
    """A CT-like int16 NIfTI: air, an elliptic body, an organ and a lesion, noise (HU)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x = (np.arange(nx) - nx / 2)[:, None] * spacing[0]
    y = (np.arange(ny) - ny / 2)[None, :] * spacing[1]
    body = (x / (0.42 * nx * spacing[0])) ** 2 + (y / (0.32 * ny * spacing[1])) ** 2 <= 1.0
    vol = np.empty(shape, np.int16)
    for k in range(nz):
        z = (k - nz / 2) * spacing[2]
        organ = ((x - 40) / 90.0) ** 2 + ((y + 10) / 60.0) ** 2 + (z / 120.0) ** 2 <= 1.0
        lesion = ((x - 60) / 15.0) ** 2 + ((y + 5) / 15.0) ** 2 + ((z - 10) / 15.0) ** 2 <= 1.0
        sl = np.where(body, 20.0, -1000.0) + np.where(organ, 40.0, 0.0) + np.where(lesion, -30.0, 0.0)
        sl += rng.normal(0.0, 15.0, sl.shape)
        vol[:, :, k] = sl.astype(np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [nx * spacing[0] / 2, ny * spacing[1] / 2, -nz * spacing[2] / 2]
    img = nib.Nifti1Image(vol, affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, str(path))
    return path


def write_checkpoint(path: Path, target_spacing: tuple[float, float, float], tiny: bool) -> Path:
    """A medresunet checkpoint of the benchmark network (random weights, seed 0)."""
    import medresunet
    from benchmarks.bench_sliding_window import make_network
    from medresunet.config import InferConfig, config_to_dict
    from medresunet.data.preprocessing import ChannelNorm, Preprocessing
    from medresunet.training.checkpoint import FORMAT_VERSION, save_checkpoint

    net = make_network(tiny)
    patch = (16, 16, 16) if tiny else (96, 96, 96)
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": len(LABELS),
              "channels": list(net.channels), "num_res_blocks": list(net.num_res_blocks),
              "norm": "instance", "act": "leakyrelu", "dropout": 0.0, "upsample": "transpose",
              "downsample": "maxpool", "bias": True, "deep_supervision": False}
    prep = Preprocessing(orientation="RAS", target_spacing=target_spacing,
                         normalization=(ChannelNorm("ct", CLIP, MEAN, STD),), crop_foreground=False,
                         patch_size=patch, spatial_dims=3)
    save_checkpoint(path, {
        "format_version": FORMAT_VERSION, "medresunet_version": medresunet.__version__,
        "model": kwargs, "state_dict": {k: v.contiguous() for k, v in net.state_dict().items()},
        "preprocessing": prep.to_dict(), "labels": dict(LABELS), "input_channels": ["CT"],
        "infer": config_to_dict(InferConfig()), "train_state": {}, "config": {},
    })
    return path


def _agreement(a: Path, b: Path) -> float | None:
    import nibabel as nib

    try:
        x = np.asarray(nib.load(str(a)).dataobj)
        y = np.asarray(nib.load(str(b)).dataobj)
    except (OSError, ValueError):
        return None
    if x.shape != y.shape:
        return None
    return float((x == y).mean())


def run(quick: bool = False, tiny: bool = False) -> dict[str, Any]:
    """Run both sides as processes; return the figures (``speedup_vs_monai`` first)."""
    from benchmarks.common import load_average, run_command

    cfg = TINY if tiny else QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        root = Path(tmp)
        scan = write_ct(root / "ct.nii.gz", cfg["shape"], cfg["spacing"])
        ckpt = write_checkpoint(root / "model.pt", cfg["target"], tiny)
        script = root / "monai_infer.py"
        script.write_text(MONAI_SCRIPT, encoding="utf-8")
        ours_cmd = [sys.executable, "-m", "pipelines.infer", "--model", str(ckpt), "--input", str(scan),
                    "--output", str(root / "ours"), "--device", "cpu", "--quiet", "--overwrite"]
        monai_cmd = [sys.executable, str(script), str(ckpt), str(scan), str(root / "monai")]
        ours_runs, monai_runs = [], []
        for _ in range(cfg["repeats"]):
            monai_runs.append(run_command(monai_cmd))
            ours_runs.append(run_command(ours_cmd))
        for name, runs in (("medresunet-infer", ours_runs), ("MONAI script", monai_runs)):
            bad = [r for r in runs if r["returncode"] != 0]
            if bad:
                raise RuntimeError(f"{name} failed (exit {bad[0]['returncode']}): {bad[0]['output_tail']}")
        agreement = _agreement(root / "ours" / "ct.nii.gz", root / "monai" / "ct.nii.gz")
        scan_mb = scan.stat().st_size / 2**20
    ours_s = min(r["seconds"] for r in ours_runs)
    monai_s = min(r["seconds"] for r in monai_runs)
    return {
        "speedup_vs_monai": round(monai_s / ours_s, 3),
        "medresunet_s": round(ours_s, 2),
        "monai_s": round(monai_s, 2),
        "peak_memory_mb": {"medresunet": round(max(r["peak_rss_mb"] for r in ours_runs), 1),
                           "monai": round(max(r["peak_rss_mb"] for r in monai_runs), 1)},
        "label_agreement": None if agreement is None else round(agreement, 5),
        "scan_shape": list(cfg["shape"]),
        "scan_spacing_mm": list(cfg["spacing"]),
        "scan_file_mb": round(scan_mb, 1),
        "target_spacing_mm": list(cfg["target"]),
        "note": "each side is a fresh process (imports included); peak memory is that process's own VmHWM",
        "load_average": load_average(),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv, tiny="--tiny" in sys.argv), indent=2))
