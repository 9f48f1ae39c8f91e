"""Evaluation: read each (prediction, reference) pair, compute the metrics in parallel, report.

Used by ``medresunet-eval``, ``medresunet-infer --labels`` and the cross-validation report:
:func:`evaluate_pairs` gives the rows (one per case and label) and the failures;
:func:`evaluate_to_reports` adds the summary and writes the report files. No printing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medresunet.errors import ScanError, UsageError
from medresunet.metrics.case import EMPTY_DISTANCE_CHOICES, case_metrics

log = logging.getLogger(__name__)

Pair = tuple[str, Path, Path, "Path | None"]  # (case_id, pred_path, ref_path, image_path)
GRID_ATOL_MM = 1e-3


@dataclass(frozen=True)
class EvalSettings:
    """How the metrics are computed.

    Attributes:
        nsd_tolerance_mm: NSD tolerance, mm.
        empty_distance: ``"nan"`` or ``"diagonal"`` (distances of missed / false-positive labels).
        workers: processes; 1 computes in this process.
        resample_pred_to_ref: resample a prediction on another grid (nearest neighbour)
            instead of failing the case.
    """

    nsd_tolerance_mm: float = 2.0
    empty_distance: str = "nan"
    workers: int = 1
    resample_pred_to_ref: bool = False

    def __post_init__(self) -> None:
        if self.empty_distance not in EMPTY_DISTANCE_CHOICES:
            raise UsageError(f"empty distance must be one of {EMPTY_DISTANCE_CHOICES}, got {self.empty_distance!r}")
        if self.workers < 1:
            raise UsageError(f"workers must be >= 1, got {self.workers}")


def resample_nearest(array: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                     dst_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label volume onto another grid (world RAS mm).

    Voxels of the destination grid outside the source volume get 0.
    """
    from scipy import ndimage

    nd = len(dst_shape)
    m = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)
    return ndimage.affine_transform(array, m[:nd, :nd], offset=m[:nd, 3], output_shape=tuple(dst_shape),
                                    order=0, mode="constant", cval=0)


def _found_labels(*arrays: np.ndarray) -> set[int]:
    found: set[int] = set()
    for a in arrays:
        if np.issubdtype(a.dtype, np.integer) and a.size and int(a.min()) >= 0 and int(a.max()) < 65536:
            found |= {int(v) for v in np.flatnonzero(np.bincount(a.ravel()))}
        else:
            found |= {int(v) for v in np.unique(a)}
    found.discard(0)
    return found


def _check_label_values(what: str, array: np.ndarray, path: Path) -> None:
    """ScanError naming ``path`` unless ``array`` holds integer label values."""
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return
    if not np.issubdtype(array.dtype, np.floating):
        raise ScanError(f"{what} {path}: label volume of dtype {array.dtype}; expected integer labels")
    values = np.unique(array)
    fractional = values[~np.isfinite(values) | (values != np.round(values))]
    if fractional.size:
        shown = ", ".join(f"{v:g}" for v in fractional[:5])
        raise ScanError(f"{what} {path}: label volume holds non-integer values ({shown}"
                        f"{', ...' if fractional.size > 5 else ''}); expected integer labels, "
                        "save the labels with an integer type")


def _warn_unmapped(case_id: str, labels: Mapping[str, int], ref: np.ndarray, ref_path: Path,
                   pred: np.ndarray, pred_path: Path) -> None:
    """Log the label values of a volume that the label map does not name (not evaluated)."""
    known = {int(v) for v in labels.values()} | {0}
    for what, array, path in (("reference", ref, ref_path), ("prediction", pred, pred_path)):
        extra = sorted(_found_labels(array) - known)
        if extra:
            log.warning("%s: %s %s holds label values %s that are not in the label map %s; "
                        "they are not evaluated", case_id, what, path, extra, dict(labels))


