"""Interrupted training (issue 7): SIGKILL at several points, ``--resume`` each time.

A child process runs ``medresunet-train`` (this file run as a script: ``main(argv)`` with
one library function wrapped so that the process sends itself SIGKILL at a chosen,
deterministic point; no fault-injection hook in the library). One run is killed

1. mid-epoch (at an optimizer step of epoch 2),
2. during validation (resumed, killed inside the next validation),
3. while writing ``last.pt`` (resumed, killed half way through ``torch.save`` of the
   temporary file, so a ``.tmp-`` file is left beside the complete previous ``last.pt``),

each time resumed with ``--resume``. After every kill
``last.pt`` and ``best.pt`` load cleanly and hold the last complete epoch; the resumed run
finishes the planned epochs and steps, and ends with the weights of an uninterrupted
run of the same seed (CPU, fp32, within 1e-4 relative).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.channels=[4,8]", "train.steps_per_epoch=2", "train.epochs=3", "train.batch_size=1",
        "data.samples_per_volume=1", "train.precision=fp32", "data.patch_size=[16,16,8]",
        "infer.sw_batch_size=1", "train.warmup_epochs=0", "data.num_workers=0", "data.cache=none",
        "train.val_interval=1", "train.seed=7"]


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str) -> None:
    """Wrap a library function so that this process SIGKILLs itself at ``point``.

    ``step:N`` (the N-th optimizer step of this process), ``validate:N`` (inside the N-th
    validation), ``save-last:N`` (half way through writing the temporary file of the N-th
    ``last.pt``).
    """
    import torch

    import medresunet.training.loop as loop

    kind, n = point.split(":")
    n = int(n)
    calls = {"n": 0}
    if kind == "step":
        real_step = torch.optim.AdamW.step

        def step(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                _die()
            return real_step(self, *args, **kwargs)

        torch.optim.AdamW.step = step
    elif kind == "validate":
        real_validate = loop.validate

        def validate(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                _die()
            return real_validate(*args, **kwargs)

        loop.validate = validate
    elif kind == "save-last":
        import io

        real_save_checkpoint, real_torch_save = loop.save_checkpoint, torch.save
        armed = {"on": False}

        def torch_save(obj, f, *args, **kwargs):
            if armed["on"]:
                buf = io.BytesIO()
                real_torch_save(obj, buf, *args, **kwargs)
                with open(f, "wb") as fh:  # the temporary file, half written
                    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                _die()
            return real_torch_save(obj, f, *args, **kwargs)

        def save_checkpoint(path, payload):
            if Path(path).name == "last.pt":
                calls["n"] += 1
                armed["on"] = calls["n"] == n
            return real_save_checkpoint(path, payload)

        torch.save = torch_save
        loop.save_checkpoint = save_checkpoint
    else:
        raise ValueError(point)


def _train(manifest: Path, run: Path, *, resume: bool = False, point: str | None = None,
           wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    args = [sys.executable, __file__, point or "none", "--manifest", str(manifest), "--output", str(run),
            "--device", "cpu", "--quiet"]
    args += ["--resume"] if resume else ["--config", "3d", *[a for s in TINY for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=240)


def _state(run: Path) -> dict:
    from medresunet.training.checkpoint import load_checkpoint

    return load_checkpoint(run / "last.pt")


def _assert_checkpoints_sound(run: Path) -> int:
    """last.pt (and best.pt if present) load; returns last.pt's epoch."""
    from medresunet.training.checkpoint import load_checkpoint

    if (run / "best.pt").exists():
        load_checkpoint(run / "best.pt")
    return int(_state(run)["train_state"]["epoch"])


def _assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from tests import bad_inputs as B

    return B.manifest(tmp_path_factory.mktemp("kill") / "data")


@pytest.fixture(scope="module")
def killed_three_times(dataset, tmp_path_factory) -> Path:
    """A run killed mid-epoch, in validation and in a checkpoint write, resumed after each."""
    run = tmp_path_factory.mktemp("killed") / "run"
    steps = []
    killed = _train(dataset, run, point="step:3")  # first step of epoch 2
    steps.append(("mid-epoch", killed.returncode, _assert_checkpoints_sound(run), None))
    killed = _train(dataset, run, resume=True, point="validate:1")  # validation of epoch 2
    steps.append(("validation", killed.returncode, _assert_checkpoints_sound(run), None))
    killed = _train(dataset, run, resume=True, point="save-last:2")  # writing epoch 3's last.pt
    leftovers = list(run.glob(".tmp-*.pt"))
    steps.append(("checkpoint write", killed.returncode, _assert_checkpoints_sound(run), leftovers))
    done = _train(dataset, run, resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run.joinpath("kills.txt").write_text(repr(steps))
    return run


@pytest.mark.slow
def test_sigkill_mid_epoch_in_validation_and_in_checkpoint_write_then_resume(killed_three_times):
    run = killed_three_times
    steps = eval(run.joinpath("kills.txt").read_text(), {"PosixPath": Path})  # noqa: S307 - our own repr
    for (where, code, epoch, _), expected_epoch in zip(steps, (1, 1, 2), strict=True):
        assert code == -signal.SIGKILL, where
        assert epoch == expected_epoch, (where, epoch)  # the last complete checkpoint, never a half one
    assert steps[2][3], "the kill in the checkpoint write should have left the half-written temporary file"
    final = _state(run)
    assert final["train_state"]["epoch"] == 3 and final["train_state"]["global_step"] == 6
    _assert_checkpoints_sound(run)
    rows = (run / "log.csv").read_text().strip().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3"], rows


@pytest.mark.slow
def test_resumed_run_has_the_weights_of_an_uninterrupted_run(dataset, killed_three_times, tmp_path):
    run = tmp_path / "uninterrupted"
    proc = _train(dataset, run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_weights(_state(killed_three_times), _state(run))


if __name__ == "__main__":  # the child process: python tests/test_kill_resume.py POINT ARGS...
    sys.path.insert(0, str(REPO))
    from pipelines.train import main

    if sys.argv[1] != "none":
        _arm(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
