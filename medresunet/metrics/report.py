"""Report files of an evaluation: metrics.csv/json, summary.json/csv, report.html.

All files are written atomically. ``report.html`` is self-contained (images embedded as
base64 PNG); with matplotlib installed it holds box plots of Dice and HD95 per label and,
per case, an overlay at the slice of worst disagreement; without matplotlib, the tables only.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from medresunet.io.atomic import write_text_atomic
from medresunet.metrics.aggregate import STATS, summary_table
from medresunet.metrics.case import METRICS, STATUSES
from medresunet.metrics.overlay import OverlaySlice

log = logging.getLogger(__name__)

ROW_COLUMNS = ("case_id", "label", "label_name", "status", "dice", "iou", "hd_mm", "hd95_mm",
               "assd_mm", "nsd", "ref_volume_ml", "pred_volume_ml")
REPORT_FILES = ("metrics.csv", "metrics.json", "summary.json", "summary.csv", "report.html")


def existing_reports(out_dir: str | Path) -> list[str]:
    """The names of :data:`REPORT_FILES` already in ``out_dir`` (empty if none or no folder)."""
    out = Path(out_dir)
    return [name for name in REPORT_FILES if (out / name).exists()]


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(obj):
    """NaN/inf -> None recursively (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _json_value(obj)


def _csv_text(rows: Iterable[Mapping], columns: Iterable[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def ordered_rows(rows: Iterable[Mapping]) -> list[dict]:
    """Rows with exactly the ``metrics.csv`` columns, sorted by case id then label value."""
    out = [{c: r.get(c) for c in ROW_COLUMNS} for r in rows]
    out.sort(key=lambda r: (str(r["case_id"]), int(r["label"])))
    return out


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


PAGE_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}tr.missed td,tr.false_positive td{background:#fde2e2}
tr.both_empty td{color:#888}.cases{display:flex;flex-wrap:wrap;gap:12px}
.case{border:1px solid #ddd;padding:6px;font-size:13px;max-width:100%}.bad{color:#b00;font-weight:bold}
.imgs{display:flex;gap:6px;align-items:flex-start}.imgs img{image-rendering:pixelated;max-width:100%}
.aside{color:#7a4b00}.legend{font-size:13px;margin:0.4em 0 0.8em}.legend span{margin-right:1.4em;white-space:nowrap}
.legend i{display:inline-block;width:14px;height:14px;margin-right:5px;vertical-align:-2px;border:1px solid #555}"""


def _summary_html(summary: Mapping) -> str:
    parts = ["<table><tr><th class=l>label</th><th>cases</th>"]
    parts += [f"<th>{s}</th>" for s in STATUSES]
    parts += [f"<th>{m} mean (std)</th><th>{m} median</th>" for m in METRICS[:6]]
    parts.append("</tr>")
    for name, entry in summary["per_label"].items():
        counts = entry["status_counts"]
        parts.append(f"<tr><td class=l>{html.escape(name)}</td><td>{sum(counts.values())}</td>")
        for s in STATUSES:
            cls = " class=bad" if s in ("missed", "false_positive") and counts[s] else ""
            parts.append(f"<td{cls}>{counts[s]}</td>")
        for m in METRICS[:6]:
            st = entry[m]
            parts.append(f"<td>{_fmt(st['mean'])} ({_fmt(st['std'])})</td><td>{_fmt(st['median'])}</td>")
        parts.append("</tr>")
    parts.append("</table>")
    return "".join(parts)


def _rows_html(rows: list[dict]) -> str:
    parts = ["<table><tr>" + "".join(f"<th class=l>{c}</th>" if c in ("case_id", "label_name", "status")
                                     else f"<th>{c}</th>" for c in ROW_COLUMNS) + "</tr>"]
    for r in rows:
        cells = []
        for c in ROW_COLUMNS:
            cls = " class=l" if c in ("case_id", "label_name", "status") else ""
            cells.append(f"<td{cls}>{_fmt(r[c])}</td>")
        parts.append(f"<tr class={html.escape(str(r['status']))}>{''.join(cells)}</tr>")
    parts.append("</table>")
    return "".join(parts)


_VIEWS = {0: "sagittal", 1: "coronal", 2: "axial"}


def _legend_html() -> str:
    from medresunet.metrics.figures import COLOURS

    what = {"reference": "reference outline (inside its border)",
            "prediction": "prediction outline (outside its border)",
            "disagreement": "disagreement of the case's worst label", "zoom": "zoomed area"}
    items = [f"<span><i style='background:rgb{COLOURS[k]}'></i>{html.escape(v)}</span>" for k, v in what.items()]
    return f"<div class=legend>{''.join(items)}</div>"


def _case_html(case_id: str, ov: OverlaySlice, case_rows: list[dict], worst: float | None) -> str:
    """One case's panel: the whole slice, the zoomed inset, the caption with Dice per label."""
    from medresunet.metrics.figures import png_data_uri, render_overlay_pngs

    full, inset = render_overlay_pngs(ov)
    cid = html.escape(case_id)
    where = "2D" if ov.axis < 0 else f"{_VIEWS.get(ov.axis, 'axis')} slice {ov.index} (axis {ov.axis})"
    dice = []
    for r in case_rows:
        text = f"{html.escape(str(r['label_name']))} {_fmt(r['dice'], 2)}"
        dice.append(f"<b>{text}</b>" if ov.label is not None and int(r["label"]) == ov.label else text)
    bad = [f"{r['label_name']}: {r['status']}" for r in case_rows if r["status"] in ("missed", "false_positive")]
    note = f"<div class=bad>{html.escape('; '.join(bad))}</div>" if bad else ""
    if ov.n_outside:
        name = next((str(r["label_name"]) for r in case_rows if int(r["label"]) == ov.label), "the label")
        note += (f"<div class=aside>{ov.n_outside} differing voxels lie outside the zoom, in pieces away "
                 f"from the {html.escape(name)} (see the whole slice)</div>")
    return (f"<div class=case><div class=imgs><img alt='{cid}: whole slice' src='{png_data_uri(full)}'>"
            f"<img alt='{cid}: zoomed' src='{png_data_uri(inset)}'></div>"
            f"<div><b>{cid}</b>: lowest Dice {_fmt(worst)}; {where}, {ov.n_disagree} voxels differ</div>"
            f"<div>Dice: {' &middot; '.join(dice)}</div>{note}</div>")


def _figures_html(rows: list[dict], overlays: Mapping[str, OverlaySlice] | None) -> str:
    from medresunet.metrics.figures import png_data_uri, render_boxplots_png

    values: dict[str, dict[str, list[float]]] = {"dice": {}, "hd95_mm": {}}
    for r in rows:
        for m in values:
            per = values[m].setdefault(str(r["label_name"]), [])
            v = r[m]
            if isinstance(v, (int, float)) and math.isfinite(v):
                per.append(float(v))
    parts = ["<h2>Dice and HD95 per label</h2>",
             f"<img alt='box plots' src='{png_data_uri(render_boxplots_png(values))}'>"]
    if overlays:
        worst: dict[str, float] = {}
        by_case: dict[str, list[dict]] = {}
        for r in rows:
            d = r["dice"]
            score = d if isinstance(d, float) and math.isfinite(d) else 1.0
            worst[r["case_id"]] = min(worst.get(r["case_id"], 1.0), score)
            by_case.setdefault(r["case_id"], []).append(r)
        parts.append("<h2>Cases, worst first</h2><p>Each case: the slice where its worst label "
                     "(bold) disagrees most, whole and zoomed, in the scan's physical proportions.</p>")
        parts.append(_legend_html() + "<div class=cases>")
        for case_id in sorted(overlays, key=lambda c: (worst.get(c, 1.0), c)):
            parts.append(_case_html(case_id, overlays[case_id], by_case.get(case_id, []), worst.get(case_id)))
        parts.append("</div>")
    return "".join(parts)


def render_html(rows: list[dict], summary: Mapping, overlays: Mapping[str, OverlaySlice] | None = None,
                title: str = "medresunet evaluation") -> str:
    """The self-contained HTML report (figures only when matplotlib is importable)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{PAGE_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{summary['n_cases']} case(s). Statistics over finite values; every status is "
             "counted (a missed organ has Dice 0, included in the mean).</p>",
             "<h2>Summary per label</h2>", _summary_html(summary)]
    if _have_matplotlib():
        parts.append(_figures_html(rows, overlays))
    else:
        parts.append("<p>(matplotlib is not installed: figures left out; "
                     "<code>pip install medresunet[report]</code>)</p>")
    parts += ["<h2>Per case and label</h2>", _rows_html(rows), "</body></html>"]
    return "".join(parts)


def write_reports(rows: Iterable[Mapping], summary: Mapping, out_dir: str | Path,
                  overlays: Mapping[str, OverlaySlice] | None = None) -> dict[str, Path]:
    """Write ``metrics.csv``, ``metrics.json``, ``summary.json``, ``summary.csv`` and
    ``report.html`` into ``out_dir`` (created), each atomically.

    Args:
        rows: per case and label rows (:data:`ROW_COLUMNS`).
        summary: :func:`medresunet.metrics.aggregate.summarize` of the rows.
        out_dir: output folder.
        overlays: case id -> :class:`OverlaySlice` for the HTML overlays (optional).

    Returns:
        ``{"metrics_csv", "metrics_json", "summary_json", "summary_csv", "report_html"}`` -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = ordered_rows(rows)
    paths = {
        "metrics_csv": write_text_atomic(out / "metrics.csv", _csv_text(table, ROW_COLUMNS)),
        "metrics_json": write_text_atomic(out / "metrics.json", json.dumps(_clean(table), indent=1) + "\n"),
        "summary_json": write_text_atomic(out / "summary.json", json.dumps(_clean(summary), indent=1) + "\n"),
    }
    flat = summary_table(summary)
    columns = ["label_name", "n_cases", *(f"n_{s}" for s in STATUSES),
               *(f"{m}_{s}" for m in METRICS for s in STATS)]
    paths["summary_csv"] = write_text_atomic(out / "summary.csv", _csv_text(flat, columns))
    paths["report_html"] = write_text_atomic(out / "report.html", render_html(table, summary, overlays))
    log.info("wrote reports to %s", out)
    return paths
