"""``RUN/summary.html``: one self-contained page about a finished training run.

What it shows, and where each part comes from (the run folder only, plus the manifest's
label files for the data):

* the result: best and last validation Dice per label (``log.csv``);
* the curves: the picture of :mod:`medresunet.training.progress` (embedded PNG);
* the plan or config with its reasons: ``RUN/plan.yaml``'s ``# Why each value:`` comments,
  else ``run.json``'s ``plan.reasons``, else the config's values alone (``run.json``);
* the data: cases per split, and per case its shape, spacing (mm) and label volumes (mL),
  read from the manifest that ``run.json`` names (at most :data:`MAX_DATA_CASES` cases);
* timings (``log.csv`` and ``run.json``) and versions (``run.json``).

A part whose source is missing or unreadable is replaced by a line that says so; the
page is still written. Figures need matplotlib (the ``report`` extra).
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medresunet.io.atomic import write_text_atomic
from medresunet.metrics.report import PAGE_CSS
from medresunet.training.progress import Curves, find_logs, read_log, render_progress_png, run_root

logger = logging.getLogger(__name__)
MAX_DATA_CASES = 200  # reading more label volumes than this for a page is not worth the wait


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "&ndash;" if not math.isfinite(value) else f"{value:.{digits}f}"
    return "&ndash;" if value is None else _e(value)


class _Html(str):
    """Text that is already HTML (not escaped again)."""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns left-aligned; cells escaped unless :class:`_Html`."""
    def cell(i: int, v: Any) -> str:
        cls = " class=l" if i < left else ""
        return f"<td{cls}>{v if isinstance(v, _Html) else _num(v)}</td>"

    head = "".join(f"<th{' class=l' if i < left else ''}>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def plan_reasons(run_dir: Path, record: Mapping[str, Any]) -> dict[str, str]:
    """Setting -> reason: from ``plan.yaml``'s comment block (the run's folder, the one above
    a fold, or the ``--config`` file when it is a plan), else ``run.json``'s ``plan.reasons``;
    empty without a plan."""
    given = (record.get("inputs") or {}).get("config")
    candidates = [run_dir / "plan.yaml", run_root(run_dir) / "plan.yaml"]
    if isinstance(given, str) and given.endswith((".yaml", ".yml")):
        candidates.append(Path(given))
    for path in dict.fromkeys(candidates):
        if path.is_file():
            reasons = _reasons_from_yaml(path.read_text(encoding="utf-8", errors="replace"))
            if reasons:
                return reasons
    plan = record.get("plan")
    if isinstance(plan, Mapping) and isinstance(plan.get("reasons"), list):
        return {str(r[0]): str(r[1]) for r in plan["reasons"] if isinstance(r, (list, tuple)) and len(r) == 2}
    return {}


def _reasons_from_yaml(text: str) -> dict[str, str]:
    """``#   key: why`` lines after ``# Why each value:`` (the planner's plan.yaml header)."""
    out: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:].strip()
        if body.lower().startswith("why each value"):
            inside = True
        elif inside and ":" in body:
            key, why = body.split(":", 1)
            out.setdefault(key.strip(), why.strip())
    return out


