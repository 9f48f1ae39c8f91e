"""Atomic writes leave the permission bits a plain ``open()`` would: the umask is honoured.

``mkstemp`` creates 0600 files; a prediction, report or checkpoint must not stay private to
its writer on a shared cluster.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from medresunet.io import Geometry, write_segmentation, write_text_atomic
from medresunet.metrics.aggregate import summarize
from medresunet.metrics.report import write_reports
from medresunet.training.checkpoint import save_checkpoint


@pytest.fixture
def umask():
    """Set a umask for the test, restore the previous one afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077], ids=oct)
def test_new_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    want = 0o666 & ~mask
    text = write_text_atomic(tmp_path / "run.json", "{}\n")
    geom = Geometry(shape=(4, 3, 2), affine=np.diag([1.0, 2.0, 3.0, 1.0]), source="dicom")
    seg = write_segmentation(np.ones((4, 3, 2), np.uint8), geom, tmp_path / "case.nii.gz")
    ckpt = save_checkpoint(tmp_path / "last.pt", {"a": 1})
    assert {p.name: _mode(p) for p in (text, seg, ckpt)} == {
        "run.json": want, "case.nii.gz": want, "last.pt": want}


def test_report_files_readable_by_group(tmp_path, umask):
    umask(0o022)
    row = {"case_id": "a", "label": 1, "label_name": "x", "status": "ok", "dice": 1.0}
    paths = write_reports([row], summarize([row]), tmp_path / "report")
    assert paths and all(_mode(p) == 0o644 for p in paths.values())


def test_existing_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "summary.json"
    target.write_text("old")
    target.chmod(0o640)
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640