def read_pair(pred_path: Path, ref_path: Path, resample: bool = False) -> tuple[np.ndarray, np.ndarray, Any]:
    """Read a prediction and its reference and check that they share a grid.

    Args:
        pred_path: the predicted segmentation.
        ref_path: the reference label volume.
        resample: resample a prediction on another grid onto the reference's (nearest
            neighbour) instead of refusing it.

    Returns:
        ``(pred, ref, ref_geometry)``, both arrays on the reference's grid.

    Raises:
        ScanError: unreadable file, another grid (without ``resample``), non-integer labels.
    """
    from medresunet.io import read_volume

    ref, ref_geom = read_volume(ref_path)
    pred, pred_geom = read_volume(pred_path)
    if not pred_geom.same_grid(ref_geom, atol=GRID_ATOL_MM):
        if not resample:
            raise ScanError(
                f"prediction {pred_path} is on another grid than reference {ref_path}: "
                f"expected {ref_geom.describe()}, got {pred_geom.describe()} (affine differs by up to "
                f"{_affine_gap(pred_geom, ref_geom)}); pass --resample-pred-to-ref to resample "
                "the prediction (nearest neighbour)")
        pred = resample_nearest(pred, pred_geom.affine, ref_geom.affine, ref_geom.shape)
    for what, array, path in (("reference", ref, ref_path), ("prediction", pred, pred_path)):
        _check_label_values(what, array, path)
    return pred, ref, ref_geom


def _overlay(task: dict, pred: np.ndarray, ref: np.ndarray, ref_geom: Any, rows: list[dict]) -> Any:
    """The case's overlay slice, on its scan when the scan has the labels' shape."""
    from medresunet.io import read_volume
    from medresunet.metrics.overlay import case_overlay

    image = None
    if task["image"] is not None:
        img, _ = read_volume(task["image"])
        if img.shape == ref.shape:
            image = img
        else:
            log.warning("%s: scan %s has shape %s, labels %s: overlay without the scan",
                        task["case_id"], task["image"], img.shape, ref.shape)
    return case_overlay(pred, ref, ref_geom.affine, rows, image)


def _evaluate_task(task: dict) -> dict:
    """Worker: read one pair, check the grids, compute the rows (and the overlay slice)."""
    case_id = task["case_id"]
    try:
        pred, ref, ref_geom = read_pair(task["pred"], task["ref"], task["resample"])
        labels = task["labels"]
        found = sorted(_found_labels(pred, ref))
        if labels is None:
            labels = {_value_name(v): v for v in found}
        else:
            _warn_unmapped(case_id, labels, ref, task["ref"], pred, task["pred"])
        rows = case_metrics(pred, ref, ref_geom.spacing, labels, task["nsd_tolerance_mm"], task["empty_distance"])
        overlay = _overlay(task, pred, ref, ref_geom, rows) if task["overlay"] else None
    except (ScanError, ValueError, OSError, MemoryError) as err:
        return {"case_id": case_id, "error": str(err)}
    for row in rows:
        row["case_id"] = case_id
    return {"case_id": case_id, "rows": rows, "overlay": overlay, "found": found}


def _affine_gap(a, b) -> str:
    if a.shape != b.shape:
        return "n/a (shapes differ)"
    return f"{float(np.abs(a.affine - b.affine).max()):.4g} mm"


def _value_name(value: int) -> str:
    return f"label_{value}"


def _fill_missing_labels(rows: list[dict], case_ids: Sequence[str], values: set[int]) -> list[dict]:
    """With labels found per case: a ``both_empty`` row for every (case, label) without one.

    The label set is the union over all cases' references and predictions, so a case whose
    two volumes are both empty still gets its rows (it is counted, never dropped).
    """
    have = {(r["case_id"], int(r["label"])) for r in rows}
    extra = []
    for case_id in case_ids:
        for value in sorted(values):
            if (case_id, value) not in have:
                row = case_metrics(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8), (1.0, 1.0),
                                   {_value_name(value): value})[0]
                row["case_id"] = case_id
                extra.append(row)
    return rows + extra


def _run_tasks(tasks: list[dict], workers: int, quiet: bool) -> list[dict]:
    """The results of :func:`_evaluate_task` for every task, in ``workers`` processes."""
    from tqdm.auto import tqdm

    results: list[dict] = []
    bar = tqdm(total=len(tasks), desc="evaluate", unit="case", disable=quiet)
    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                results.append(_evaluate_task(task))
                bar.update(1)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                     mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_evaluate_task, t) for t in tasks]
                for fut in as_completed(futures):
                    results.append(fut.result())
                    bar.update(1)
    finally:
        bar.close()
    return results