def _flatten(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _flatten(value, name + ".")
        else:
            out.append((name, value))
    return out


def _config_html(record: Mapping[str, Any], reasons: Mapping[str, str]) -> str:
    """The planned choices with their reasons (when there is a plan), then every config value,
    one small table per section side by side."""
    config = record.get("config")
    if not isinstance(config, Mapping):
        return "<p>run.json holds no config.</p>"
    flat = dict(_flatten(config))
    parts = []
    if reasons:
        parts.append("<p>Planned: each reason is the planner's (<code>plan.yaml</code>).</p>")
        parts.append(_table(("setting", "value", "reason"),
                            [(k, _compact(flat[k]) if k in flat else "", why) for k, why in reasons.items()], left=3))
        parts.append("<details><summary>every config value</summary>")
    else:
        parts.append("<p>From the config file (no plan: no reasons recorded).</p>")
    sections: dict[str, list[tuple[str, str]]] = {}
    for key, value in flat.items():
        section, _, rest = key.partition(".")
        sections.setdefault(section, []).append((rest or section, _compact(value)))
    parts.append("<div class=cols>" + "".join(
        f"<div>{_table((section, 'value'), rows, left=2)}</div>" for section, rows in sections.items()) + "</div>")
    if reasons:
        parts.append("</details>")
    return "".join(parts)


def _compact(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def _result_html(curves: Curves | None, labels: Sequence[str]) -> str:
    if curves is None or not np.isfinite(curves.dice_mean).any():
        return "<p>No validation ran (no validation cases, or no log.csv).</p>"
    val = np.flatnonzero(np.isfinite(curves.dice_mean))
    best, last = int(val[np.argmax(curves.dice_mean[val])]), int(val[-1])
    names = [n for n in labels if n in curves.dice] or list(curves.dice)
    rows = [(n, float(curves.dice[n][best]), float(curves.dice[n][last])) for n in names]
    rows.append((_Html("<b>mean</b>"), float(curves.dice_mean[best]), float(curves.dice_mean[last])))
    return _table(("label", f"best (epoch {int(curves.epoch[best])})", f"last (epoch {int(curves.epoch[last])})"),
                  rows)


def case_data(manifest_path: str | Path, case_ids: Mapping[str, Sequence[str]],
              limit: int = MAX_DATA_CASES) -> tuple[list[dict[str, Any]], str]:
    """Per case: split, shape, spacing (mm) and volume (mL) per label, from the label files.

    Args:
        manifest_path: the run's manifest.
        case_ids: split name -> case ids (e.g. ``{"train": [...], "val": [...]}``).
        limit: read at most this many cases (evenly spread over the list).

    Returns:
        ``(rows, note)``: one dict per case read (``case_id, split, shape, spacing_mm,
        volumes_ml``); ``note`` says what was left out or could not be read ("" if nothing).
    """
    from medresunet.io import read_volume
    from medresunet.manifest import load_manifest

    try:
        manifest = load_manifest(manifest_path)
    except Exception as err:  # noqa: BLE001 - any failure only drops this part of the page
        return [], f"the manifest {manifest_path} cannot be read now ({err})"
    by_id = {c.case_id: c for c in manifest.cases}
    labels = {n: v for n, v in manifest.labels.items() if v != 0}
    wanted = [(split, cid) for split, ids in case_ids.items() for cid in ids if cid in by_id]
    notes = []
    if len(wanted) > limit:
        keep = np.linspace(0, len(wanted) - 1, limit).round().astype(int)
        notes.append(f"{limit} of {len(wanted)} cases shown (evenly spread)")
        wanted = [wanted[i] for i in sorted(set(keep.tolist()))]
    rows, bad = [], []
    for split, cid in wanted:
        case = by_id[cid]
        try:
            label, geom = read_volume(case.label)
        except Exception as err:  # noqa: BLE001 - a moved file drops its row, named below
            bad.append(f"{cid} ({err})")
            continue
        voxel_ml = float(np.prod(geom.spacing)) / 1000.0
        counts = np.bincount(np.asarray(label, np.int64).ravel().clip(0), minlength=max(labels.values()) + 1)
        rows.append({"case_id": cid, "split": split, "shape": tuple(int(n) for n in geom.shape),
                     "spacing_mm": tuple(round(float(x), 3) for x in geom.spacing),
                     "volumes_ml": {n: float(counts[v]) * voxel_ml for n, v in labels.items()}})
    if bad:
        notes.append("unreadable: " + "; ".join(bad))
    return rows, "; ".join(notes)


def _data_html(record: Mapping[str, Any]) -> str:
    inputs = record.get("inputs") or {}
    splits = {"train": list(inputs.get("train_cases") or []), "val": list(inputs.get("val_cases") or [])}
    counts = ", ".join(f"{len(v)} {k}" for k, v in splits.items())
    parts = [f"<p>Cases: {_e(counts)} (manifest <code>{_e(inputs.get('manifest', '?'))}</code>).</p>"]
    if not inputs.get("manifest"):
        return parts[0]
    rows, note = case_data(inputs["manifest"], splits)
    if note:
        parts.append(f"<p class=note>{_e(note)}</p>")
    if not rows:
        return "".join(parts)
    names = list(rows[0]["volumes_ml"])
    spacing = np.array([r["spacing_mm"] for r in rows], float)
    parts.append(f"<p>Spacing (mm) per axis: min {_e(np.round(spacing.min(0), 3).tolist())}, median "
                 f"{_e(np.round(np.median(spacing, 0), 3).tolist())}, max {_e(np.round(spacing.max(0), 3).tolist())}.</p>")
    vols = {n: np.array([r["volumes_ml"][n] for r in rows]) for n in names}
    parts.append(_table(("label", "min mL", "median mL", "max mL", "cases without it"),
                        [(n, float(v.min()), float(np.median(v)), float(v.max()), int((v == 0).sum()))
                         for n, v in vols.items()]))
    table = [(r["case_id"], r["split"], " x ".join(map(str, r["shape"])), " x ".join(f"{x:g}" for x in r["spacing_mm"]),
              *(float(r["volumes_ml"][n]) for n in names)) for r in rows]
    parts.append("<details><summary>per case</summary>"
                 + _table(("case", "split", "shape (voxels)", "spacing (mm)", *(f"{n} mL" for n in names)),
                          table, left=4) + "</details>")
    return "".join(parts)


def _timings_html(record: Mapping[str, Any], curves: Curves | None) -> str:
    t = record.get("time") or {}
    result = record.get("result") or {}
    rows: list[tuple[str, Any]] = [("started", t.get("started")), ("finished", t.get("finished")),
                                   ("status", record.get("status")),
                                   ("epochs done", result.get("epochs_done")), ("steps", result.get("global_step")),
                                   ("whole command (s)", t.get("seconds")), ("training (s)", t.get("training_seconds")),
                                   ("in training steps (s)", t.get("step_seconds"))]
    if curves is not None and np.isfinite(curves.seconds).any():
        s, val = curves.seconds, np.isfinite(curves.dice_mean)
        rows.append(("seconds per epoch (median)", float(np.nanmedian(s))))
        steps = np.diff(np.concatenate([[0.0], curves.step]))
        ok = (steps > 0) & np.isfinite(s) & ~val
        if ok.any():
            rows.append(("seconds per step (epochs without validation)", float(np.median(s[ok] / steps[ok]))))
    return _table(("", "value"), [(k, v) for k, v in rows if v is not None])


def _versions_html(record: Mapping[str, Any]) -> str:
    env = record.get("environment") or {}
    rows = [(k, env.get(k)) for k in ("medresunet", "python", "platform", "processor", "cpu_count",
                                      "device", "device_name") if env.get(k) is not None]
    rows += [(k, v) for k, v in (env.get("versions") or {}).items() if v is not None]
    return _table(("", "version"), rows) if rows else "<p>run.json holds no versions.</p>"


def _curves_html(run_dir: Path, budget: Mapping[str, Any] | None = None) -> tuple[str, Curves | None]:
    """The progress picture of the run's root (all folds) and this run's own curves.

    ``budget``: ``run.json``'s ``budget`` (``training_minutes``, ``from_epoch``) of the last
    invocation; its end is marked on this run's curves.
    """
    logs = find_logs(run_root(run_dir))
    try:
        curves = [read_log(path, name) for name, path in logs]
    except OSError as err:
        return f"<p>log.csv cannot be read ({_e(err)}).</p>", None
    own = next((c for c, (_, path) in zip(curves, logs, strict=True) if path.parent == run_dir), None)
    if not curves:
        return "<p>No log.csv: no curves.</p>", None
    from medresunet.metrics.figures import png_data_uri

    try:
        index = next((i for i, (_, path) in enumerate(logs) if path.parent == run_dir), -1)
        marked = budget if budget and index >= 0 else {}
        uri = png_data_uri(render_progress_png(curves, marked.get("training_minutes"), index,
                                               int(marked.get("from_epoch") or 0)))
    except ImportError:
        return "<p>(matplotlib is not installed: no curves; <code>pip install medresunet[report]</code>)</p>", own
    return f"<img class=curves alt='training curves' src='{uri}'>", own


def render_summary(run_dir: str | Path) -> str:
    """The page's HTML for the run folder ``run_dir`` (``RUN`` or ``RUN/fold_K``).

    Raises:
        OSError, ValueError: ``run.json`` is missing or not JSON.
    """
    run_dir = Path(run_dir)
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    labels = [n for n, v in ((record.get("inputs") or {}).get("labels") or {}).items() if v != 0]
    curves_html, curves = _curves_html(run_dir, record.get("budget"))
    title = f"medresunet run: {run_dir.name}"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{PAGE_CSS}\nimg.curves{{max-width:100%}}.note{{color:#666}}.cols{{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}}</style></head><body>",
             f"<h1>{_e(title)}</h1><p><code>{_e(run_dir.resolve())}</code>: {_e(record.get('status', '?'))}</p>",
             "<h2>Validation Dice per label</h2>", _result_html(curves, labels),
             "<h2>Curves</h2>", curves_html,
             "<h2>Data</h2>", _data_html(record),
             "<h2>Plan or config</h2>", _config_html(record, plan_reasons(run_dir, record)),
             "<h2>Timings</h2>", _timings_html(record, curves),
             "<h2>Versions</h2>", _versions_html(record), "</body></html>"]
    return "".join(parts)


def write_summary(run_dir: str | Path) -> Path | None:
    """Write ``run_dir/summary.html`` atomically; on failure log a warning and return None
    (the page never fails a finished run)."""
    run_dir = Path(run_dir)
    try:
        page = render_summary(run_dir)
        path = write_text_atomic(run_dir / "summary.html", page)
    except Exception as err:  # noqa: BLE001 - a page must not fail a finished run; the warning says why
        logger.warning("%s: no summary.html (%s: %s)", run_dir, type(err).__name__, err)
        return None
    logger.info("run summary: %s", path)
    return path
