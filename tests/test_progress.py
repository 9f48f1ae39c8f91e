"""RUN/progress.png: drawn from log.csv (as TrainingLog writes it), one line per fold, budget marked."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from medresunet.training import progress
from medresunet.training.logs import TrainingLog

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")


def _log(run_dir, epochs=6, seconds=10.0, labels=("liver", "lesion")):
    log = TrainingLog(run_dir, list(labels), tensorboard=False)
    for e in range(1, epochs + 1):
        val = None
        if e % 2 == 0:
            dice = {n: 0.1 * e + 0.01 * i for i, n in enumerate(labels)}
            val = {"dice_mean": float(np.mean(list(dice.values()))), "dice": dice}
        log.add(e, 4 * e, 1.0 / e, 1e-3 * (1 - e / 10), seconds, val)
    log.close()


def test_read_log_reads_what_training_log_writes(tmp_path):
    _log(tmp_path)
    c = progress.read_log(tmp_path / "log.csv")
    assert list(c.epoch) == [1, 2, 3, 4, 5, 6] and list(c.step) == [4, 8, 12, 16, 20, 24]
    assert c.train_loss[2] == pytest.approx(1 / 3, rel=1e-5)
    assert set(c.dice) == {"liver", "lesion"}
    assert math.isnan(c.dice["liver"][0]) and c.dice["lesion"][3] == pytest.approx(0.41)
    assert list(np.isfinite(c.dice_mean)) == [False, True] * 3


def test_progress_png_written_atomically_and_decodes(tmp_path):
    _log(tmp_path)
    path = progress.write_progress(tmp_path, max_minutes=2.0)
    assert path == tmp_path / "progress.png"
    w, h = Image.open(path).size
    assert (w, h) == (1300, 900)  # 13 x 9 in at 100 dpi
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_folds_draw_one_line_each_into_the_run_folder(tmp_path, monkeypatch):
    for k in (1, 0):
        _log(tmp_path / f"fold_{k}", epochs=4 + k)
    drawn = []
    real = progress.render_progress_png

    def spy(curves, *args, **kwargs):
        drawn.append([c.name for c in curves])
        return real(curves, *args, **kwargs)

    monkeypatch.setattr(progress, "render_progress_png", spy)
    path = progress.write_progress(tmp_path / "fold_1", max_minutes=1.0)
    assert path == tmp_path / "progress.png" and not (tmp_path / "fold_1" / "progress.png").exists()
    assert drawn == [["fold 0", "fold 1"]]
    assert progress.run_root(tmp_path / "fold_0") == tmp_path and progress.run_root(tmp_path) == tmp_path


def test_budget_end_reached_or_projected():
    s = np.array([30.0, 30.0, 30.0, 30.0])
    assert progress.budget_end_epoch(s, 1.0) == pytest.approx(2.0)  # 60 s after two epochs
    assert progress.budget_end_epoch(s, 3.0) == pytest.approx(6.0)  # projected at 30 s per epoch
    assert progress.budget_end_epoch(s, 1.0, from_epoch=2) == pytest.approx(4.0)  # resumed at 2
    assert progress.budget_end_epoch(np.array([np.nan]), 1.0) is None


def test_budget_is_drawn_only_when_given(tmp_path):
    _log(tmp_path)
    curves = [progress.read_log(tmp_path / "log.csv")]
    with_budget = progress.render_progress_png(curves, max_minutes=0.5)
    without = progress.render_progress_png(curves)
    assert with_budget != without


def test_smooth_is_centred_and_skips_nan():
    out = progress.smooth(np.array([1.0, np.nan, 3.0, 5.0]), window=3)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 4.0 and out[3] == 4.0
    line = progress.smooth(np.arange(40.0))  # window 5: a straight line stays put (no lag)
    assert np.allclose(line[2:-2], np.arange(40.0)[2:-2])


def test_epoch_to_step_interpolates_and_extrapolates(tmp_path):
    _log(tmp_path, epochs=3)  # steps 4, 8, 12
    c = progress.read_log(tmp_path / "log.csv")
    assert progress.epoch_to_step(c, 1.5) == pytest.approx(6.0)
    assert progress.epoch_to_step(c, 0.5) == pytest.approx(2.0)
    assert progress.epoch_to_step(c, 5.0) == pytest.approx(20.0)


def test_without_matplotlib_one_log_line_and_no_file(tmp_path, monkeypatch, caplog):
    import builtins

    _log(tmp_path)
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr(progress, "_warned_no_matplotlib", False)
    with caplog.at_level(logging.INFO, logger="medresunet.training.progress"):
        assert progress.write_progress(tmp_path) is None
        assert progress.write_progress(tmp_path) is None
    assert len([r for r in caplog.records if "matplotlib" in r.getMessage()]) == 1
    assert not (tmp_path / "progress.png").exists()
