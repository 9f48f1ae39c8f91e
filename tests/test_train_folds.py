"""medresunet-train --fold: folds under RUN/fold_K, one config and fingerprint, out-of-fold
predictions, the CV report covering every case once, resume of one fold."""

from __future__ import annotations

import json

import pytest

from medresunet.crossval.folds import parse_fold, share_minutes
from medresunet.errors import UsageError
from pipelines.train import main
from tests.test_train_cli import TINY, _sets, write_dataset

CASES = [(f"c{i}", kind, (1.5, 1.5, 2.0), "float32", None, split)
         for i, (kind, split) in enumerate([("ras", None), ("lps", "train"), ("oblique", None),
                                            ("ras", "val"), ("lps", None), ("oblique", None)])]


@pytest.fixture(scope="module")
def folds_run(tmp_path_factory):
    import numpy as np

    root = tmp_path_factory.mktemp("folds")
    cases = [(cid, kind, sp, np.float32, slope, split) for cid, kind, sp, _, slope, split in CASES]
    manifest = write_dataset(root / "data", cases, shape=(24, 24, 16))
    run = root / "RUN"
    code = main(["--manifest", str(manifest), "--config", "demo", "--output", str(run), "--fold", "all",
                 "--quiet", "--device", "cpu", *_sets(*TINY, "train.folds=3", "data.patch_size=[16,16,16]", "data.target_spacing=[3.0,3.0,3.0]")])
    assert code == 0
    return manifest, run


def test_fold_all_covers_every_case_once(folds_run):
    _, run = folds_run
    ids = sorted(c[0] for c in CASES)
    for k in range(3):
        assert (run / "fold_k".replace("k", str(k)) / "last.pt").is_file()
        assert json.loads((run / f"fold_{k}" / "oof.json").read_text())["fold"] == k
    folds = json.loads((run / "cv" / "folds.json").read_text())["validation_cases"]
    assert sorted(c for v in folds.values() for c in v) == ids  # each case validated by one fold
    assert sorted(p.name for p in (run / "cv" / "predictions").iterdir()) == [f"{c}.nii.gz" for c in ids]
    rows = json.loads((run / "cv" / "report" / "metrics.json").read_text())
    assert sorted({r["case_id"] for r in rows}) == ids and len(rows) == 2 * len(ids)
    summary = json.loads((run / "cv" / "summary.json").read_text())
    assert summary["complete"] and summary["n_cases"] == 6 and summary["folds"] == 3
    assert set(summary["per_label"]) == {"big", "small"}
    post = json.loads((run / "postprocessing.json").read_text())
    assert set(post["labels"]) == {"big", "small"} and post["n_cases"] == 6
    # one fingerprint, on all six cases, in every fold's checkpoint
    import torch

    fp = json.loads((run / "fingerprint.json").read_text())
    assert fp["cases"] == ids
    for k in range(3):
        ckpt = torch.load(run / f"fold_{k}" / "last.pt", weights_only=True)
        assert ckpt["preprocessing"] == fp["preprocessing"]
        assert ckpt["config"]["train"]["fold"] == k
    assert (run / "config.yaml").is_file()
    # one progress.png for the run (a line per fold), a summary.html per fold
    assert (run / "progress.png").is_file() and not (run / "fold_0" / "progress.png").exists()
    assert all((run / f"fold_{k}" / "summary.html").is_file() for k in range(3))


def test_resume_one_fold(folds_run):
    manifest, run = folds_run
    before = {k: (run / f"fold_{k}" / "last.pt").stat().st_mtime_ns for k in range(3)}
    code = main(["--manifest", str(manifest), "--output", str(run), "--fold", "1", "--resume",
                 "--epochs", "2", "--quiet", "--device", "cpu"])
    assert code == 0
    log = (run / "fold_1" / "log.csv").read_text().splitlines()
    assert log[-1].split(",")[0] == "2"  # fold 1 went on to epoch 2
    after = {k: (run / f"fold_{k}" / "last.pt").stat().st_mtime_ns for k in range(3)}
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    assert json.loads((run / "cv" / "summary.json").read_text())["complete"]


