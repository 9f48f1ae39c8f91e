"""The CV report: out-of-fold predictions evaluated together, the CV estimate per label, and
the postprocessing decision (``RUN/cv/report/``, ``RUN/cv/summary.json``,
``RUN/postprocessing.json``).

The CV estimate of a label is the mean of its per-case metric over every training case,
each predicted by the one fold model that did not train on it: an estimate of how a model
trained this way does on new cases from the same source, with every case used once. A fold
whose predictions are missing is named in ``summary.json`` (``missing_folds``, and
``complete: false``); the estimate then covers the cases that are there and says so.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medresunet.crossval.layout import (
    MEMBER_CHECKPOINT,
    cv_dir,
    fold_dir,
    predictions_dir,
    read_folds,
    read_oof_record,
)
from medresunet.io.atomic import write_text_atomic

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
SUMMARY_METRICS = ("dice", "hd95_mm", "assd_mm", "nsd")


def _missing_reason(run: Path, fold: int) -> str:
    if not (fold_dir(run, fold) / MEMBER_CHECKPOINT).is_file():
        return f"fold_{fold} is not trained (no {fold_dir(run, fold) / MEMBER_CHECKPOINT}); train it with --fold {fold}"
    return (f"fold_{fold} did not finish: its out-of-fold predictions are not written "
            f"(no {fold_dir(run, fold) / 'oof.json'}); continue it with --resume --fold {fold}")


def oof_status(run_dir: PathLike) -> tuple[dict[str, tuple[int, Path]], list[dict[str, Any]], int]:
    """The out-of-fold predictions present and the folds (or cases) missing.

    Returns:
        ``(predictions, missing, folds)``: case id -> ``(fold, prediction path)``; one
        ``{"fold", "reason", "cases"}`` per fold missing in whole or in part; the number of folds.
    """
    run = Path(run_dir)
    folds, val = read_folds(run)
    present: dict[str, tuple[int, Path]] = {}
    missing: list[dict[str, Any]] = []
    for k in range(folds):
        cases = sorted(val.get(k, []))
        if read_oof_record(run, k) is None:
            missing.append({"fold": k, "reason": _missing_reason(run, k), "cases": cases})
            continue
        absent = [c for c in cases if not (predictions_dir(run) / f"{c}.nii.gz").is_file()]
        present.update({c: (k, predictions_dir(run) / f"{c}.nii.gz") for c in cases if c not in absent})
        if absent:
            missing.append({"fold": k, "reason": f"fold_{k}: {len(absent)} out-of-fold prediction(s) "
                            f"missing from {predictions_dir(run)}", "cases": absent})
    return present, missing, folds


def _cv_summary(rows: list[dict], summary: Mapping[str, Any], fold_of: Mapping[str, int], folds: int,
                missing: list[dict[str, Any]], failures: list[tuple[str, str]]) -> dict[str, Any]:
    per_label = {}
    for name, entry in summary["per_label"].items():
        per_label[name] = {f"{m}_{s}": entry[m][s] for m in SUMMARY_METRICS for s in ("mean", "std")}
        per_label[name]["dice_median"] = entry["dice"]["median"]
        per_label[name]["status_counts"] = entry["status_counts"]
    per_fold: dict[str, dict[str, float | None]] = {}
    for k in range(folds):
        fold_rows = [r for r in rows if fold_of.get(r["case_id"]) == k]
        per_fold[str(k)] = {name: _finite_mean(r["dice"] for r in fold_rows if r["label_name"] == name)
                            for name in per_label}
    means = [v["dice_mean"] for v in per_label.values() if v["dice_mean"] is not None]
    return {
        "folds": folds, "complete": not missing and not failures,
        "missing_folds": missing, "failed_cases": [list(f) for f in failures],
        "n_cases": summary["n_cases"], "checkpoint": MEMBER_CHECKPOINT,
        "mean_dice": float(np.mean(means)) if means else None,
        "per_label": per_label, "per_fold_dice_mean": per_fold,
        "estimate": ("mean over the out-of-fold cases: each training case predicted once, by the "
                     "fold model that did not train on it"),
    }


def _finite_mean(values) -> float | None:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    return float(arr.mean()) if arr.size else None


def write_cv_report(run_dir: PathLike, references: Mapping[str, Path], labels: Mapping[str, int],
                    images: Mapping[str, Path] | None = None, quiet: bool = True) -> dict[str, Any]:
    """Evaluate the out-of-fold predictions into ``RUN/cv/report/`` and ``RUN/cv/summary.json``.

    Args:
        run_dir: the run folder (with ``cv/folds.json``).
        references: case id -> reference label file.
        labels: name -> value (background included).
        images: case id -> scan, for the report's overlays (optional).
        quiet: no progress bar.

    Returns:
        The ``summary.json`` document (``complete`` false and ``missing_folds`` filled when a
        fold or case is missing).
    """
    from medresunet.metrics.evaluate import evaluate_to_reports
    from medresunet.runinfo import environment_info, write_run_json

    started = time.time()
    run = Path(run_dir)
    present, missing, folds = oof_status(run)
    for m in missing:
        log.warning("CV: %s (cases %s)", m["reason"], ", ".join(m["cases"]) or "none")
    no_ref = sorted(set(present) - set(references))
    failures = [(c, "no reference label") for c in no_ref]
    pairs = [(c, p, Path(references[c]), None if images is None else images.get(c))
             for c, (_, p) in sorted(present.items()) if c in references]
    report_dir = cv_dir(run) / "report"
    result = evaluate_to_reports(pairs, labels, report_dir, quiet=quiet)
    failures += result.failures
    rows, summary, paths = result.rows, result.summary, result.paths
    write_run_json(report_dir / "run.json", {
        "command": "medresunet-train --fold (CV report)", "environment": environment_info(),
        "pred": str(predictions_dir(run)), "labels": dict(labels), "n_pairs": len(pairs),
        "failures": [list(f) for f in failures], "outputs": {k: str(v) for k, v in paths.items()},
        "seconds": round(time.time() - started, 2)})
    doc = _cv_summary(rows, summary, {c: k for c, (k, _) in present.items()}, folds, missing, failures)
    doc["report"] = str(report_dir)
    write_text_atomic(cv_dir(run) / "summary.json", json.dumps(doc, indent=1) + "\n")
    return doc


def read_oof_cases(predictions: Mapping[str, Path], references: Mapping[str, Path]
                   ) -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]]:
    """``(case_id, prediction, reference, spacing_mm)`` per case, read one at a time.

    The pair is read as the evaluation reads it (:func:`medresunet.metrics.evaluate.read_pair`).

    Raises:
        ScanError: a prediction is not on its reference's grid, or a file holds non-integer labels.
    """
    from medresunet.metrics.evaluate import read_pair

    for case_id in sorted(set(predictions) & set(references)):
        pred, ref, ref_geom = read_pair(predictions[case_id], references[case_id])
        yield case_id, np.rint(pred).astype(np.int32), np.rint(ref).astype(np.int32), ref_geom.spacing


def write_postprocessing(run_dir: PathLike, references: Mapping[str, Path],
                         labels: Mapping[str, int]) -> dict[str, Any]:
    """Choose the postprocessing from the out-of-fold predictions: ``RUN/postprocessing.json``."""
    from medresunet.crossval.postprocessing import choose_postprocessing

    run = Path(run_dir)
    present, missing, _ = oof_status(run)
    doc = choose_postprocessing(read_oof_cases({c: p for c, (_, p) in present.items()}, references), labels)
    doc["complete"] = not missing
    doc["missing_folds"] = missing
    write_text_atomic(run / "postprocessing.json", json.dumps(doc, indent=1) + "\n")
    return doc
