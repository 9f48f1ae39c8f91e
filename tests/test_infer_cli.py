"""medresunet-infer end to end on tiny scans: every geometry, DICOM folders, bad scans."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medresunet.io import read_geometry
from pipelines.infer import main
from tests.synthetic import ellipsoid, make_affine, write_nifti

REPO = Path(__file__).resolve().parents[1]
SHAPE = (20, 16, 8)


def _checkpoint(path: Path, channels: int = 1) -> Path:
    import torch

    from medresunet.networks import ResidualUNet
    from medresunet.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    kwargs = {"spatial_dims": 3, "in_channels": channels, "out_channels": 2, "channels": [4, 8]}
    net = ResidualUNet(**kwargs)
    norm = {"scheme": "ct", "clip": [-1000.0, 1000.0], "mean": 0.0, "std": 100.0}
    payload = {
        "format_version": 1, "medresunet_version": "test", "model": kwargs,
        "state_dict": net.state_dict(),
        "preprocessing": {"orientation": "RAS", "target_spacing": [1.5, 1.5, 2.0],
                          "normalization": [norm] * channels, "crop_foreground": False,
                          "patch_size": [16, 16, 8], "spatial_dims": 3},
        "labels": {"background": 0, "organ": 1}, "input_channels": ["CT"] * channels,
        "infer": {"overlap": 0.25, "sw_batch_size": 2, "precision": "fp32"},
    }
    return save_checkpoint(path, payload)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def _image(shape=SHAPE) -> np.ndarray:
    mask = ellipsoid(shape, np.asarray(shape) * 0.45, np.maximum(np.asarray(shape) * 0.25, 1.5))
    return np.where(mask, 200.0, -800.0).astype(np.float32)


def _good_folder(root: Path) -> dict[str, Path]:
    from tests.dicom_fixtures import write_dicom_series

    root.mkdir(parents=True, exist_ok=True)
    scans = {}
    for kind in ("ras", "lps", "oblique", "oblique_lh"):
        scans[kind] = write_nifti(root / f"{kind}.nii.gz", _image(), make_affine(kind))
    scans["aniso"] = write_nifti(root / "aniso.nii.gz", _image(), make_affine("anisotropic", (1, 1, 3)))
    scans["int16"] = write_nifti(root / "int16.nii", _image(), make_affine("lps", (0.8, 0.8, 2.5)),
                                 dtype=np.int16, slope=2.0, inter=-4.0)
    scans["twod"] = write_nifti(root / "twod.nii.gz", _image((20, 16)), make_affine("oblique", (0.9, 0.9, 1)))
    dicom = root / "patients" / "p1"
    write_dicom_series(dicom, np.round(_image()), make_affine("oblique", (0.9, 0.8, 2.0)))
    scans["patients_p1"] = dicom
    return scans


def _assert_same_geometry(out: Path, scan: Path) -> None:
    a, b = read_geometry(out), read_geometry(scan)
    assert a.shape == b.shape, (out, a.shape, b.shape)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)


def test_help_does_not_import_torch():
    code = ("import sys\nfrom pipelines import infer\ntry:\n    infer.main(['--help'])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--stitch-device" in proc.stdout and "--tta" in proc.stdout


def test_mixed_folder_every_geometry_and_dicom(tmp_path, model, capsys):
    scans = _good_folder(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["--model", str(model), "--input", str(tmp_path / "in"), "--output", str(out),
                 "--device", "cpu", "--quiet", "--save-probabilities", "--largest-component"])
    assert code == 0, capsys.readouterr().err
    for case_id, scan in scans.items():
        _assert_same_geometry(out / f"{case_id}.nii.gz", scan)
        assert (out / "probabilities" / f"{case_id}.nii.gz").is_file()
    run = json.loads((out / "run.json").read_text())
    assert {c["case_id"] for c in run["cases"]} == set(scans)
    assert all(c["status"] == "ok" and c["total_seconds"] >= 0 for c in run["cases"])
    assert run["settings"]["precision"] == "fp32" and run["settings"]["device"] == "cpu"
    assert run["environment"]["versions"]["torch"] and run["failures"] == []
    # again: every output exists, so every scan is skipped
    before = (out / "ras.nii.gz").stat().st_mtime_ns
    assert main(["--model", str(model), "--input", str(tmp_path / "in"), "--output", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    assert (out / "ras.nii.gz").stat().st_mtime_ns == before
    run = json.loads((out / "run.json").read_text())
    assert {c["status"] for c in run["cases"]} == {"skipped"}


def _bad_folder(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    good = write_nifti(root / "good.nii.gz", _image(), make_affine("lps"))
    blob = good.read_bytes()
    raw = bytearray(gzip.decompress(blob))
    corrupt = bytearray(blob)
    corrupt[len(blob) // 2: len(blob) // 2 + 64] = os.urandom(64)
    (root / "corrupt.nii.gz").write_bytes(bytes(corrupt))
    (root / "truncated.nii.gz").write_bytes(blob[: len(blob) // 2])
    (root / "truncraw.nii").write_bytes(bytes(raw[: len(raw) // 2]))
    (root / "text.nii.gz").write_text("this is not an image\n")
    write_nifti(root / "four.nii.gz", np.zeros((8, 8, 8, 3), np.float32), np.eye(4))
    write_nifti(root / "five.nii.gz", np.zeros((8, 8, 8, 1, 2), np.float32), np.eye(4))
    nan = _image()
    nan[3, 3, 3] = np.nan
    write_nifti(root / "nan.nii.gz", nan, np.eye(4))
    return {"corrupt": "corrupt.nii.gz", "truncated": "truncated.nii.gz", "truncraw": "truncraw.nii",
            "text": "text.nii.gz", "four": "four.nii.gz", "five": "five.nii.gz", "nan": "nan.nii.gz"}


def test_bad_scans_are_reported_and_the_others_written(tmp_path, model):
    bad = _bad_folder(tmp_path / "in")
    write_nifti(tmp_path / "in" / "other.nii.gz", _image(), make_affine("oblique"))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.infer", "--model", str(model), "--input", str(tmp_path / "in"),
         "--output", str(out), "--device", "cpu", "--quiet"],
        cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for case_id in ("good", "other"):
        _assert_same_geometry(out / f"{case_id}.nii.gz", tmp_path / "in" / f"{case_id}.nii.gz")
    tail = proc.stderr[proc.stderr.index("case(s) failed"):]
    for case_id, name in bad.items():
        assert not (out / f"{case_id}.nii.gz").exists()
        line = next(ln for ln in tail.splitlines() if ln.strip().startswith(f"{case_id}:"))
        assert name in line, line
    assert "NaN" in tail and "(8, 8, 8, 3)" in tail
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    run = json.loads((out / "run.json").read_text())
    assert {f[0] for f in run["failures"]} == set(bad)


def test_wrong_channel_count(tmp_path, capsys):
    two = _checkpoint(tmp_path / "two.pt", channels=2)
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "a.nii.gz", _image(), np.eye(4))
    code = main(["--model", str(two), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "wrong channel count" in err and "a.nii.gz" in err
    assert not (tmp_path / "out" / "a.nii.gz").exists()


def test_checkpoint_and_usage_errors_exit_2(tmp_path, model, capsys):
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "a.nii.gz", _image(), np.eye(4))
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
    assert main(["--model", str(tmp_path / "missing.pt"), *args]) == 2
    assert "missing.pt" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["--model", str(tmp_path / "junk.pt"), *args]) == 2
    assert main(["--model", str(model), *args, "--overlap", "1.5"]) == 2
    assert "--overlap" in capsys.readouterr().err
    assert main(["--model", str(model), "--input", str(tmp_path / "nothing"), "--output",
                 str(tmp_path / "out"), "--quiet"]) == 2


def test_labels_report_and_single_file_input(tmp_path, model, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "ref").mkdir()
    image = _image()
    write_nifti(tmp_path / "in" / "a.nii.gz", image, make_affine("oblique"))
    write_nifti(tmp_path / "ref" / "a.nii.gz", (image > 0).astype(np.uint8), make_affine("oblique"))
    out = tmp_path / "out"
    code = main(["--model", str(model), "--input", str(tmp_path / "in" / "a.nii.gz"), "--output", str(out),
                 "--device", "cpu", "--quiet", "--labels", str(tmp_path / "ref"), "--tta",
                 "--precision", "bf16"])
    assert code == 0, capsys.readouterr().err
    assert (out / "a.nii.gz").is_file()
    assert (out / "report" / "metrics.csv").is_file() and (out / "report" / "summary.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["tta"] is True and run["settings"]["precision"] == "bf16"
    assert "metrics_csv" in run["report"]


def test_labels_report_not_replaced_without_overwrite(tmp_path, model, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "ref").mkdir()
    image = _image()
    write_nifti(tmp_path / "in" / "a.nii.gz", image, make_affine("ras"))
    write_nifti(tmp_path / "ref" / "a.nii.gz", (image > 0).astype(np.uint8), make_affine("ras"))
    out = tmp_path / "out"
    args = ["--model", str(model), "--input", str(tmp_path / "in"), "--output", str(out),
            "--device", "cpu", "--quiet", "--labels", str(tmp_path / "ref")]
    assert main(args) == 0
    csv_before = (out / "report" / "metrics.csv").read_bytes()
    (out / "report" / "summary.json").write_text('{"mine": 1}\n')  # a report the user kept
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "report" in err and "--overwrite" in err
    assert (out / "report" / "summary.json").read_text() == '{"mine": 1}\n'
    assert main([*args, "--overwrite"]) == 0
    assert "n_cases" in (out / "report" / "summary.json").read_text()
    assert (out / "report" / "metrics.csv").read_bytes() == csv_before
