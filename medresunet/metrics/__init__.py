"""Per-case segmentation metrics (Dice, IoU, HD, HD95, ASSD, NSD, volumes), aggregation, reports.

Imports no torch: the metric definitions equal MONAI's (see :mod:`medresunet.metrics.surface`)
but are computed with NumPy/SciPy on each label's bounding box.
"""

from __future__ import annotations

from medresunet.metrics.aggregate import describe, format_summary, summarize, summary_table
from medresunet.metrics.case import EMPTY_DISTANCE_CHOICES, METRICS, STATUSES, case_metrics
from medresunet.metrics.overlay import OverlaySlice, worst_slice
from medresunet.metrics.report import ROW_COLUMNS, write_reports

__all__ = [
    "EMPTY_DISTANCE_CHOICES", "METRICS", "ROW_COLUMNS", "STATUSES", "OverlaySlice", "case_metrics",
    "describe", "format_summary", "summarize", "summary_table", "worst_slice", "write_reports",
]
