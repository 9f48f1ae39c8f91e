"""The prepared GPU check: one command, one JSON, under 8 minutes on one GPU.

Run it as ``benchmarks/gpu_check.sh [--out gpu_check.json]`` (or ``python -m
benchmarks.gpu_check``) on a machine with a CUDA GPU and nothing beyond the project's own
install. Each step records its figures, its seconds and ``ok``; a failed step is recorded
and the others still run; the exit status is 0 when every step passed, 1 otherwise, 2 when
no CUDA GPU is visible (the JSON then says so and nothing else runs).

Steps (``STEPS``):

* ``cuda_tests``: ``pytest -m cuda`` (the CUDA-marked tests, tests/test_cuda.py);
* ``train_fp16``: the demo data trained for ~2 minutes in fp16 with the gradient scaler,
  then resumed for two more epochs (the scaler's state in both checkpoints, steps/s and
  GPU memory from ``log.csv``), and its test scans predicted on the GPU and on the CPU;
* ``train_3d_default``: steps/s and peak memory of the 3D default at 128^3 x 2 (fp16
  channels-first, fp16 channels-last, bf16 where supported) against the README's 24 GB;
* ``infer_ct``: a 512 x 512 x 300 CT-like volume through the 3D default (random weights:
  speed and memory do not depend on them): seconds per scan with and without the 8 flips,
  peak GPU memory, and the labels of a crop against the CPU path's in fp32 on both;
* ``forced_fallback``: the same volume under a GPU memory cap
  (``torch.cuda.set_per_process_memory_fraction``) below the unconstrained run's peak: the
  fallback's steps and labels against the unconstrained run's;
* ``torchrun``: ``torchrun --nproc-per-node 1 medresunet-infer`` against the plain command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import gpu_steps

EXIT_OK, EXIT_FAILED, EXIT_NO_CUDA = 0, 1, 2
STEPS = ("cuda_tests", "train_fp16", "train_3d_default", "infer_ct", "forced_fallback", "torchrun")
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--out``, ``--work``, ``--steps``, ``--budget-s``, ``--train-minutes``, ``--ct-shape``."""
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON to write")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--budget-s", type=float, default=470.0,
                   help="wall-clock budget; steps that would start after it are skipped (default 470)")
    p.add_argument("--train-minutes", type=float, default=2.0, help="the fp16 training's budget (default 2)")
    p.add_argument("--ct-shape", default="512,512,300", help="the CT-like volume, voxels (default 512,512,300)")
    args = p.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        p.error(f"--steps: unknown {unknown}; expected a subset of {list(STEPS)}")
    try:
        args.ct_shape = tuple(int(v) for v in args.ct_shape.split(","))
    except ValueError:
        p.error(f"--ct-shape: expected three integers such as 512,512,300, got {args.ct_shape!r}")
    if len(args.ct_shape) != 3 or min(args.ct_shape) < 32:
        p.error(f"--ct-shape: expected three sizes >= 32, got {args.ct_shape}")
    return args


def cuda_status() -> dict[str, Any]:
    """The GPU, or ``{"available": False}`` with the reason."""
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "reason": f"no CUDA GPU visible to PyTorch {torch.__version__} "
                f"(CUDA build: {torch.version.cuda})"}
    props = torch.cuda.get_device_properties(0)
    return {"available": True, "name": props.name, "memory_gb": round(props.total_memory / 1e9, 1),
            "capability": list(torch.cuda.get_device_capability(0)), "torch": torch.__version__,
            "cuda": torch.version.cuda, "bf16": bool(torch.cuda.is_bf16_supported())}


def run(cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A subprocess from the repository root: exit code, seconds and the output's tail."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(list(cmd), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        rc, out = proc.returncode, (proc.stdout + proc.stderr)
    except subprocess.TimeoutExpired as err:
        rc, out = -9, f"timed out after {timeout:.0f} s: {err}"
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - start, 1),
            "tail": out[-1500:]}


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Equal-voxel fraction and count of differing voxels of two label arrays."""
    if a.shape != b.shape:
        return {"identical": False, "agreement": 0.0, "differing_voxels": None,
                "shapes": [list(a.shape), list(b.shape)]}
    diff = int(np.count_nonzero(a != b))
    return {"identical": diff == 0, "agreement": 1.0 - diff / max(a.size, 1), "differing_voxels": diff}


def run_steps(steps: dict[str, Callable[[], dict[str, Any]]], budget_s: float,
              clock: Callable[[], float] = time.monotonic) -> dict[str, dict[str, Any]]:
    """Run each step, catching its failure; skip those that would start after the budget."""
    start, out = clock(), {}
    for name, step in steps.items():
        if clock() - start > budget_s:
            out[name] = {"ok": False, "skipped": f"the {budget_s:.0f} s budget was spent"}
            continue
        t0 = clock()
        try:
            result = dict(step())
        except Exception as err:  # noqa: BLE001 - one failed step must not hide the others
            result = {"ok": False, "error": f"{type(err).__name__}: {' '.join(str(err).split())[:600]}"}
        result.setdefault("ok", True)
        result["seconds"] = round(clock() - t0, 1)
        out[name] = result
    return out


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` atomically (the project's atomic writer)."""
    from medresunet.io.atomic import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    record: dict[str, Any] = {"check": "medresunet gpu_check", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}
    record["gpu"] = cuda_status()
    if not record["gpu"]["available"]:
        record["status"] = "no_cuda"
        write_json(args.out, record)
        print(f"gpu_check: {record['gpu']['reason']}; nothing measured ({args.out})", file=sys.stderr)
        return EXIT_NO_CUDA
    from medresunet.runinfo import environment_info

    record["environment"] = environment_info()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ctx = gpu_steps.Context(work=work, train_minutes=args.train_minutes, ct_shape=args.ct_shape, run=run,
                                agreement=agreement)
        table = {name: getattr(gpu_steps, name) for name in args.steps}
        record["steps"] = run_steps({n: (lambda f=f: f(ctx)) for n, f in table.items()}, args.budget_s)
    record["status"] = "passed" if all(s.get("ok") for s in record["steps"].values()) else "failed"
    record["seconds"] = round(sum(s.get("seconds", 0.0) for s in record["steps"].values()), 1)
    write_json(args.out, record)
    print(f"gpu_check: {record['status']} in {record['seconds']} s; figures in {args.out}", file=sys.stderr)
    return EXIT_OK if record["status"] == "passed" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
