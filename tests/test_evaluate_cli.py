"""medresunet-eval end to end on small NIfTI folders: pairing, statuses, grids, exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from medresunet.errors import UsageError
from pipelines._cli import parse_label_names
from pipelines.evaluate import main
from tests.synthetic import make_affine, sphere_phantom, write_nifti

SHAPE = (24, 20, 10)


@pytest.fixture()
def folders(tmp_path):
    """refs a, b, d; preds a (good), b (lesion missed), c (no reference), d (another grid)."""
    affine = make_affine("oblique", spacing=(1.0, 1.2, 3.0))
    image, label = sphere_phantom(SHAPE, seed=1, spacing=(1.0, 1.2, 3.0))
    ref, pred, img = tmp_path / "ref", tmp_path / "pred", tmp_path / "img"
    for d in (ref, pred, img):
        d.mkdir()
    for case in ("a", "b", "d"):
        write_nifti(ref / f"{case}.nii.gz", label, affine, dtype=np.uint8)
        write_nifti(img / f"{case}.nii.gz", image, affine, dtype=np.float32)
    good = label.copy()
    good[good == 1] = np.where(np.random.default_rng(0).random(int((good == 1).sum())) < 0.05, 0, 1)
    write_nifti(pred / "a.nii.gz", good, affine, dtype=np.uint8)
    missed = label.copy()
    missed[missed == 2] = 0
    write_nifti(pred / "b.nii.gz", missed, affine, dtype=np.uint8)
    write_nifti(pred / "c.nii.gz", label, affine, dtype=np.uint8)
    shifted = affine.copy()
    shifted[:3, 3] += 5.0
    write_nifti(pred / "d.nii.gz", label, shifted, dtype=np.uint8)
    return tmp_path


def _args(root, out, *extra):
    return ["--pred", str(root / "pred"), "--ref", str(root / "ref"), "--output", str(out), "--quiet",
            "--workers", "1", *extra]


def test_eval_writes_reports_and_lists_failures(folders, capsys):
    out = folders / "eval"
    code = main(_args(folders, out, "--labels", "big=1,small=2", "--images", str(folders / "img")))
    assert code == 1
    captured = capsys.readouterr()
    assert "c: prediction" in captured.err and "no reference" in captured.err
    assert "d: prediction" in captured.err and "--resample-pred-to-ref" in captured.err
    assert "small" in captured.out  # summary table printed
    for name in ("metrics.csv", "metrics.json", "summary.json", "summary.csv", "report.html", "run.json"):
        assert (out / name).is_file()
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["case_id"], r["label_name"], r["status"]) for r in rows] == [
        ("a", "big", "ok"), ("a", "small", "ok"), ("b", "big", "ok"), ("b", "small", "missed")]
    summary = json.loads((out / "summary.json").read_text())
    small = summary["per_label"]["small"]
    assert summary["n_cases"] == 2
    assert small["status_counts"]["missed"] == 1
    assert small["dice"]["mean"] == pytest.approx(0.5)  # 1.0 and the missed 0.0
    assert (out / "report.html").read_text().count("data:image/png") == 5  # box plots + 2 cases x (whole, zoom)

    # existing reports are kept unless --overwrite
    assert main(_args(folders, out)) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_resample_and_default_labels(folders):
    out = folders / "eval2"
    code = main(_args(folders, out, "--resample-pred-to-ref", "--empty-distance", "diagonal"))
    assert code == 1  # c is still unpaired
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["label_name"] for r in rows} == {"label_1", "label_2"}
    by = {(r["case_id"], r["label"]): r for r in rows}
    assert by[("d", "1")]["status"] == "ok" and float(by[("d", "1")]["dice"]) < 1.0  # shifted 5 mm
    assert float(by[("b", "2")]["hd95_mm"]) > 30  # the image diagonal


def test_manifest_reference_and_workers(folders):
    manifest = {"name": "t", "channels": ["CT"], "labels": {"background": 0, "big": 1, "small": 2},
                "cases": [{"id": c, "image": f"img/{c}.nii.gz", "label": f"ref/{c}.nii.gz"} for c in ("a", "b")]}
    (folders / "m.json").write_text(json.dumps(manifest))
    (folders / "pred" / "c.nii.gz").unlink()
    (folders / "pred" / "d.nii.gz").unlink()
    out = folders / "eval3"
    code = main(["--pred", str(folders / "pred"), "--ref", str(folders / "m.json"), "--output", str(out),
                 "--quiet", "--workers", "2"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["per_label"]) == ["big", "small"]
    assert summary["per_label"]["small"]["status_counts"] == {"ok": 1, "both_empty": 0, "missed": 1,
                                                              "false_positive": 0}


def test_usage_errors(folders, capsys):
    empty = folders / "empty"
    empty.mkdir()
    assert main(["--pred", str(empty), "--ref", str(folders / "ref"), "--output", str(folders / "o")]) == 2
    assert main(_args(folders, folders / "o", "--labels", "a=1,b")) == 2
    assert main(_args(folders, folders / "o", "--workers", "0")) == 2
    assert main(_args(folders, folders / "o", "--label-names", "liver,spleen")) == 2
    assert "NAME=INT" in capsys.readouterr().err
    assert parse_label_names("liver=3, spleen=1") == {"liver": 3, "spleen": 1}
    for bad in ("a=1,a=2", "a=1,b=1", "a=-1", "a=x", ""):
        with pytest.raises(UsageError, match="--label-names"):
            parse_label_names(bad)


def test_help_does_not_import_torch():
    code = ("import sys, pipelines.evaluate as e\n"
            "try:\n    e.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'monai' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_evaluate_pairs_library(folders):
    from medresunet.metrics.evaluate import evaluate_pairs
    from medresunet.metrics.pairing import pair_cases

    (folders / "pred" / "a.nii.gz").write_bytes(b"not a nifti file")
    pairing = pair_cases(folders / "pred", folders / "ref", folders / "img")
    assert [p[0] for p in pairing.pairs] == ["a", "b", "d"]
    assert [u[0] for u in pairing.unpaired] == ["c"]
    assert pairing.pairs[0][3] == folders / "img" / "a.nii.gz"
    overlays: dict = {}
    rows, failures = evaluate_pairs(pairing.pairs, {"background": 0, "big": 1, "small": 2}, quiet=True,
                                    overlays=overlays)
    assert [f[0] for f in failures] == ["a", "d"]
    assert "a.nii.gz" in failures[0][1]
    assert [(r["case_id"], r["label"]) for r in rows] == [("b", 1), ("b", 2)]
    assert list(rows[0])[0] == "case_id"
    assert set(overlays) == {"b"} and overlays["b"].image is not None


def _rows(path):
    with open(path, newline="") as fh:
        return [(r["case_id"], r["label_name"], r["status"]) for r in csv.DictReader(fh)]


def test_both_empty_case_is_counted(folders):
    """A case with neither reference nor prediction foreground gets its rows, and is counted."""
    for name in ("c", "d"):
        (folders / "pred" / f"{name}.nii.gz").unlink()
    (folders / "ref" / "d.nii.gz").unlink()
    affine = make_affine("oblique", spacing=(1.0, 1.2, 3.0))
    for where in ("pred", "ref"):
        write_nifti(folders / where / "e.nii.gz", np.zeros(SHAPE, np.uint8), affine, dtype=np.uint8)
    out = folders / "eval_e"
    assert main(_args(folders, out)) == 0
    assert _rows(out / "metrics.csv") == [
        ("a", "label_1", "ok"), ("a", "label_2", "ok"), ("b", "label_1", "ok"), ("b", "label_2", "missed"),
        ("e", "label_1", "both_empty"), ("e", "label_2", "both_empty")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 3
    assert summary["per_label"]["label_1"]["status_counts"]["both_empty"] == 1


def test_label_names_from_infer_run_json(tmp_path):
    """Predictions written by medresunet-infer are named as the model names its labels."""
    from pipelines.infer import main as infer
    from tests.test_infer_cli import _checkpoint, _image

    affine = make_affine("oblique")
    for where in ("in", "ref"):
        (tmp_path / where).mkdir()
    for case in ("a", "e"):
        image = _image() if case == "a" else np.full((20, 16, 8), -800.0, np.float32)
        write_nifti(tmp_path / "in" / f"{case}.nii.gz", image, affine)
        write_nifti(tmp_path / "ref" / f"{case}.nii.gz", (image > 0).astype(np.uint8), affine, dtype=np.uint8)
    model = _checkpoint(tmp_path / "best.pt")
    assert infer(["--model", str(model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "pred"),
                  "--device", "cpu", "--quiet"]) == 0
    assert main(_args(tmp_path, tmp_path / "eval")) == 0
    rows = _rows(tmp_path / "eval" / "metrics.csv")
    assert [(c, n) for c, n, _ in rows] == [("a", "organ"), ("e", "organ")]
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["n_cases"] == 2
    assert main(_args(tmp_path, tmp_path / "eval2", "--label-names", "liver=1")) == 0
    assert [n for _, n, _ in _rows(tmp_path / "eval2" / "metrics.csv")] == ["liver", "liver"]


def test_one_evaluation_package_pairs_a_batch_and_writes_reports(folders):
    """Pairing, metrics and reports live in medresunet.metrics; infer pairs its outputs with it."""
    import importlib.util
    import json as _json

    from medresunet.metrics.evaluate import EvalSettings, evaluate_to_reports
    from medresunet.metrics.pairing import pair, read_references

    assert importlib.util.find_spec("medresunet.evaluation") is None  # no second place
    manifest = folders / "manifest.json"
    manifest.write_text(_json.dumps({"channels": ["CT"], "labels": {"background": 0, "big": 1, "small": 2},
                                     "cases": [{"id": c, "image": f"img/{c}.nii.gz", "label": f"ref/{c}.nii.gz"}
                                               for c in ("a", "b")]}))
    refs = read_references(manifest)
    assert refs.label_map == {"background": 0, "big": 1, "small": 2} and sorted(refs.labels) == ["a", "b"]
    outputs = {"b": folders / "pred" / "b.nii.gz", "c": folders / "pred" / "c.nii.gz"}  # a batch's outputs
    pairing = pair(outputs, refs)
    assert [p[0] for p in pairing.pairs] == ["b"] and pairing.pairs[0][3] == folders / "img" / "b.nii.gz"
    assert sorted(u[0] for u in pairing.unpaired) == ["a", "c"]
    result = evaluate_to_reports(pairing.pairs, refs.label_map, folders / "report", EvalSettings(), quiet=True)
    assert [(r["case_id"], r["status"]) for r in result.rows] == [("b", "ok"), ("b", "missed")]
    assert result.summary["n_cases"] == 1 and (folders / "report" / "metrics.csv").is_file()
    with pytest.raises(UsageError, match="workers"):
        EvalSettings(workers=0)
