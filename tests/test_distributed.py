"""Distributed training (DDP, gloo, two CPU processes) and sharded inference.

The two-process runs use the torchrun module form (``python -m torch.distributed.run``)
with ``OMP_NUM_THREADS=1``; everything is tiny (channels [4, 8], 16^3 patches, 2 steps).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medresunet.errors import UsageError
from medresunet.training import distributed
from tests.synthetic import make_affine, sphere_phantom, write_nifti

REPO = Path(__file__).resolve().parents[1]
LABELS = {"background": 0, "big": 1, "small": 2}
SPACING = (2.0, 2.0, 2.0)
TINY = ["model.channels=[4,8]", "data.patch_size=[16,16,16]", "train.steps_per_epoch=2", "train.epochs=1",
        "data.samples_per_volume=1", "train.precision=fp32", "data.target_spacing=[2.0,2.0,2.0]",
        "infer.sw_batch_size=1", "train.warmup_epochs=0", "data.num_workers=0", "train.seed=7"]


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                "CUDA_VISIBLE_DEVICES": "", "MEDRESUNET_DIST_TIMEOUT_S": "60", **extra})
    return env


def _torchrun(args, nproc=2, timeout=150):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--nnodes", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """4 training cases + 1 validation case, 20^3 voxels of 2 mm."""
    root = tmp_path_factory.mktemp("ddp_data")
    entries = []
    for i in range(5):
        img, lab = sphere_phantom((20, 20, 20), seed=i, spacing=SPACING)
        affine = make_affine("ras", SPACING)
        write_nifti(root / f"c{i}.nii.gz", img, affine)
        write_nifti(root / f"c{i}_seg.nii.gz", lab, affine, dtype=np.uint8)
        entries.append({"id": f"c{i}", "image": f"c{i}.nii.gz", "label": f"c{i}_seg.nii.gz",
                        "split": "val" if i == 4 else "train"})
    (root / "manifest.json").write_text(json.dumps({"channels": ["CT"], "labels": LABELS, "cases": entries}))
    return root / "manifest.json"


# One deterministic step: the whole 20^3 volume is the patch, no augmentation, no intensity
# statistics (they would come from other cases in the one-case runs), no clipping, a constant lr.
ONE_STEP = ["model.channels=[4,8]", "data.patch_size=[20,20,20]", "data.crop_foreground=false",
            "data.normalization=none", "data.augment.enabled=false", "data.samples_per_volume=1",
            "data.target_spacing=[2.0,2.0,2.0]", "data.num_workers=0", "train.steps_per_epoch=1",
            "train.epochs=1", "train.batch_size=1", "train.schedule=constant", "train.warmup_epochs=0",
            "train.grad_clip=0", "train.precision=fp32", "train.seed=7", "infer.sw_batch_size=1"]


def _manifest(dataset: Path, name: str, train_ids) -> Path:
    cases = [c for c in json.loads(dataset.read_text())["cases"] if c["id"] in (*train_ids, "c4")]
    path = dataset.parent / name
    path.write_text(json.dumps({"channels": ["CT"], "labels": LABELS, "cases": cases}))
    return path


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """One step of a two-rank DDP run on cases c0, c1 (rank r trains on case c<r>, one patch
    each) and the one-process runs of the same step on c0 alone and on c1 alone."""
    out = tmp_path_factory.mktemp("ddp_runs")
    t0 = time.monotonic()
    proc = _torchrun(["-m", "pipelines.train", "--manifest", str(_manifest(dataset, "pair.json", ("c0", "c1"))),
                      "--config", "demo", "--output", str(out / "ddp"), "--device", "cpu", *_sets(ONE_STEP)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp_s = time.monotonic() - t0
    from pipelines.train import main

    for case in ("c0", "c1"):
        rc = main(["--manifest", str(_manifest(dataset, f"{case}.json", (case,))), "--config", "demo",
                   "--output", str(out / case), "--device", "cpu", "--quiet", *_sets(ONE_STEP)])
        assert rc == 0
    return {"ddp": out / "ddp", "c0": out / "c0", "c1": out / "c1", "ddp_stderr": proc.stderr,
            "ddp_seconds": ddp_s}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """An untrained checkpoint: what sharded inference needs, without a training run."""
    from tests.test_infer_cli import _checkpoint

    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


# --- units ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [("0/2", (0, 2)), ("1/2", (1, 2)), (" 3/4 ", (3, 4)), ("0/1", (0, 1))])
def test_parse_shard(text, want):
    assert distributed.parse_shard(text) == want


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1/0", "a/b", "1", "1/2/3", ""])
def test_parse_shard_rejects(text):
    with pytest.raises(UsageError, match="--shard"):
        distributed.parse_shard(text)


def test_shards_are_disjoint_and_complete():
    items = list(range(11))
    parts = [distributed.shard(items, i, 3) for i in range(3)]
    assert sorted(x for p in parts for x in p) == items
    assert parts[0] == [0, 3, 6, 9]


def test_single_process_is_rank_0_of_1(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info, device = distributed.setup("cpu")
    assert (info.rank, info.world_size, info.enabled, info.is_main, str(device)) == (0, 1, False, True, "cpu")
    assert distributed.broadcast_object(info, {"a": 1}) == {"a": 1}
    assert distributed.all_reduce_sum(info, [1, 2]) == [1.0, 2.0]


def test_timeout_is_set_on_the_process_group(monkeypatch):
    import datetime

    import torch.distributed as dist

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "42")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    info, device = distributed.setup("cpu")
    assert seen["backend"] == "gloo" and seen["timeout"] == datetime.timedelta(seconds=42)
    assert (info.rank, info.world_size, info.enabled, info.is_main) == (0, 2, True, True)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(UsageError, match=distributed.TIMEOUT_ENV):
        distributed.timeout_seconds()


# --- DDP training -----------------------------------------------------------------------


def _adam_step(ckpt: dict) -> dict:
    """name -> (weights after the step, gradient of the step) from a checkpoint of one AdamW step."""
    from medresunet.training.checkpoint import model_from_checkpoint

    names = [n for n, _ in model_from_checkpoint(ckpt).named_parameters()]
    opt = ckpt["train_state"]["optimizer"]
    (b1, _), = {tuple(g["betas"]) for g in opt["param_groups"]}
    out = {}
    for group in opt["param_groups"]:
        for idx in group["params"]:
            state = opt["state"][idx]
            assert float(state["step"]) == 1.0
            out[names[idx]] = (ckpt["state_dict"][names[idx]], state["exp_avg"] / (1 - b1))
    return out


@pytest.mark.slow
def test_ddp_step_is_the_mean_of_the_ranks_gradients(runs):
    """After one step, the 2-rank weights are one AdamW step along the mean of the two ranks'
    gradients, to float tolerance: a summed (x2) gradient, a missing all-reduce or a rank
    training on the other's case fails it. The reference is the two one-process steps on each
    rank's own patch: the Dice term is computed over the batch (``batch=True``), so a one-process
    batch of both patches is another loss than the mean of the ranks' losses."""
    import torch

    from medresunet.training.checkpoint import load_checkpoint

    ddp = load_checkpoint(runs["ddp"] / "last.pt")
    singles = [load_checkpoint(runs[c] / "last.pt") for c in ("c0", "c1")]
    assert not any(k.startswith("module.") for k in ddp["state_dict"])
    assert ddp["train_state"]["global_step"] == 1
    group = ddp["train_state"]["optimizer"]["param_groups"][0]
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    steps = [_adam_step(c) for c in (ddp, *singles)]
    assert set(steps[0]) == set(steps[1]) == set(steps[2])
    for name, (w_ddp, g_ddp) in steps[0].items():
        (w0, g0), (w1, g1) = steps[1][name], steps[2][name]
        g_mean = (g0 + g1) / 2
        scale = float(g_mean.abs().max()) + 1e-12
        torch.testing.assert_close(g_ddp, g_mean, rtol=1e-3, atol=1e-4 * scale, msg=name)
        # undo each one-process step: both started from the same seeded weights
        init = [(w + lr * g / (g.abs() + eps)) / (1 - lr * wd) for w, g in ((w0, g0), (w1, g1))]
        torch.testing.assert_close(init[0], init[1], rtol=1e-5, atol=1e-6, msg=name)
        # AdamW's first step: decay, then lr * m_hat / (sqrt(v_hat) + eps) = lr * g / (|g| + eps)
        want = init[0] * (1 - lr * wd) - lr * g_mean / (g_mean.abs() + eps)
        near_zero = g_mean.abs() < 1e-3 * scale  # the sign of a ~0 mean gradient is float noise
        torch.testing.assert_close(w_ddp[~near_zero], want[~near_zero], rtol=1e-5, atol=1e-6, msg=name)
    assert "Grad strides do not match" not in runs["ddp_stderr"]  # gradients are bucket views
    record = json.loads((runs["ddp"] / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["distributed"]["world_size"] == 2 and record["distributed"]["global_batch_size"] == 2
    assert "1 patches per rank x 2 rank(s) = global batch 2" in runs["ddp_stderr"]
    for name in ("best.pt", "log.csv", "config.yaml", "run.json"):
        assert (runs["ddp"] / name).is_file(), name


@pytest.mark.slow
def test_ddp_resume_extends_the_run(runs, dataset, tmp_path):
    import shutil

    from medresunet.training.checkpoint import load_checkpoint

    run = tmp_path / "ddp"
    shutil.copytree(runs["ddp"], run)
    proc = _torchrun(["-m", "pipelines.train", "--manifest", str(dataset), "--output", str(run),
                      "--device", "cpu", "--resume", "--epochs", "2", "--quiet"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["epoch"] == 2 and ckpt["train_state"]["global_step"] == 2
    with open(run / "log.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["inputs"]["resume"] is True


# --- sharded inference ------------------------------------------------------------------


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scans")
    for i in range(5):
        img, _ = sphere_phantom((20, 20, 20), seed=10 + i, spacing=SPACING)
        write_nifti(root / f"s{i}.nii.gz", img, make_affine("lps", SPACING))
    return root


@pytest.mark.slow
def test_torchrun_inference_writes_every_scan_once(model, scans, tmp_path):
    out = tmp_path / "out"
    proc = _torchrun(["-m", "pipelines.infer", "--model", str(model), "--input", str(scans),
                      "--output", str(out), "--device", "cpu", "--quiet"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"s{i}.nii.gz" for i in range(5)]
    merged = json.loads((out / "run.json").read_text())
    assert sorted(c["case_id"] for c in merged["cases"]) == [f"s{i}" for i in range(5)]
    assert all(c["status"] == "ok" for c in merged["cases"]) and merged["failures"] == []
    assert merged["shard"]["world_size"] == 2
    per_rank = [json.loads((out / f"run.rank{r}.json").read_text()) for r in (0, 1)]
    ids = [c["case_id"] for rec in per_rank for c in rec["cases"]]
    assert sorted(ids) == [f"s{i}" for i in range(5)] and len(ids) == 5  # disjoint and complete


def test_shard_flag_covers_every_scan_once(model, scans, tmp_path, capsys):
    from pipelines.infer import main

    out = tmp_path / "out"
    for i in (0, 1):
        assert main(["--model", str(model), "--input", str(scans), "--output", str(out),
                     "--device", "cpu", "--quiet", "--shard", f"{i}/2"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"s{i}.nii.gz" for i in range(5)]
    recs = [json.loads((out / f"run.shard{i}of2.json").read_text()) for i in (0, 1)]
    assert [c["case_id"] for c in recs[0]["cases"]] == ["s0", "s2", "s4"]
    assert [c["case_id"] for c in recs[1]["cases"]] == ["s1", "s3"]
    assert recs[1]["shard"] == {"index": 1, "count": 2, "n_scans": 2, "n_scans_total": 5}
    assert not (out / "run.json").exists()


@pytest.mark.parametrize("value", ["2/2", "x", "1/0"])
def test_bad_shard_exit_2(model, scans, tmp_path, value, capsys):
    from pipelines.infer import main

    rc = main(["--model", str(model), "--input", str(scans), "--output", str(tmp_path / "o"),
               "--device", "cpu", "--quiet", "--shard", value])
    assert rc == 2 and "--shard" in capsys.readouterr().err


# --- a rank that dies -------------------------------------------------------------------


@pytest.mark.slow
def test_dead_rank_stops_the_job_with_a_clear_error(dataset, tmp_path):
    """Two ranks started by hand (torchrun's environment, no agent); rank 1 is killed mid-run."""
    run = tmp_path / "run"
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, MEDRESUNET_DIST_TIMEOUT_S="20")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pipelines.train", "--manifest", str(dataset), "--config", "demo",
             "--output", str(run), "--device", "cpu", "--quiet",
             *_sets([*TINY, "train.batch_size=1", "train.steps_per_epoch=100000"])],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace"))
    try:
        deadline = time.monotonic() + 90
        while not (run / "config.yaml").exists():  # rank 0 writes it just before training
            assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        time.sleep(1.0)
        procs[1].send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - t_kill
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == 1, err[-3000:]
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert lines and "rank 0 of 2: a collective operation failed or timed out" in lines[-1], err[-3000:]
    assert "Traceback" not in err
    assert waited < 45
