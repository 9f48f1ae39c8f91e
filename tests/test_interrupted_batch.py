"""Interrupted inference and evaluation (issue 7): SIGKILL in the middle of a batch, rerun.

A child process runs the command (this file as a script) with ``nibabel.save`` (infer) or the
report writer (eval) wrapped so that the process writes half of one file and then sends
itself SIGKILL: a deterministic kill in the middle of a write. Afterwards no file under a
final name is half written, the rerun skips the finished scans and completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _arm(point: str) -> None:
    kind, n = point.split(":")
    n = int(n)
    calls = {"n": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if kind == "nifti":  # half way through writing the n-th NIfTI file (the temporary one)
        import nibabel

        real = nibabel.save

        def save(img, filename, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                real(img, filename, *args, **kwargs)
                data = Path(filename).read_bytes()
                Path(filename).write_bytes(data[: len(data) // 2])
                die()
            return real(img, filename, *args, **kwargs)

        nibabel.save = save
    elif kind == "report":  # half way through the n-th report file
        import medresunet.metrics.report as report
        from medresunet.io.atomic import temporary_path_for

        real = report.write_text_atomic

        def write_text_atomic(target, text):
            calls["n"] += 1
            if calls["n"] == n:
                temporary_path_for(Path(target)).write_text(text[: len(text) // 2])
                die()
            return real(target, text)

        report.write_text_atomic = write_text_atomic
    else:
        raise ValueError(point)


def _run(module: str, point: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, module, point, *args], cwd=REPO, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _final_files_readable(folder: Path) -> list[Path]:
    from medresunet.io import read_volume

    finals = [p for p in folder.glob("*.nii.gz") if not p.name.startswith(".tmp-")]
    for p in finals:
        read_volume(p)  # raises on a half-written file
    return finals


@pytest.mark.slow
def test_infer_killed_mid_batch_then_rerun(tmp_path):
    from tests import bad_inputs as B

    model = B.checkpoint(tmp_path / "best.pt")
    for cid in ("a", "b", "c", "d"):
        B.good_scan(tmp_path / "in" / f"{cid}.nii.gz")
    out = tmp_path / "out"
    args = ["--model", str(model), "--input", str(tmp_path / "in"), "--output", str(out), "--device", "cpu", "--quiet"]
    killed = _run("infer", "nifti:3", args)  # dies while writing c.nii.gz
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in _final_files_readable(out)) == ["a.nii.gz", "b.nii.gz"]
    assert list(out.glob(".tmp-*.nii.gz")), "expected the half-written temporary file"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("[ab].nii.gz")}

    rerun = _run("infer", "none:0", args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(p.name for p in _final_files_readable(out)) == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("[ab].nii.gz")} == before  # skipped, not redone
    import json

    run = json.loads((out / "run.json").read_text())
    assert {c["case_id"]: c["status"] for c in run["cases"]} == {"a": "skipped", "b": "skipped", "c": "ok", "d": "ok"}


@pytest.mark.slow
def test_eval_killed_while_writing_reports_then_rerun(tmp_path):
    from tests import bad_inputs as B

    for cid in ("a", "b", "c"):
        B.good_label(tmp_path / "pred" / f"{cid}.nii.gz")
        B.good_label(tmp_path / "ref" / f"{cid}.nii.gz")
    out = tmp_path / "out"
    args = ["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--output", str(out),
            "--quiet", "--workers", "1", "--labels", "organ=1"]
    killed = _run("evaluate", "report:3", args)  # dies while writing summary.json
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "metrics.csv").is_file() and not (out / "summary.json").exists()
    assert not (out / "run.json").exists()
    assert (out / "metrics.csv").read_text().count("\n") == 4  # complete: header + 3 cases

    rerun = _run("evaluate", "none:0", args)  # no --overwrite needed after an interrupted run
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name in ("metrics.csv", "metrics.json", "summary.json", "summary.csv", "report.html", "run.json"):
        assert (out / name).is_file(), name
    import json

    assert json.loads((out / "summary.json").read_text())["n_cases"] == 3
    # a finished report is not replaced silently
    again = _run("evaluate", "none:0", args)
    assert again.returncode == 2 and "--overwrite" in again.stderr


if __name__ == "__main__":  # child: python tests/test_interrupted_batch.py infer|evaluate POINT ARGS...
    sys.path.insert(0, str(REPO))
    if sys.argv[2] != "none:0":
        _arm(sys.argv[2])
    if sys.argv[1] == "infer":
        from pipelines.infer import main
    else:
        from pipelines.evaluate import main
    sys.exit(main(sys.argv[3:]))
