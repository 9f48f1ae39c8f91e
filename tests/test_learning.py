"""Learning is tested: a small network trained on two phantoms segments them (Dice > 0.9).

Through the console scripts, as a user runs them: medresunet-train on a manifest of two
project phantoms (one oblique, one LPS; flips and intensity augmentation on), medresunet-infer
on their scans, Dice against their labels on the scans' own grids. A label-axis, loss,
augmentation or inversion bug fails it. A fixed number of steps (160), so the result does not
depend on the machine's speed.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medresunet.data.phantoms import LABELS, make_phantom_case
from medresunet.metrics import case_metrics
from tests.synthetic import write_nifti

ORGANS = {name: v for name, v in LABELS.items() if name in ("background", "liver", "kidney")}
SETS = ["model.channels=[8,16,32]", "data.patch_size=[32,32,32]", "data.target_spacing=[3.0,3.0,3.0]",
        "data.samples_per_volume=2", "data.cache=memory", "data.num_workers=0",
        "train.batch_size=2", "train.epochs=8", "train.steps_per_epoch=20", "train.val_interval=8",
        "train.lr=5e-3", "train.warmup_epochs=0", "train.precision=fp32", "train.seed=0",
        # flips, intensity, gamma and noise stay on (an image/label mismatch fails the test);
        # rotation and zoom cost most of a CPU step and slow the learning of 160 steps
        "data.augment.rotate_prob=0", "data.augment.scale_prob=0", "infer.sw_batch_size=2"]


@pytest.mark.slow
def test_two_phantoms_are_learned(tmp_path):
    from pipelines.infer import main as infer
    from pipelines.train import main as train

    cases = []
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i, kind in enumerate(("oblique", "lps")):
        case = make_phantom_case(i, spacing=(3.0, 3.0, 3.0), orientation_kind=kind, n_organs=2)
        write_nifti(tmp_path / "images" / f"p{i}.nii.gz", case.image, case.affine)
        write_nifti(tmp_path / "labels" / f"p{i}.nii.gz", case.label, case.affine, dtype=np.uint8)
        cases.append({"id": f"p{i}", "image": f"images/p{i}.nii.gz", "label": f"labels/p{i}.nii.gz",
                      "split": "train"})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"channels": ["CT"], "labels": ORGANS, "cases": cases}))
    args = ["--manifest", str(manifest), "--config", "demo", "--output", str(tmp_path / "run"),
            "--device", "cpu", "--quiet", *[a for s in SETS for a in ("--set", s)]]
    assert train(args) == 0
    assert infer(["--model", str(tmp_path / "run" / "best.pt"), "--input", str(tmp_path / "images"),
                  "--output", str(tmp_path / "pred"), "--device", "cpu", "--quiet"]) == 0
    for i in (0, 1):
        pred = np.asarray(nib.load(tmp_path / "pred" / f"p{i}.nii.gz").dataobj)
        ref = np.asarray(nib.load(tmp_path / "labels" / f"p{i}.nii.gz").dataobj)
        rows = case_metrics(pred, ref, (3.0, 3.0, 3.0), ORGANS)
        dice = {r["label_name"]: round(r["dice"], 3) for r in rows}
        assert all(d > 0.9 for d in dice.values()), (f"p{i}", dice)
