"""Quality at an equal wall-clock budget: medresunet as a user runs it vs the MONAI tutorial recipe.

Two synthetic MR datasets made with :mod:`medresunet.data.phantoms` (liver and kidney;
4 training, 1 validation and 3 test scans each): ``near_isotropic`` (1.2-2.5 mm voxels)
and ``thick_slice`` (about 0.9 x 0.9 x 5 mm). On each, at the same time and with the same
thread count (so both see the same machine load):

* medresunet: ``medresunet-train --manifest M --output RUN --max-minutes T`` (no
  ``--config``: planned, the probe inside the budget), then ``medresunet-infer`` with
  ``RUN/best.pt`` on the test scans;
* MONAI: :mod:`benchmarks.monai_recipe` (the spleen tutorial's UNet, 1.5 mm, 96^3,
  DiceCE, AdamW) trained for T minutes, then predicting the same scans.

Reported per dataset and side: mean Dice per label over the test scans (on each scan's own
grid), steps trained, seconds per step, the share of medresunet's budget spent in training
steps, and the difference medresunet - MONAI.
``python -m benchmarks --only quality --minutes T [--keep DIR]`` (default 15; ``--quick``: 1;
``--keep`` a new folder for the datasets, run folders and predictions).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

LABELS = {"background": 0, "liver": 1, "kidney": 2}
DATASETS = {
    "near_isotropic": [(1.2, 1.2, 1.5), (1.5, 1.5, 1.5), (2.0, 2.0, 2.0), (1.8, 1.8, 2.5)],
    "thick_slice": [(0.9, 0.9, 5.0), (0.85, 0.85, 4.5), (0.95, 0.95, 5.5), (0.9, 0.9, 5.0)],
}
SPLITS = ["train"] * 4 + ["val"] + ["test"] * 3


def make_dataset(root: Path, spacings: list, seed: int = 0, splits: list[str] = SPLITS) -> Path:
    """Write MR phantoms (NIfTI) and a manifest; case ``i`` takes ``spacings[i % len]``."""
    from medresunet.data.phantoms import _save_nifti, make_phantom_case

    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, split in enumerate(splits):
        case = make_phantom_case(seed * 1000 + i, spacing=spacings[i % len(spacings)],
                                 orientation_kind="lps" if i % 3 == 2 else "ras", modality="MR", n_organs=2)
        folder = root / ("imagesTs" if split == "test" else "imagesTr")
        labels = root / ("labelsTs" if split == "test" else "labelsTr")
        folder.mkdir(exist_ok=True)
        labels.mkdir(exist_ok=True)
        cid = f"case{i:02d}"
        _save_nifti(folder / f"{cid}.nii.gz", case.image, case.affine, np.float32)
        _save_nifti(labels / f"{cid}.nii.gz", case.label, case.affine, np.uint8)
        entries.append({"id": cid, "image": f"{folder.name}/{cid}.nii.gz", "label": f"{labels.name}/{cid}.nii.gz",
                        "split": split})
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"channels": ["MR"], "labels": LABELS, "cases": entries}, indent=1))
    return manifest


def dice_of_folder(pred_dir: Path, manifest: Path) -> dict[str, Any]:
    """Mean Dice per label of ``pred_dir/<id>.nii.gz`` against the manifest's test labels."""
    import nibabel as nib

    from medresunet.metrics.overlap import dice_per_label
    from medresunet.training.validation import nanmean

    cases = [c for c in json.loads(manifest.read_text())["cases"] if c["split"] == "test"]
    per_label: dict[str, list[float]] = {n: [] for n, v in LABELS.items() if v}
    missing = []
    for case in cases:
        path = pred_dir / f"{case['id']}.nii.gz"
        if not path.exists():
            missing.append(case["id"])
            continue
        ref = np.asarray(nib.load(manifest.parent / case["label"]).dataobj).astype(np.int64)
        pred = np.asarray(nib.load(path).dataobj).astype(np.int64)
        if pred.shape != ref.shape:
            raise ValueError(f"{path}: shape {pred.shape} differs from its label's {ref.shape}")
        names = {v: n for n, v in LABELS.items() if v}
        for value, dice in dice_per_label(pred, ref, names).items():
            per_label[names[value]].append(dice)
    dice = {n: round(nanmean(v), 4) for n, v in per_label.items()}
    return {"dice": dice, "dice_mean": round(nanmean(dice.values()), 4), "missing": missing}


