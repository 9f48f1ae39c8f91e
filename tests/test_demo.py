"""medresunet-demo end to end (--quick: tiny phantoms, a few iterations) and its CLI edges."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from pipelines import demo

ORGANS = ("liver", "kidney", "lesion")


def test_help_is_instant_and_imports_no_torch():
    code = ("import sys\nfrom pipelines.demo import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--minutes" in done.stdout and "--quick" in done.stdout


def test_refuses_a_foreign_output_folder(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    assert demo.main(["--output", str(tmp_path), "--quick", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_table_formatting():
    rows = [{"case_id": "a", "label": "1", "label_name": "liver", "dice": 0.9, "hd95_mm": 2.5, "status": "ok"},
            {"case_id": "a", "label": "3", "label_name": "lesion", "dice": 0.0, "hd95_mm": float("nan"),
             "status": "missed"},
            {"case_id": "b", "label": "1", "label_name": "liver", "dice": 0.8, "hd95_mm": 3.0, "status": "ok"}]
    text = demo.format_table(rows)
    assert "missed" in text and "mean Dice: liver 0.850, lesion 0.000" in text


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    from medresunet.io import read_geometry
    from medresunet.manifest import load_manifest

    out = tmp_path / "demo"
    assert demo.main(["--output", str(out), "--quick", "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "mean Dice:" in printed and str(out / "evaluation" / "report.html") in printed

    # the phantoms and their manifest
    manifest = load_manifest(out / "data" / "manifest.json")
    assert manifest.labels == {"background": 0, "liver": 1, "kidney": 2, "lesion": 3}
    tests = [c for c in manifest.cases if c.split == "test"]
    assert len(tests) == 2 and any(c.images[0].is_dir() for c in tests)  # one DICOM series

    # the training run
    run = out / "run"
    for name in ("last.pt", "best.pt", "log.csv", "run.json", "progress.png", "summary.html"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert str(run / "summary.html") in printed
    assert json.loads((run / "run.json").read_text())
    with (run / "log.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) >= 1

    # one segmentation per test scan, on the scan's grid
    for case in tests:
        seg = out / "predictions" / f"{case.case_id}.nii.gz"
        assert seg.is_file(), seg
        scan, pred, ref = read_geometry(case.images[0]), read_geometry(seg), read_geometry(case.label)
        assert pred.shape == scan.shape == ref.shape
        np.testing.assert_allclose(pred.affine, scan.affine, atol=1e-4)
    assert sorted(p.name for p in (out / "predictions").glob("*.nii.gz")) == sorted(
        f"{c.case_id}.nii.gz" for c in tests)

    # the evaluation
    ev = out / "evaluation"
    with (ev / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) >= {"case_id", "label", "label_name", "status", "dice", "hd95_mm",
                                     "ref_volume_ml", "pred_volume_ml"}
    assert {(r["case_id"], r["label_name"]) for r in rows} == {(c.case_id, o) for c in tests for o in ORGANS}
    assert len(json.loads((ev / "metrics.json").read_text())) == len(rows)
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_cases"] == 2 and set(summary["per_label"]) == set(ORGANS)
    assert (ev / "summary.csv").read_text().count("\n") >= 2
    html = (ev / "report.html").read_text()
    assert "<html" in html.lower() and "</html>" in html.lower() and tests[0].case_id in html

    record = json.loads((out / "demo.json").read_text())
    assert record["status"] == "ok" and set(record["mean_dice"]) == set(ORGANS)

    # a second run refuses to overwrite without --overwrite
    assert demo.main(["--output", str(out), "--quick", "--quiet"]) == 2
