"""medresunet-plan on a tiny synthetic manifest; planned training (no --config) end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medresunet.config import load_config
from pipelines.plan import main as plan_main
from tests.test_train_cli import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("plan_data"))


def test_help_does_not_import_torch():
    code = ("import sys\nfrom pipelines.plan import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--gpu-memory-gb" in proc.stdout


def test_plan_prints_reasons_and_writes_a_config(dataset, tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    assert plan_main(["--manifest", str(dataset), "--max-minutes", "1", "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for key in ("data.target_spacing", "data.patch_size", "model.strides", "model.kernel_sizes", "train.epochs",
                "measured:"):
        assert key in printed
    cfg = load_config(out)
    assert cfg.train.fit_budget and cfg.train.steps_per_epoch >= 10
    assert cfg.data.target_spacing == pytest.approx((1.5, 1.5, 2.0), abs=0.11)


def test_plan_bad_usage(dataset, capsys):
    assert plan_main(["--manifest", str(dataset), "--max-minutes", "-1"]) == 2
    assert "--max-minutes" in capsys.readouterr().err


def test_planned_training_end_to_end(dataset, tmp_path):
    """medresunet-train without --config: plans, trains within the budget, stores the plan."""
    import json

    import torch

    from pipelines.train import main as train_main

    run = tmp_path / "run"
    assert train_main(["--manifest", str(dataset), "--output", str(run), "--max-minutes", "0.35", "--quiet",
                       "--set", "train.precision=fp32", "--set", "infer.sw_batch_size=1"]) == 0
    plan_cfg = load_config(run / "plan.yaml")
    cfg = load_config(run / "config.yaml")
    assert cfg.model == plan_cfg.model and cfg.data == plan_cfg.data and cfg.train.precision == "fp32"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["plan"]["step_seconds"] > 0 and ckpt["plan"]["reasons"]
    record = json.loads((run / "run.json").read_text())
    assert record["inputs"]["config"] == "planned" and record["plan"]["expected_steps"] >= 1
    assert record["result"]["global_step"] >= 1
    # the probe counts against the budget: planning + training end with the budget (+ the last validation)
    assert record["time"]["training_seconds"] <= 0.35 * 60 + 20
    assert 0 < record["time"]["step_seconds"] <= record["time"]["training_seconds"]
    assert record["result"]["stopped_by_budget"] or record["result"]["epochs_done"] >= 1
    assert record["result"]["last_validation"]["n_cases"] == 1  # whole-volume validation at the end
    assert record["result"]["best_metric"]["epoch"] == record["result"]["epochs_done"]  # it wrote best.pt
