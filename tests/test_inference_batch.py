"""Batch inference as a Python API (medresunet.inference.batch): records, skips, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medresunet.inference.batch import BatchOptions, segment_folder
from tests.synthetic import make_affine, write_nifti
from tests.test_infer_cli import _checkpoint, _image


def _folder(root: Path) -> None:
    root.mkdir(parents=True)
    write_nifti(root / "a.nii.gz", _image(), make_affine("lps"))
    write_nifti(root / "b.nii.gz", _image(), make_affine("oblique"))
    (root / "bad.nii.gz").write_bytes(b"not a nifti at all")


def test_segment_folder_records_skips_and_failures(tmp_path):
    from medresunet.inference import Predictor

    _folder(tmp_path / "in")
    predictor = Predictor.from_file(_checkpoint(tmp_path / "best.pt"), device="cpu")
    run = segment_folder(predictor, tmp_path / "in", tmp_path / "out", BatchOptions(quiet=True))
    assert sorted(run.outputs) == ["a", "b"] and all(p.is_file() for p in run.outputs.values())
    assert [c for c, _ in run.failures] == ["bad"] and "bad.nii.gz" in run.failures[0][1]
    assert run.counts() == {"ok": 2, "skipped": 0, "failed": 1}
    record = run.record(report={})
    assert record["settings"]["precision"] == "fp32" and record["labels"] == {"background": 0, "organ": 1}
    assert "shard" not in record and run.record_name == "run.json"
    again = segment_folder(predictor, tmp_path / "in", tmp_path / "out", BatchOptions(quiet=True, shard=(1, 2)))
    assert [r["status"] for r in again.records] == ["skipped"]  # shard 1 of 2 of [a, b, bad]: b
    assert again.shard == {"index": 1, "count": 2, "n_scans": 1, "n_scans_total": 3}


class _Constant:
    """Not a Predictor: any object with its interface segments a folder."""

    labels = {"background": 0, "organ": 1}
    device = "cpu"

    def __init__(self, checkpoint: Path):
        from medresunet.inference import Predictor

        self.inner = Predictor.from_file(checkpoint, device="cpu")  # for loading only

    def load(self, paths, series_uid=None):
        return self.inner.load(paths, series_uid)

    def predict_loaded(self, scan, return_probabilities=False):
        from medresunet.inference.predictor import Prediction

        return Prediction(np.ones(scan.geometry.shape, np.uint8), scan.geometry, None, {"network": 0.0})

    def settings(self):
        return {"device": "cpu", "kind": "constant"}


def test_any_object_with_the_predictor_interface(tmp_path):
    from medresunet.io import read_volume

    _folder(tmp_path / "in")
    (tmp_path / "in" / "bad.nii.gz").unlink()
    run = segment_folder(_Constant(_checkpoint(tmp_path / "best.pt")), tmp_path / "in", tmp_path / "out", BatchOptions(quiet=True))
    assert not run.failures and run.settings["kind"] == "constant"
    labels, geometry = read_volume(run.outputs["a"])
    assert labels.min() == labels.max() == 1 and geometry.shape == (20, 16, 8)