def _medresunet_side(manifest: Path, work: Path, minutes: float, env: dict[str, str], out: dict) -> None:
    from benchmarks.common import run_command

    run = work / "medresunet_run"
    train = run_command([sys.executable, "-m", "pipelines.train", "--manifest", str(manifest), "--output",
                         str(run), "--max-minutes", str(minutes), "--quiet"], env=env)
    out["train_wall_s"] = round(train["seconds"], 1)
    if train["returncode"] != 0:
        out["error"] = train["output_tail"][-1500:]
        return
    record = json.loads((run / "run.json").read_text())
    steps = record["result"]["global_step"]
    step_s = record["time"]["step_seconds"]
    out.update({"steps": steps, "training_seconds": record["time"]["training_seconds"], "step_seconds": step_s,
                "seconds_per_step": round(step_s / max(1, steps), 4),
                "budget_share_in_steps": round(step_s / (60.0 * minutes), 4),
                "plan": {k: v for k, v in record["plan"].items() if k != "reasons"},
                "patch_size": record["config"]["data"]["patch_size"],
                "channels": record["config"]["model"]["channels"]})
    infer = run_command([sys.executable, "-m", "pipelines.infer", "--model", str(run / "best.pt"), "--input",
                         str(manifest.parent / "imagesTs"), "--output", str(work / "medresunet_pred"), "--quiet"],
                        env=env)
    if infer["returncode"] != 0:
        out["error"] = infer["output_tail"][-1500:]


def _monai_side(manifest: Path, work: Path, minutes: float, threads: int, env: dict[str, str], out: dict) -> None:
    from benchmarks.common import run_command

    res = run_command([sys.executable, "-m", "benchmarks.monai_recipe", "--manifest", str(manifest), "--minutes",
                       str(minutes), "--output", str(work / "monai"), "--threads", str(threads)], env=env)
    out["wall_s"] = round(res["seconds"], 1)
    if res["returncode"] != 0:
        out["error"] = res["output_tail"][-1500:]
        return
    out.update(json.loads((work / "monai" / "result.json").read_text()))


def compare(manifest: Path, work: Path, minutes: float, threads: int) -> dict[str, Any]:
    """Both sides on one dataset, at the same time; Dice, steps and seconds per step."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    ours: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    sides = [threading.Thread(target=_medresunet_side, args=(manifest, work, minutes, env, ours)),
             threading.Thread(target=_monai_side, args=(manifest, work, minutes, threads, env, theirs))]
    for t in sides:
        t.start()
    for t in sides:
        t.join()
    if "error" not in ours:
        ours.update(dice_of_folder(work / "medresunet_pred", manifest))
    if "error" not in theirs:
        theirs.update(dice_of_folder(work / "monai" / "pred", manifest))
    out: dict[str, Any] = {"medresunet": ours, "monai": theirs}
    if "dice" in ours and "dice" in theirs:
        out["dice_gain"] = {n: round(ours["dice"][n] - theirs["dice"][n], 4) for n in ours["dice"]}
    return out


def run(quick: bool = False, minutes: float | None = None, threads: int = 1,
        keep: str | None = None) -> dict[str, Any]:
    """Both datasets in turn; ``minutes`` per side (default 15, quick 1).

    ``keep``: a folder for the datasets, run folders and predictions (kept); default a
    temporary folder, removed at the end.
    """
    import contextlib

    from benchmarks.common import load_average

    minutes = float(minutes if minutes is not None else (1.0 if quick else 15.0))
    result: dict[str, Any] = {"minutes_per_side": minutes, "threads_per_side": threads,
                              "load_average_before": load_average()}
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
    folder = contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="bench-quality-")
    with folder as tmp:
        for name, spacings in DATASETS.items():
            work = Path(tmp) / name
            manifest = make_dataset(work / "data", spacings)
            result[name] = compare(manifest, work, minutes, threads)
            result[name]["load_average_after"] = load_average()
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
