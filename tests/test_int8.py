"""int8 export: NNCF calibrated on training patches, refused past the validation-Dice gate.

The reference labels are the fp32 network's own segmentations, so fp32 scores Dice 1 and
the int8 model's loss is what the gate sees: this random network's near-tied logits lose
more than 0.005 under int8 (refused, with the numbers, nothing int8 left); with the gate
opened the model is kept, listed in model.json and runs through medresunet-infer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nncf")
pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from tests.synthetic import make_affine, write_nifti  # noqa: E402
from tests.test_infer_cli import _checkpoint, _image  # noqa: E402


def test_int8_gate(tmp_path: Path, capsys) -> None:
    import nibabel as nib

    from medresunet.export.metadata import read_model_json
    from medresunet.export.quantize import build_int8
    from medresunet.training.checkpoint import load_checkpoint
    from pipelines.export import main as export
    from pipelines.infer import main as infer

    ckpt = _checkpoint(tmp_path / "best.pt")
    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, kind in enumerate(["ras", "lps", "oblique", "anisotropic"]):
        write_nifti(images / f"c{i}.nii.gz", _image() + rng.normal(0, 80, (20, 16, 8)), make_affine(kind))
    assert infer(["--model", str(ckpt), "--input", str(images), "--output", str(tmp_path / "lab"), "--quiet"]) == 0
    cases = [{"id": f"c{i}", "image": f"img/c{i}.nii.gz", "label": f"lab/c{i}.nii.gz",
              "split": "val" if i >= 2 else "train"} for i in range(4)]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"channels": ["CT"], "labels": {"background": 0, "organ": 1}, "cases": cases}))
    out = tmp_path / "exp"
    assert export(["--model", str(ckpt), "--output", str(out), "--int8", "--calibration", str(manifest),
                   "--calibration-patches", "6", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "int8 model refused: validation Dice" in err and "> 0.005" in err
    meta = read_model_json(out)
    assert meta["int8"]["accepted"] is False and meta["int8"]["dice_fp32"] == 1.0
    assert meta["int8"]["dice_drop"] > 0.005 and meta["int8"]["check_cases"] == ["c2", "c3"]
    assert not (out / "model_int8.xml").exists() and (out / "model.onnx").exists()

    report = build_int8(out, meta, load_checkpoint(ckpt), {"manifest": str(manifest), "patches": 6,
                                                           "max_dice_drop": 1.0})
    assert report["accepted"] and (out / "model_int8.xml").exists() and (out / "model_int8.bin").exists()
    assert report["dice_int8"] == meta["int8"]["dice_int8"]  # deterministic calibration
    pred = tmp_path / "pred8"
    assert infer(["--model", str(out / "model_int8.xml"), "--input", str(images), "--output", str(pred),
                  "--backend", "openvino", "--quiet"]) == 0
    run = json.loads((pred / "run.json").read_text())
    assert run["backend"]["backend"] == "openvino-int8"
    ref = np.asarray(nib.load(tmp_path / "lab" / "c0.nii.gz").dataobj)
    got = np.asarray(nib.load(pred / "c0.nii.gz").dataobj)
    assert np.mean(ref == got) > 0.95
