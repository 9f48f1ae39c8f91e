"""The quality benchmark's own parts: its datasets and its Dice of a prediction folder."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from benchmarks.bench_quality import DATASETS, dice_of_folder, make_dataset


def test_thick_slice_dataset_and_dice_of_a_folder(tmp_path):
    manifest = make_dataset(tmp_path / "data", DATASETS["thick_slice"], splits=["train", "test", "test"])
    cases = json.loads(manifest.read_text())["cases"]
    assert [c["split"] for c in cases] == ["train", "test", "test"]
    zooms = nib.load(manifest.parent / cases[1]["image"]).header.get_zooms()
    assert zooms[2] > 4 * zooms[0]  # about 0.9 x 0.9 x 5 mm
    perfect = dice_of_folder(manifest.parent / "labelsTs", manifest)
    assert perfect["dice"] == {"liver": 1.0, "kidney": 1.0} and not perfect["missing"]
    # a prediction without the kidney, one case missing
    pred = tmp_path / "pred"
    pred.mkdir()
    ref = nib.load(manifest.parent / cases[1]["label"])
    data = np.asarray(ref.dataobj).copy()
    data[data == 2] = 0
    nib.save(nib.Nifti1Image(data, ref.affine), str(pred / f"{cases[1]['id']}.nii.gz"))
    got = dice_of_folder(pred, manifest)
    assert got["dice"]["liver"] == 1.0 and got["dice"]["kidney"] == 0.0 and got["missing"] == [cases[2]["id"]]
