"""medresunet-train end to end on a tiny synthetic manifest (mixed orientations and dtypes)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipelines.train import main
from tests.synthetic import make_affine, sphere_phantom, write_nifti

LABELS = {"background": 0, "big": 1, "small": 2}
TINY = ["model.channels=[4,8,16]", "train.steps_per_epoch=2", "train.epochs=1", "train.batch_size=2",
        "data.samples_per_volume=2", "train.precision=fp32", "data.target_spacing=[2.0,2.0,2.0]",
        "infer.sw_batch_size=1", "train.warmup_epochs=0", "data.num_workers=0"]
CASES = [  # (id, affine kind, spacing, dtype, slope, split)
    ("ras", "ras", (1.5, 1.5, 2.0), np.float32, None, None),
    ("lps", "lps", (1.5, 1.5, 2.0), np.int16, 0.5, None),
    ("obl", "oblique", (1.6, 1.6, 2.2), np.float32, None, None),
    ("aniso", "anisotropic", (1.5, 1.5, 2.5), np.int16, 1.0, "val"),
]


def _sets(*items):
    out = []
    for item in items:
        out += ["--set", item]
    return out


def write_dataset(root, cases=CASES, shape=(32, 32, 24)):
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (cid, kind, spacing, dtype, slope, split) in enumerate(cases):
        img, lab = sphere_phantom(shape, seed=i, spacing=spacing)
        affine = make_affine(kind, spacing)
        write_nifti(root / f"{cid}.nii.gz", img, affine, dtype=dtype, slope=slope)
        write_nifti(root / f"{cid}_seg.nii.gz", lab, affine, dtype=np.uint8)
        entry = {"id": cid, "image": f"{cid}.nii.gz", "label": f"{cid}_seg.nii.gz", "split": split or "train"}
        entries.append(entry)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"channels": ["CT"], "labels": LABELS, "cases": entries}))
    return manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


def test_help_does_not_import_torch():
    code = ("import sys\nfrom pipelines.train import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--max-minutes" in proc.stdout


def test_config_error_exit_2(tmp_path, dataset, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 1\n")
    rc = main(["--manifest", str(dataset), "--config", str(bad), "--output", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.epochz" in err and str(bad) in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("problem", ["missing", "grid", "values", "unknown_key", "duplicate"])
def test_bad_manifest_exit_2_before_training(tmp_path, problem, capsys):
    manifest = write_dataset(tmp_path / "d", CASES[:2], shape=(16, 16, 12))
    doc = json.loads(manifest.read_text())
    if problem == "missing":
        (tmp_path / "d" / "lps.nii.gz").unlink()
        name = "lps.nii.gz"
    elif problem == "grid":
        img, lab = sphere_phantom((16, 16, 10), spacing=(1.5, 1.5, 2.0))
        write_nifti(tmp_path / "d" / "lps_seg.nii.gz", lab, make_affine("lps", (1.5, 1.5, 2.0)), dtype=np.uint8)
        name = "lps_seg.nii.gz"
    elif problem == "values":
        img, lab = sphere_phantom((16, 16, 12), spacing=(1.5, 1.5, 2.0))
        lab[0, 0, 0] = 7
        write_nifti(tmp_path / "d" / "lps_seg.nii.gz", lab, make_affine("lps", (1.5, 1.5, 2.0)), dtype=np.uint8)
        name = "lps_seg.nii.gz"
    elif problem == "unknown_key":
        doc["cases"][1]["lable"] = "x"
        name = "lable"
    else:
        doc["cases"][1]["id"] = "ras"
        name = "ras"
    manifest.write_text(json.dumps(doc))
    run = tmp_path / "run"
    rc = main(["--manifest", str(manifest), "--config", "3d", "--output", str(run), "--quiet", *_sets(*TINY)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert name in err
    assert "Traceback" not in err
    assert not run.exists()


def test_existing_run_folder_refused(tmp_path, dataset, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "something.txt").write_text("x")
    rc = main(["--manifest", str(dataset), "--config", "3d", "--output", str(run), "--quiet", *_sets(*TINY)])
    assert rc == 2 and "--resume" in capsys.readouterr().err
    rc = main(["--manifest", str(dataset), "--output", str(tmp_path / "new"), "--resume", "--quiet"])
    assert rc == 2


@pytest.mark.parametrize("dims", [3, 2])
def test_train_cli_tiny_then_resume(tmp_path, dataset, dims):
    import torch

    from medresunet.training.checkpoint import load_checkpoint, model_from_checkpoint

    patch = ["data.patch_size=[16,16,16]"] if dims == 3 else ["data.patch_size=[16,16]"]
    run = tmp_path / "run"
    args = ["--manifest", str(dataset), "--config", f"{dims}d", "--output", str(run), "--device", "cpu",
            "--quiet", *_sets(*TINY, *patch)]
    assert main(args) == 0
    for name in ("last.pt", "best.pt", "log.csv", "config.yaml", "run.json", "progress.png", "summary.html"):
        assert (run / name).is_file(), name
    assert (run / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Validation Dice per label" in (run / "summary.html").read_text()
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["labels"] == LABELS and ckpt["preprocessing"]["spatial_dims"] == dims
    model = model_from_checkpoint(ckpt)
    x = torch.zeros((1, 1, 16, 16, 16) if dims == 3 else (1, 1, 16, 16))
    with torch.no_grad():
        assert model(x).shape[1] == 3
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["inputs"]["val_cases"] == ["aniso"]
    assert "torch" in record["environment"]["versions"]
    if dims == 3:
        assert main(["--manifest", str(dataset), "--output", str(run), "--resume", "--epochs", "2",
                     "--quiet", "--device", "cpu"]) == 0
        assert load_checkpoint(run / "last.pt")["train_state"]["global_step"] == 4
        assert (run / "log.csv").read_text().count("\n") == 3


def test_msd_dataset_json_mixed_geometry_trains(tmp_path):
    """An MSD layout with RAS/LPS/oblique scans, int16+scaling and float32, no manual step."""
    root = tmp_path / "Task01"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, (cid, kind, spacing, dtype, slope, _) in enumerate(CASES):
        img, lab = sphere_phantom((24, 24, 16), seed=i, spacing=spacing)
        affine = make_affine(kind, spacing)
        write_nifti(root / "imagesTr" / f"{cid}.nii.gz", img, affine, dtype=dtype, slope=slope)
        write_nifti(root / "labelsTr" / f"{cid}.nii.gz", lab, affine, dtype=np.uint8)
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "spheres", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "big", "2": "small"},
        "numTraining": len(training), "training": training, "test": [],
    }))
    run = tmp_path / "run"
    rc = main(["--manifest", str(root / "dataset.json"), "--config", "2d", "--output", str(run), "--device", "cpu",
               "--quiet", *_sets(*TINY, "data.patch_size=[16,16]", "train.folds=2")])
    assert rc == 0
    record = json.loads((run / "run.json").read_text())
    assert len(record["inputs"]["train_cases"]) == 2 and len(record["inputs"]["val_cases"]) == 2
    assert record["result"]["last_validation"]["n_cases"] == 2


def test_python_api_prepare_then_train(dataset, tmp_path):
    """The library does what the CLI does: prepare_training + train, no argument parsing."""
    import torch

    from medresunet.config import load_config
    from medresunet.manifest import load_manifest
    from medresunet.training.checkpoint import load_checkpoint
    from medresunet.training.loop import TrainOptions, train
    from medresunet.training.prepare import prepare_training

    config = load_config("3d", [*TINY, "data.cache=none"])
    job = prepare_training(load_manifest(dataset), config, quiet=True)
    assert [c.case_id for c in job.val_cases] == ["aniso"] and len(job.train_cases) == 3
    assert job.info.labels == LABELS and job.info.kwargs["in_channels"] == 1
    result = train(config, job.model, job.data, job.info, tmp_path / "run", torch.device("cpu"),
                   TrainOptions(quiet=True))
    assert result.global_step == 2 and result.last_val is not None
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["preprocessing"] == job.preprocessing.to_dict()