def test_fold_arguments():
    assert parse_fold("all", 3) == [0, 1, 2] and parse_fold("2", 3) == [2]
    with pytest.raises(UsageError, match=r"--fold '3': expected 'all' or a fold in 0\.\.2"):
        parse_fold("3", 3)
    # the call's budget: each fold gets an equal share of what is left when it starts
    assert share_minutes(9.0, 3) == 3.0 and share_minutes(7.0, 2) == 3.5 and share_minutes(None, 3) is None


def test_infer_with_the_run_ensemble(folds_run, tmp_path):
    from pipelines.infer import main as infer

    manifest, run = folds_run
    scan = manifest.parent / "c0.nii.gz"
    assert infer(["--model", str(run), "--input", str(scan), "--output", str(tmp_path / "ens"),
                  "--quiet", "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "ens" / "run.json").read_text())
    assert record["members"] == [str(run / f"fold_{k}" / "last.pt") for k in range(3)]
    post = json.loads((run / "postprocessing.json").read_text())
    assert record["postprocessing"]["source"] == str(run / "postprocessing.json")
    assert record["postprocessing"]["rules"] == {str(d["value"]): d["rule"] for d in post["labels"].values()}
    assert (tmp_path / "ens" / "c0.nii.gz").is_file()
    assert infer(["--model", str(run), "--no-postprocessing", "--input", str(scan), "--output",
                  str(tmp_path / "plain"), "--quiet", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "plain" / "run.json").read_text())["postprocessing"] is None
    two = [str(run / "fold_0" / "last.pt"), str(run / "fold_2" / "last.pt")]
    assert infer(["--model", two[0], "--model", two[1], "--input", str(scan), "--output",
                  str(tmp_path / "two"), "--quiet", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "two" / "run.json").read_text())["members"] == two


def test_select_cli(folds_run, tmp_path, capsys):
    from pipelines.select import main as select

    _, run = folds_run
    out = tmp_path / "selection.json"
    assert select([str(run), "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    summary = json.loads((run / "cv" / "summary.json").read_text())
    assert doc["chosen"]["runs"] == [str(run)] and doc["chosen"]["mean_dice"] == summary["mean_dice"]
    assert "use: " in capsys.readouterr().out
    assert select([str(tmp_path / "nothing"), "--output", str(out)]) == 2  # no CV summary: usage error


def test_planned_folds_without_config(tmp_path):
    """--fold all without --config: one plan for the folds (RUN/plan.yaml), each fold trains with it."""
    import numpy as np

    from medresunet.config import load_config

    cases = [(cid, kind, sp, np.float32, slope, split) for cid, kind, sp, _, slope, split in CASES[:4]]
    manifest = write_dataset(tmp_path / "data", cases, shape=(24, 24, 16))
    run = tmp_path / "RUN"
    assert main(["--manifest", str(manifest), "--output", str(run), "--fold", "all", "--max-minutes", "0.5",
                 "--quiet", "--device", "cpu", "--set", "train.folds=2", "--set", "train.precision=fp32"]) == 0
    plan = (run / "plan.yaml").read_text()
    assert "data.patch_size" in plan and "measured:" in plan  # the reasons and the probe's figure
    shared = load_config(run / "config.yaml")
    assert shared.data == load_config(run / "plan.yaml").data and shared.train.fit_budget
    assert shared.train.folds == 2 and shared.train.precision == "fp32"
    for k in (0, 1):
        record = json.loads((run / f"fold_{k}" / "run.json").read_text())
        assert record["status"] in ("finished", "budget_reached") and record["result"]["global_step"] >= 1
        assert load_config(run / f"fold_{k}" / "config.yaml").train.fold == k
    assert json.loads((run / "cv" / "summary.json").read_text())
