"""Evaluate predictions against reference labels: pair files, read them, compute metrics in
parallel, and collect rows and failures (no printing; the CLI reports).

Used by ``medresunet-eval`` and by ``medresunet-infer --labels``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, MutableMapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medresunet.errors import ManifestError, ScanError, UsageError
from medresunet.metrics.case import EMPTY_DISTANCE_CHOICES, case_metrics

log = logging.getLogger(__name__)

Pair = tuple[str, Path, Path, "Path | None"]  # (case_id, pred_path, ref_path, image_path)
GRID_ATOL_MM = 1e-3


@dataclass
class Pairing:
    """The result of pairing predictions with references by case id.

    Attributes:
        pairs: ``(case_id, pred_path, ref_path, image_path_or_None)`` sorted by case id.
        unpaired: ``(case_id, reason)`` for a prediction without reference or the reverse.
        labels: name -> value (background included) from the manifest, else from the
            ``run.json`` that ``medresunet-infer`` wrote beside the predictions, else None.
    """

    pairs: list[tuple[str, Path, Path, Path | None]] = field(default_factory=list)
    unpaired: list[tuple[str, str]] = field(default_factory=list)
    labels: dict[str, int] | None = None


def _scans_by_id(root: Path) -> dict[str, Path]:
    from medresunet.io import discover_scans

    return {ref.case_id: ref.path for ref in discover_scans(root)}


INFER_PROG = "medresunet-infer"


def labels_from_run_record(folder: str | os.PathLike[str]) -> dict[str, int] | None:
    """The label map that ``medresunet-infer`` recorded in ``folder/run.json`` (or a shard's record).

    Returns:
        name -> value (the model's, background included), or None when the folder holds no
        record of ``medresunet-infer`` with a label map. An unreadable record is logged and
        ignored: the labels are then named by value.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for path in [folder / "run.json", *sorted(folder.glob("run.shard*of*.json"))]:
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("command") != INFER_PROG:
                continue
            labels = {str(k): int(v) for k, v in dict(record["labels"]).items()}
        except (OSError, ValueError, TypeError, KeyError) as err:
            log.warning("%s: cannot read the label map of %s (%s); labels are named by value",
                        path, INFER_PROG, err)
            return None
        log.info("label names from %s: %s", path, labels)
        return labels
    return None


def pair_cases(pred: str | os.PathLike[str], ref: str | os.PathLike[str],
               images: str | os.PathLike[str] | None = None) -> Pairing:
    """Pair prediction files with reference labels (and optional scans) by case id.

    Args:
        pred: folder (or single file) of predicted segmentations.
        ref: folder of reference labels, or a manifest file (JSON/YAML/MSD ``dataset.json``);
            with a manifest the cases with a label are used, and its label map.
        images: folder of scans for the overlays (optional); with a manifest and no
            ``images``, each case's first image channel.

    Raises:
        UsageError: a folder does not exist. ManifestError: an invalid manifest.
    """
    pred, ref = Path(pred), Path(ref)
    preds = _scans_by_id(pred)
    labels = None
    image_paths: dict[str, Path] = {}
    if ref.is_file() and ref.name.lower().endswith((".json", ".yaml", ".yml")):
        from medresunet.manifest import load_manifest

        manifest = load_manifest(ref)
        refs = {c.case_id: c.label for c in manifest.cases if c.label is not None}
        if not refs:
            raise ManifestError(f"{ref}: no case has a label; expected reference labels to compare with")
        labels = dict(manifest.labels)
        image_paths = {c.case_id: c.images[0] for c in manifest.cases if c.images}
    else:
        refs = _scans_by_id(ref)
        labels = labels_from_run_record(pred)
    if images is not None:
        image_paths = _scans_by_id(Path(images))
    out = Pairing(labels=labels)
    for case_id in sorted(set(preds) | set(refs)):
        if case_id not in refs:
            out.unpaired.append((case_id, f"prediction {preds[case_id]} has no reference in {ref}"))
        elif case_id not in preds:
            out.unpaired.append((case_id, f"reference {refs[case_id]} has no prediction in {pred}"))
        else:
            out.pairs.append((case_id, preds[case_id], refs[case_id], image_paths.get(case_id)))
    return out


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


def _evaluate_task(task: dict) -> dict:
    """Worker: read one pair, check the grids, compute the rows (and the overlay slice)."""
    from medresunet.io import read_volume
    from medresunet.metrics.overlay import case_overlay

    case_id = task["case_id"]
    try:
        ref, ref_geom = read_volume(task["ref"])
        pred, pred_geom = read_volume(task["pred"])
        if not pred_geom.same_grid(ref_geom, atol=GRID_ATOL_MM):
            if not task["resample"]:
                raise ScanError(
                    f"prediction {task['pred']} is on another grid than reference {task['ref']}: "
                    f"expected {ref_geom.describe()}, got {pred_geom.describe()} (affine differs by up to "
                    f"{_affine_gap(pred_geom, ref_geom)}); pass --resample-pred-to-ref to resample "
                    "the prediction (nearest neighbour)")
            pred = resample_nearest(pred, pred_geom.affine, ref_geom.affine, ref_geom.shape)
        for what, array, path in (("reference", ref, task["ref"]), ("prediction", pred, task["pred"])):
            _check_label_values(what, array, path)
        labels = task["labels"]
        found = sorted(_found_labels(pred, ref))
        if labels is None:
            labels = {_value_name(v): v for v in found}
        else:
            _warn_unmapped(case_id, labels, ref, task["ref"], pred, task["pred"])
        rows = case_metrics(pred, ref, ref_geom.spacing, labels, task["nsd_tolerance_mm"], task["empty_distance"])
        overlay = None
        if task["overlay"]:
            image = None
            if task["image"] is not None:
                img, img_geom = read_volume(task["image"])
                if img.shape == ref.shape:
                    image = img
                else:
                    log.warning("%s: scan %s has shape %s, labels %s: overlay without the scan",
                                case_id, task["image"], img.shape, ref.shape)
            overlay = case_overlay(pred, ref, ref_geom.affine, rows, image)
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


def evaluate_pairs(pairs: Sequence[tuple[str, Path, Path, Path | None]],
                   labels: Mapping[str, int] | None = None, nsd_tolerance_mm: float = 2.0,
                   empty_distance: str = "nan", workers: int = 1, resample_pred_to_ref: bool = False,
                   quiet: bool = False,
                   overlays: MutableMapping | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Compute the metrics of each pair, in parallel processes.

    Args:
        pairs: ``(case_id, pred_path, ref_path, image_path_or_None)``.
        labels: name -> value (background 0 skipped); None: the union of the foreground
            values found in every case's reference and prediction, named ``label_<value>``,
            reported for every case (a case with both volumes empty gets ``both_empty``
            rows: it is counted, never dropped).
        nsd_tolerance_mm: NSD tolerance, mm.
        empty_distance: ``"nan"`` or ``"diagonal"`` (distances of missed / false-positive labels).
        workers: processes; 1 computes in this process.
        resample_pred_to_ref: resample a prediction on another grid (nearest neighbour)
            instead of failing the case.
        quiet: no progress bar.
        overlays: if a dict is given, it receives case id -> OverlaySlice (the slice of
            worst disagreement, for report.html).

    Returns:
        ``(rows, failures)``: rows with ``case_id`` first, sorted by case then label value;
        failures as ``(case_id, reason)`` (unreadable file, grid mismatch, bad labels).
    """
    from tqdm.auto import tqdm

    if empty_distance not in EMPTY_DISTANCE_CHOICES:
        raise UsageError(f"empty distance must be one of {EMPTY_DISTANCE_CHOICES}, got {empty_distance!r}")
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    tasks = [{"case_id": c, "pred": Path(p), "ref": Path(r), "image": None if i is None else Path(i),
              "labels": None if labels is None else dict(labels), "nsd_tolerance_mm": float(nsd_tolerance_mm),
              "empty_distance": empty_distance, "resample": bool(resample_pred_to_ref),
              "overlay": overlays is not None} for c, p, r, i in pairs]
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
    rows: list[dict] = []
    failures: list[tuple[str, str]] = []
    evaluated: list[str] = []
    found: set[int] = set()
    for res in sorted(results, key=lambda r: r["case_id"]):
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
