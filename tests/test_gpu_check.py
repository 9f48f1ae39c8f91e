"""benchmarks/gpu_check: what runs without a GPU (arguments, the clean refusal, the step
runner and the label comparison); the GPU steps themselves run on a GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_arguments():
    args = gpu_check.parse_args(["--out", "x.json", "--steps", "infer_ct,torchrun", "--ct-shape", "64,64,40"])
    assert args.steps == ["infer_ct", "torchrun"] and args.ct_shape == (64, 64, 40)
    assert gpu_check.parse_args([]).steps == list(gpu_check.STEPS)
    for bad in (["--steps", "infer,warp"], ["--ct-shape", "512,512"], ["--ct-shape", "a,b,c"]):
        with pytest.raises(SystemExit) as err:
            gpu_check.parse_args(bad)
        assert err.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_cuda_it_stops_cleanly_with_a_json(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={"PYTHON": sys.executable,
                                                                           "PATH": "/usr/bin:/bin"})
    assert proc.returncode == gpu_check.EXIT_NO_CUDA, proc.stderr
    record = json.loads(out.read_text())
    assert record["status"] == "no_cuda" and not record["gpu"]["available"] and "steps" not in record
    assert "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_step_runner_records_failures_and_the_budget():
    now = [0.0]

    def boom():
        raise RuntimeError("CUDA error: an illegal memory access")

    def slow():
        now[0] += 500.0  # this step spends the budget: the next one is skipped
        return {"ok": False}

    out = gpu_check.run_steps({"a": lambda: {"x": 1}, "b": boom, "c": slow, "d": dict},
                              budget_s=100.0, clock=lambda: now[0])
    assert out["a"]["ok"] and out["a"]["x"] == 1
    assert not out["b"]["ok"] and "illegal memory access" in out["b"]["error"]
    assert out["c"]["ok"] is False and out["c"]["seconds"] == 500.0
    assert "skipped" in out["d"] and not out["d"]["ok"]


def test_agreement():
    a = np.zeros((4, 4, 4), np.uint8)
    b = a.copy()
    assert gpu_check.agreement(a, b) == {"identical": True, "agreement": 1.0, "differing_voxels": 0}
    b[0, 0, 0] = 2
    got = gpu_check.agreement(a, b)
    assert not got["identical"] and got["differing_voxels"] == 1 and got["agreement"] == 1 - 1 / 64
    assert gpu_check.agreement(a, b[:2])["agreement"] == 0.0
