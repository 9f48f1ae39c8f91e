"""RUN/summary.html: result, curves, data, plan reasons, timings, versions; self-contained."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medresunet.training import summary
from medresunet.training.logs import TrainingLog
from tests.synthetic import make_affine, write_nifti

pytest.importorskip("matplotlib")


def _run(tmp_path, with_manifest=True):
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    for i, spacing in enumerate(((1.0, 1.0, 2.0), (0.5, 0.5, 4.0))):
        label = np.zeros((10, 10, 5), np.uint8)
        label[2:6, 2:6, 1:3] = 1  # 32 voxels
        label[7, 7, 2] = 2 if i == 0 else 0  # the lesion only in case 0
        write_nifti(data / f"c{i}_label.nii.gz", label, make_affine("ras", spacing))
        write_nifti(data / f"c{i}.nii.gz", label.astype(np.int16) * 100, make_affine("ras", spacing))
    manifest = {"name": "t", "channels": ["CT"], "labels": {"background": 0, "liver": 1, "lesion": 2},
                "cases": [{"id": f"c{i}", "image": f"c{i}.nii.gz", "label": f"c{i}_label.nii.gz",
                           "split": s} for i, s in ((0, "train"), (1, "val"))]}
    if with_manifest:
        (data / "manifest.json").write_text(json.dumps(manifest))
    log = TrainingLog(run, ["liver", "lesion"], tensorboard=False)
    for e, (liver, lesion) in enumerate(((0.5, 0.1), (0.9, 0.5), (0.8, 0.3)), start=1):
        log.add(e, 10 * e, 1.0 / e, 1e-3, 5.0, {"dice_mean": (liver + lesion) / 2,
                                                  "dice": {"liver": liver, "lesion": lesion}})
    log.close()
    record = {"command": "medresunet-train", "status": "finished",
              "environment": {"medresunet": "9.9.9", "python": "3.11", "versions": {"torch": "2.13.0"}},
              "config": {"model": {"channels": [4, 8]}, "train": {"epochs": 3, "lr": 0.001}},
              "inputs": {"manifest": str(data / "manifest.json"), "train_cases": ["c0"], "val_cases": ["c1"],
                         "labels": manifest["labels"]},
              "time": {"started": "2026-01-01T00:00:00+00:00", "seconds": 20.0, "training_seconds": 15.0},
              "result": {"epochs_done": 3, "global_step": 30}}
    (run / "run.json").write_text(json.dumps(record))
    return run


def test_summary_page_has_every_part(tmp_path):
    run = _run(tmp_path)
    path = summary.write_summary(run)
    page = path.read_text()
    assert path == run / "summary.html" and page.startswith("<!DOCTYPE html>")
    assert "src='http" not in page and page.count("data:image/png;base64,") == 1  # curves embedded
    # best (epoch 2: mean 0.7) and last (epoch 3) Dice per label
    assert "best (epoch 2)" in page and "last (epoch 3)" in page
    assert "<td class=l>lesion</td><td>0.500</td><td>0.300</td>" in page
    # data: splits, spacings, volumes (32 voxels x 2 mm^3 = 0.064 mL; x 1 mm^3 = 0.032 mL)
    assert "1 train, 1 val" in page
    assert "<td class=l>liver</td><td>0.032</td><td>0.048</td><td>0.064</td><td>0</td>" in page
    assert "<td class=l>lesion</td><td>0.000</td><td>0.001</td><td>0.002</td><td>1</td>" in page
    assert "0.5 x 0.5 x 4" in page
    # config without a plan, timings and versions
    assert "no plan: no reasons recorded" in page and "<td class=l>lr</td><td class=l>0.001</td>" in page
    assert "9.9.9" in page and "2.13.0" in page and "15.0" in page


def test_plan_reasons_are_shown_from_plan_yaml(tmp_path):
    run = _run(tmp_path)
    (run / "plan.yaml").write_text("# medresunet plan: a config file\n# Why each value:\n"
                                   "#   train.lr: 1e-3 (AdamW) for a long run\n"
                                   "#   candidate: c2: the largest that trains enough\n"
                                   "model:\n  channels: [4, 8]\n")
    page = summary.render_summary(run)
    assert "<td class=l>train.lr</td><td class=l>0.001</td><td class=l>1e-3 (AdamW) for a long run</td>" in page
    assert "the largest that trains enough" in page and "no plan" not in page


def test_plan_reasons_from_run_json_and_a_fold_folder(tmp_path):
    run = _run(tmp_path)
    record = json.loads((run / "run.json").read_text())
    record["plan"] = {"reasons": [["model.channels", "fits the GPU"]]}
    assert summary.plan_reasons(run, record) == {"model.channels": "fits the GPU"}
    fold = run / "fold_0"
    fold.mkdir()
    (run / "plan.yaml").write_text("# Why each value:\n#   train.epochs: budget\nmodel: {}\n")
    assert summary.plan_reasons(fold, {}) == {"train.epochs": "budget"}
    given = tmp_path / "my_plan.yaml"  # --config pointing at a plan elsewhere
    given.write_text("# Why each value:\n#   data.patch_size: fits\nmodel: {}\n")
    assert summary.plan_reasons(tmp_path, {"inputs": {"config": str(given)}}) == {"data.patch_size": "fits"}


def test_summary_without_manifest_still_written(tmp_path):
    run = _run(tmp_path, with_manifest=False)
    page = summary.write_summary(run).read_text()
    assert "cannot be read now" in page and "Validation Dice per label" in page


def test_no_run_json_no_page(tmp_path, caplog):
    assert summary.write_summary(tmp_path) is None
    assert not (tmp_path / "summary.html").exists() and "no summary.html" in caplog.text


def test_the_budget_end_is_marked_on_the_curves(tmp_path, monkeypatch):
    """run.json's budget (the training minutes of the last call) reaches the curves' budget mark."""
    run = _run(tmp_path)
    plain = summary.render_summary(run)
    record = json.loads((run / "run.json").read_text())
    record["budget"] = {"training_minutes": 0.2, "from_epoch": 1}  # 5 s epochs: ends in epoch 3
    (run / "run.json").write_text(json.dumps(record))
    calls = []
    real = summary.render_progress_png

    def spy(*args):
        calls.append(args[1:])
        return real(*args)

    monkeypatch.setattr(summary, "render_progress_png", spy)
    marked = summary.render_summary(run)
    assert calls == [(0.2, 0, 1)]  # this run's curve (the only one), from the resumed epoch
    assert marked != plain  # the mark is drawn
