"""Report files: metrics.csv/json, summary.json/csv, report.html (with and without figures)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from medresunet.metrics import METRICS, ROW_COLUMNS, STATUSES, case_metrics, summarize, worst_slice
from medresunet.metrics import report as report_mod
from medresunet.metrics.aggregate import format_summary


def _rows():
    shape = (12, 12, 6)
    ref = np.zeros(shape, np.uint8)
    ref[2:8, 2:8, 1:5] = 1
    ref[9:11, 9:11, 2:4] = 2
    labels = {"background": 0, "liver": 1, "lesion": 2}
    good = ref.copy()
    good[2:8, 7, 1:5] = 0
    missed = ref.copy()
    missed[missed == 2] = 0  # lesion missed
    rows = []
    cases = {"case_b": (missed, ref), "case_a": (good, ref)}
    for case_id, (pred, r) in cases.items():
        for row in case_metrics(pred, r, (1.0, 1.0, 2.0), labels):
            rows.append({"case_id": case_id, **row})
    overlays = {c: worst_slice(p, r, (1.0, 1.0, 2.0), image=r.astype(np.float32) * 10) for c, (p, r) in cases.items()}
    return rows, overlays


def test_summary_counts_missed_and_keeps_its_zero_dice_in_the_mean():
    rows, _ = _rows()
    summary = summarize(rows)
    assert summary["n_cases"] == 2
    assert list(summary["per_label"]) == ["liver", "lesion"]
    lesion = summary["per_label"]["lesion"]
    assert lesion["status_counts"] == {"ok": 1, "both_empty": 0, "missed": 1, "false_positive": 0}
    assert lesion["dice"]["mean"] == pytest.approx(0.5)
    assert lesion["dice"]["min"] == 0.0 and lesion["dice"]["max"] == 1.0
    assert lesion["dice"]["std"] == pytest.approx(0.5)  # population std
    assert lesion["hd95_mm"]["mean"] == 0.0  # the missed row's NaN distance is left out
    assert set(lesion) == {*METRICS, "status_counts"}
    assert set(lesion["dice"]) == {"mean", "std", "median", "min", "max"}
    empty = summarize([{**rows[0], "dice": float("nan")}])["per_label"]["liver"]["dice"]
    assert empty == {"mean": None, "std": None, "median": None, "min": None, "max": None}
    text = format_summary(summary)
    assert "lesion" in text and "missed" in text


def test_report_files(tmp_path):
    rows, overlays = _rows()
    summary = summarize(rows)
    paths = report_mod.write_reports(rows, summary, tmp_path / "out", overlays)
    assert set(paths) == {"metrics_csv", "metrics_json", "summary_json", "summary_csv", "report_html"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["metrics.csv", "metrics.json", "summary.json", "summary.csv", "report.html"])

    with open(paths["metrics_csv"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == ROW_COLUMNS
    assert [(r["case_id"], r["label_name"]) for r in table] == [
        ("case_a", "liver"), ("case_a", "lesion"), ("case_b", "liver"), ("case_b", "lesion")]
    missed = table[3]
    assert missed["status"] == "missed" and float(missed["dice"]) == 0.0
    assert math.isnan(float(missed["hd95_mm"]))

    data = json.loads(paths["metrics_json"].read_text())
    assert len(data) == 4 and tuple(data[3]) == ROW_COLUMNS
    assert data[3]["hd95_mm"] is None and data[3]["dice"] == 0.0

    saved = json.loads(paths["summary_json"].read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved) == {"n_cases", "per_label"}

    with open(paths["summary_csv"], newline="") as fh:
        flat = list(csv.DictReader(fh))
    assert [r["label_name"] for r in flat] == ["liver", "lesion"]
    assert flat[1]["n_missed"] == "1" and flat[1]["n_cases"] == "2"
    assert float(flat[1]["dice_mean"]) == pytest.approx(0.5)
    assert {f"n_{s}" for s in STATUSES} <= set(flat[0])

    page = paths["report_html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "liver" in page and "lesion" in page and "case_b" in page
    assert page.count("data:image/png;base64,") == 1 + 2 * len(overlays)  # box plots + whole and zoom per case
    assert "src='http" not in page  # self-contained
    assert page.index("<b>case_b</b>: lowest Dice") < page.index("<b>case_a</b>: lowest Dice")  # worst first


def test_report_without_matplotlib_has_tables_only(tmp_path, monkeypatch):
    rows, overlays = _rows()
    monkeypatch.setattr(report_mod, "_have_matplotlib", lambda: False)
    paths = report_mod.write_reports(rows, summarize(rows), tmp_path, overlays)
    page = paths["report_html"].read_text()
    assert "<img" not in page and "matplotlib is not installed" in page
    assert "<table>" in page


def test_worst_slice_picks_largest_disagreement():
    ref = np.zeros((6, 6, 5), np.uint8)
    ref[1:5, 1:5, :] = 1
    pred = ref.copy()
    pred[1:5, 1:3, 3] = 0
    pred[1:2, 1:2, 1] = 0
    ov = worst_slice(pred, ref, (1.0, 1.0, 3.0))
    assert (ov.axis, ov.index, ov.n_disagree) == (2, 3, 8)
    assert ov.ref.shape == (6, 6) and ov.image is None and ov.spacing_mm == (1.0, 1.0)
    same = worst_slice(ref, ref, (1.0, 1.0, 3.0))
    assert same.n_disagree == 0 and 0 <= same.index < 5
