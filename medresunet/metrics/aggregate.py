"""Aggregate per-case rows into a per-label summary (the ``summary.json`` structure).

Statistics are over the finite values only: NaN (both_empty, or distances of a missed
label with ``--empty-distance nan``) and inf are left out, and every status is counted, so
a missed organ never vanishes silently: its Dice of 0 is finite and is in the mean, and
it shows in ``status_counts["missed"]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from medresunet.metrics.case import METRICS, STATUSES

STATS = ("mean", "std", "median", "min", "max")


def describe(values: Iterable[float]) -> dict[str, float | None]:
    """mean, std (population, ddof=0), median, min and max of the finite values; None if none."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return dict.fromkeys(STATS)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def summarize(rows: Iterable[Mapping]) -> dict:
    """Summarise metric rows per label.

    Args:
        rows: dicts with ``case_id``, ``label_name``, ``status`` and the metric columns
            (``dice, iou, hd_mm, hd95_mm, assd_mm, nsd, ref_volume_ml, pred_volume_ml``).

    Returns:
        ``{"n_cases": N, "per_label": {label_name: {metric: {"mean", "std", "median", "min",
        "max"}, ..., "status_counts": {status: n}}}}``; labels in order of first
        appearance, every status listed (0 when none), None for a statistic without
        finite values.
    """
    rows = list(rows)
    cases = {str(r.get("case_id")) for r in rows}
    by_label: dict[str, list[Mapping]] = {}
    for row in rows:
        by_label.setdefault(str(row["label_name"]), []).append(row)
    per_label = {}
    for name, group in by_label.items():
        entry: dict = {m: describe(float(r[m]) for r in group if r.get(m) is not None) for m in METRICS}
        counts = dict.fromkeys(STATUSES, 0)
        for r in group:
            counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
        entry["status_counts"] = counts
        per_label[name] = entry
    return {"n_cases": len(cases) if rows else 0, "per_label": per_label}


def summary_table(summary: Mapping) -> list[dict]:
    """One flat row per label (the ``summary.csv`` layout).

    Columns: ``label_name, n_cases, n_ok, n_both_empty, n_missed, n_false_positive`` then
    ``<metric>_<stat>`` for every metric and statistic.
    """
    table = []
    for name, entry in summary["per_label"].items():
        row: dict = {"label_name": name, "n_cases": sum(entry["status_counts"].values())}
        for status, n in entry["status_counts"].items():
            row[f"n_{status}"] = n
        for m in METRICS:
            for s in STATS:
                row[f"{m}_{s}"] = entry[m][s]
        table.append(row)
    return table


def format_summary(summary: Mapping, metrics: tuple[str, ...] = ("dice", "hd95_mm", "assd_mm", "nsd")) -> str:
    """A plain-text table of the per-label means (std) and status counts, for a console."""
    header = ["label", *metrics, "ok", "missed", "false_pos", "both_empty"]
    lines = [header]
    for name, entry in summary["per_label"].items():
        cells = [name]
        for m in metrics:
            st = entry[m]
            cells.append("-" if st["mean"] is None else f"{st['mean']:.3f} ({st['std']:.3f})")
        c = entry["status_counts"]
        cells += [str(c["ok"]), str(c["missed"]), str(c["false_positive"]), str(c["both_empty"])]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join([f"{summary['n_cases']} case(s); mean (std) over finite values", *out])