def evaluate_pairs(pairs: Sequence[tuple[str, Path, Path, Path | None]],
                   labels: Mapping[str, int] | None = None, settings: EvalSettings | None = None,
                   quiet: bool = False,
                   overlays: MutableMapping | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Compute the metrics of each pair, in parallel processes.

    Args:
        pairs: ``(case_id, pred_path, ref_path, image_path_or_None)``.
        labels: name -> value (background 0 skipped); None: the union of the foreground
            values found in every case's reference and prediction, named ``label_<value>``,
            reported for every case (a case with both volumes empty gets ``both_empty``
            rows: it is counted, never dropped).
        settings: NSD tolerance, empty-mask distances, workers, resampling.
        quiet: no progress bar.
        overlays: if a dict is given, it receives case id -> OverlaySlice (the slice of
            worst disagreement, for report.html).

    Returns:
        ``(rows, failures)``: rows with ``case_id`` first, sorted by case then label value;
        failures as ``(case_id, reason)`` (unreadable file, grid mismatch, bad labels).
    """
    settings = settings or EvalSettings()
    tasks = [{"case_id": c, "pred": Path(p), "ref": Path(r), "image": None if i is None else Path(i),
              "labels": None if labels is None else dict(labels),
              "nsd_tolerance_mm": float(settings.nsd_tolerance_mm), "empty_distance": settings.empty_distance,
              "resample": bool(settings.resample_pred_to_ref), "overlay": overlays is not None}
             for c, p, r, i in pairs]
    rows: list[dict] = []
    failures: list[tuple[str, str]] = []
    evaluated: list[str] = []
    found: set[int] = set()
    for res in sorted(_run_tasks(tasks, settings.workers, quiet), key=lambda r: r["case_id"]):
        if "error" in res:
            log.warning("%s: %s", res["case_id"], res["error"])
            failures.append((res["case_id"], res["error"]))
            continue
        evaluated.append(res["case_id"])
        found.update(res["found"])
        rows.extend(res["rows"])
        if overlays is not None and res["overlay"] is not None:
            overlays[res["case_id"]] = res["overlay"]
    if labels is None:
        if evaluated and not found:
            log.warning("no foreground label in any prediction or reference and no label map: "
                        "nothing to measure; pass --label-names (e.g. organ=1) to list the cases")
        rows = _fill_missing_labels(rows, evaluated, found)
    rows = [{"case_id": r["case_id"], **{k: v for k, v in r.items() if k != "case_id"}} for r in rows]
    rows.sort(key=lambda r: (r["case_id"], r["label"]))
    return rows, failures


@dataclass
class Evaluation:
    """What :func:`evaluate_to_reports` computed and wrote."""

    rows: list[dict]
    failures: list[tuple[str, str]]
    summary: dict
    paths: dict[str, Path] = field(default_factory=dict)


def evaluate_to_reports(pairs: Sequence[tuple[str, Path, Path, Path | None]], labels: Mapping[str, int] | None,
                        out_dir: str | Path, settings: EvalSettings | None = None,
                        quiet: bool = False) -> Evaluation:
    """Evaluate the pairs, summarise, and write the report files into ``out_dir``.

    The overlays of ``report.html`` are drawn when matplotlib is installed (the ``report``
    extra). Returns an :class:`Evaluation` (its ``paths``: the files written).
    """
    from medresunet.metrics.aggregate import summarize
    from medresunet.metrics.report import write_reports

    try:
        import matplotlib  # noqa: F401

        overlays: dict | None = {}
    except ImportError:
        overlays = None
    rows, failures = evaluate_pairs(pairs, labels, settings, quiet, overlays)
    summary = summarize(rows)
    paths = write_reports(rows, summary, out_dir, overlays)
    return Evaluation(rows=rows, failures=failures, summary=summary, paths=dict(paths))
