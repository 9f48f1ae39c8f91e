"""Full disk and read-only output (issue 7): a clear error, no corrupt file, earlier outputs intact.

The output folder is a tiny tmpfs when this process may mount one (root in a container),
filled up, then remounted read-only; else (no mount permission) a full disk is simulated by
making ``os.fsync`` of the temporary file fail with ENOSPC, which is what a delayed
allocation failure looks like.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest

from pipelines.evaluate import main as evaluate
from pipelines.infer import main as infer
from tests import bad_inputs as B


class Disk:
    """An output folder that can be made full or read-only."""

    def __init__(self, path: Path, monkeypatch, mounted: bool):
        self.path, self.monkeypatch, self.mounted = path, monkeypatch, mounted

    def fill(self) -> None:
        if not self.mounted:
            def fsync(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            self.monkeypatch.setattr(os, "fsync", fsync)
            return
        with contextlib.suppress(OSError), open(self.path / "filler", "wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 4096)

    def read_only(self) -> None:
        if not self.mounted:
            real_mkstemp = __import__("tempfile").mkstemp

            def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own name
                if dir is not None and Path(dir).resolve().is_relative_to(self.path.resolve()):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
                return real_mkstemp(*args, dir=dir, **kwargs)

            self.monkeypatch.setattr("tempfile.mkstemp", mkstemp)
            return
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def disk(tmp_path, monkeypatch):
    path = tmp_path / "disk"
    path.mkdir()
    mounted = False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(path)],
                                  capture_output=True, timeout=30)
            mounted = proc.returncode == 0
    try:
        yield Disk(path, monkeypatch, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _no_tmp(folder: Path) -> None:
    assert not list(folder.rglob(".tmp-*")), list(folder.rglob(".tmp-*"))


@pytest.mark.parametrize("problem, text", [("full", "No space left on device"),
                                           ("read_only", "Read-only file system")])
def test_infer_full_or_read_only_output(tmp_path, disk, capsys, problem, text):
    model = B.checkpoint(tmp_path / "best.pt")
    B.good_scan(tmp_path / "in" / "a.nii.gz")
    out = disk.path / "out"
    args = ["--model", str(model), "--input", str(tmp_path / "in"), "--output", str(out), "--device", "cpu",
            "--quiet"]
    assert infer(args) == 0
    first = (out / "a.nii.gz").read_bytes()
    B.good_scan(tmp_path / "in" / "b.nii.gz")
    disk.fill() if problem == "full" else disk.read_only()
    rc = infer(args)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    assert any(str(out) in ln and text in ln and "cannot write" in ln for ln in err.splitlines()), err
    assert not (out / "b.nii.gz").exists()
    assert (out / "a.nii.gz").read_bytes() == first  # the earlier output is intact
    _no_tmp(out)


@pytest.mark.parametrize("problem, text", [("full", "No space left on device"),
                                           ("read_only", "Read-only file system")])
def test_eval_full_or_read_only_output(tmp_path, disk, capsys, problem, text):
    for cid in ("a", "b"):
        B.good_label(tmp_path / "pred" / f"{cid}.nii.gz")
        B.good_label(tmp_path / "ref" / f"{cid}.nii.gz")
    out = disk.path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("earlier output\n")
    disk.fill() if problem == "full" else disk.read_only()
    rc = evaluate(["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--output", str(out),
                   "--quiet", "--workers", "1", "--labels", "organ=1"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if "medresunet-eval: error:" in ln)
    assert text in line and "metrics.csv" in line and "cannot write" in line, line
    assert not (out / "metrics.csv").exists()
    assert (out / "notes.txt").read_text() == "earlier output\n"
    _no_tmp(out)


def test_infer_full_disk_lists_the_failed_scan(tmp_path, disk, capsys):
    model = B.checkpoint(tmp_path / "best.pt")
    B.good_scan(tmp_path / "in" / "b.nii.gz")
    out = disk.path / "out"
    out.mkdir()
    disk.fill()
    rc = infer(["--model", str(model), "--input", str(tmp_path / "in"), "--output", str(out), "--device", "cpu",
                "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    assert any("b.nii.gz" in ln and "No space left on device" in ln for ln in err.splitlines()), err
    assert not (out / "b.nii.gz").exists()
    _no_tmp(out)
