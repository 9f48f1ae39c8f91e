"""Batch inference: every scan of a folder -> ``OUTPUT/<id>.nii.gz``, with run records.

The loop behind ``medresunet-infer``, as a Python API::

    from medresunet.inference import Predictor
    from medresunet.inference.batch import BatchOptions, segment_folder

    predictor = Predictor.from_file("runs/demo/best.pt", device="auto")
    run = segment_folder(predictor, "scans/", "out/", BatchOptions(overwrite=True))
    print(run.failures)          # [(case_id, reason), ...]; the other scans were written

:func:`segment_folder` finds the scans (:func:`~medresunet.io.discover_scans`), keeps this
shard's share (a ``--shard I/N`` job array, or the rank under ``torchrun``), skips outputs
that exist (unless ``overwrite``), and segments the rest one by one with the next scan's
loading and preprocessing running in a thread meanwhile. :func:`segment_scan` is the
per-scan step (predict a loaded scan, write its outputs, return its record). A scan that
fails is recorded with its path and reason and the batch goes on. Under DDP every rank
writes ``run.rank<k>.json`` and rank 0 receives every rank's records (:func:`merge_ranks`).

The predictor is any object with the :class:`ScanPredictor` interface: ``load(paths,
series_uid)``, ``predict_loaded(loaded, return_probabilities)``, ``labels``, ``device``
and ``settings()``, as :class:`~medresunet.inference.predictor.Predictor` has.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medresunet.errors import MedresunetError, UsageError
from medresunet.training import distributed

log = logging.getLogger(__name__)

COMMAND = "medresunet-infer"


class ScanPredictor(Protocol):
    """What the batch loop needs of a predictor (``Predictor``, an ensemble, ...)."""

    labels: dict[str, int]
    device: Any

    def load(self, image_paths: Any, series_uid: str | None = None) -> Any: ...

    def predict_loaded(self, scan: Any, return_probabilities: bool = False) -> Any: ...

    def settings(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs.

    Attributes:
        overwrite: replace existing outputs (else they are skipped).
        save_probabilities: also write ``OUTPUT/probabilities/<id>.nii.gz``.
        series_uid: the DICOM series to read from folders holding several.
        shard: ``(index, count)``, 0-based: segment the scans whose index in the sorted scan
            list is ``index`` modulo ``count`` (a job array); ``None`` for all. Under
            ``torchrun`` the rank is the shard and this must be ``None``.
        quiet: no progress bar and no per-failure line on stderr.
        record_info: what the run records say about the model (e.g. ``checkpoint``,
            ``members``, ``postprocessing``), written after ``environment``.
        extra_outputs: ``f(case_id, loaded, prediction, output) -> dict`` run after a scan's
            NIfTI is written (e.g. its DICOM SEG); the dict joins the scan's record.
    """

    overwrite: bool = False
    save_probabilities: bool = False
    series_uid: str | None = None
    shard: tuple[int, int] | None = None
    quiet: bool = False
    record_info: Mapping[str, Any] = field(default_factory=dict)
    extra_outputs: Callable[[str, Any, Any, Path], dict[str, Any]] | None = None


@dataclass
class BatchRun:
    """What a batch did (after :func:`merge_ranks` on rank 0: every rank's cases).

    Attributes:
        input: the scan folder (or scan).
        output: the output folder.
        scans: the scans of this shard (all scans once merged).
        all_scans: every scan found, before sharding.
        device: the predictor's device.
        records: one record per scan: ``case_id, input, output, status`` (``ok``,
            ``skipped``, ``failed``) and, when run, ``seconds``, ``total_seconds``, ``error``.
        failures: ``(case_id, reason)`` of each failed scan.
        outputs: case id -> segmentation written or found.
        settings: the predictor's settings (and the batch options) for ``run.json``.
        shard: the shard description of the run record (``None``: not sharded).
        record_name: the file name of this process's run record.
        labels: the predictor's label map.
        started: the start time (``time.time()``).
    """

    input: Path
    output: Path
    scans: list[Any]
    all_scans: list[Any]
    device: Any = None
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    shard: dict[str, Any] | None = None
    record_name: str = "run.json"
    labels: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    record_info: Mapping[str, Any] = field(default_factory=dict)

    def record(self, **extra: Any) -> dict[str, Any]:
        """The ``run.json`` record (``extra`` such as ``report`` goes in as given)."""
        from medresunet.runinfo import environment_info

        shard = {} if self.shard is None else {"shard": self.shard}
        return {"command": COMMAND, "environment": environment_info(self.device),
                **self.record_info, "input": str(self.input), "output": str(self.output),
                "settings": self.settings, **shard, **extra, "labels": self.labels,
                "cases": sorted(self.records, key=lambda r: r["case_id"]),
                "failures": [list(f) for f in self.failures], "seconds": round(time.time() - self.started, 2)}

    def counts(self) -> dict[str, int]:
        """Number of records per status."""
        out = {"ok": 0, "skipped": 0, "failed": 0}
        for r in self.records:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out


def failure_reason(err: BaseException, path: Path) -> str:
    """One line naming the scan and why it failed."""
    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, MedresunetError):
        text = f"{type(err).__name__}: {text}"
    return text if str(path) in text else f"{path}: {text}"


def output_path(output: Path, case_id: str) -> Path:
    """Where the segmentation of ``case_id`` goes: ``OUTPUT/<id>.nii.gz``."""
    return output / f"{case_id}.nii.gz"


def _shard_of(dist: distributed.DistInfo, shard: tuple[int, int] | None) -> tuple[int, int, str]:
    """``(index, count, record file name)`` of this process."""
    if dist.enabled:
        if shard is not None:
            raise UsageError("--shard under torchrun: the ranks shard the scans already; use one or the other")
        return dist.rank, dist.world_size, f"run.rank{dist.rank}.json"
    if shard is not None:
        return shard[0], shard[1], f"run.shard{shard[0]}of{shard[1]}.json"
    return 0, 1, "run.json"


def start_batch(predictor: ScanPredictor, source: str | Path, output: str | Path, options: BatchOptions,
                dist: distributed.DistInfo) -> BatchRun:
    """Find the scans, keep this shard's, record the settings (nothing segmented yet)."""
    from medresunet.io import discover_scans

    source, output = Path(source), Path(output)
    all_scans = discover_scans(source)
    if not all_scans:
        raise UsageError(f"--input {source}: no scans found (NIfTI, NRRD, MHA or DICOM series folders)")
    index, count, record_name = _shard_of(dist, options.shard)
    scans = distributed.shard(all_scans, index, count)
    if count > 1:
        log.info("shard %d of %d (0-based): %d of %d scan(s)", index, count, len(scans), len(all_scans))
    shard = None
    if count > 1 or options.shard is not None:
        shard = {"index": index, "count": count, "n_scans": len(scans), "n_scans_total": len(all_scans)}
        if dist.enabled:
            shard.update(rank=dist.rank, world_size=dist.world_size)
    settings = {**predictor.settings(), "series_uid": options.series_uid, "overwrite": options.overwrite}
    return BatchRun(input=source, output=output, scans=scans, all_scans=all_scans, device=predictor.device,
                    settings=settings, shard=shard, record_name=record_name, labels=dict(predictor.labels),
                    record_info=dict(options.record_info))


def segment_scan(predictor: ScanPredictor, loaded: Any, case_id: str, output: Path,
                 save_probabilities: bool = False, extra_outputs: Callable | None = None) -> dict[str, Any]:
    """The per-scan step: predict a loaded scan and write its outputs in its own geometry.

    Args:
        predictor: a :class:`ScanPredictor`.
        loaded: what ``predictor.load`` returned for the scan.
        case_id: the scan's case id (the output file name).
        output: the output folder.
        save_probabilities: also write ``output/probabilities/<id>.nii.gz``.
        extra_outputs: see :class:`BatchOptions`.

    Returns:
        The scan's record: ``status: ok``, ``output``, ``seconds`` (per stage) and
        ``probabilities`` when written.
    """
    from medresunet.io import write_probabilities, write_segmentation

    result = predictor.predict_loaded(loaded, return_probabilities=save_probabilities)
    out = write_segmentation(result.labels, loaded.geometry, output_path(output, case_id))
    record: dict[str, Any] = {"status": "ok", "output": str(out), "seconds": dict(result.seconds)}
    if save_probabilities:
        probs = write_probabilities(result.probabilities, loaded.geometry,
                                    output / "probabilities" / f"{case_id}.nii.gz")
        record["probabilities"] = str(probs)
    if extra_outputs is not None:
        record.update(extra_outputs(case_id, loaded, result, output))
    return record


def _skip_existing(run: BatchRun, overwrite: bool) -> list[Any]:
    """The scans to segment; the others are recorded as skipped."""
    todo = [s for s in run.scans if overwrite or not output_path(run.output, s.case_id).exists()]
    for s in run.scans:
        if s not in todo:
            target = output_path(run.output, s.case_id)
            log.info("%s: %s exists, skipped (use --overwrite to replace it)", s.case_id, target)
            run.records.append({"case_id": s.case_id, "input": str(s.path), "output": str(target),
                                "status": "skipped"})
            run.outputs[s.case_id] = target
    return todo


def segment_all(predictor: ScanPredictor, run: BatchRun, todo: Sequence[Any], options: BatchOptions,
                bar_position: int | None = None) -> None:
    """Segment ``todo`` in order, loading the next scan in a thread while one is predicted."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def load(scan: Any) -> Any:
        return predictor.load([scan.path], options.series_uid)

    desc = "infer" if run.shard is None else f"infer {run.shard['index']}/{run.shard['count']}"
    bar = tqdm(total=len(todo), desc=desc, unit="scan", disable=options.quiet, file=sys.stderr,
               position=bar_position)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        pending = pool.submit(load, todo[0]) if todo else None
        for i, scan in enumerate(todo):
            bar.set_postfix_str(scan.case_id)
            record: dict[str, Any] = {"case_id": scan.case_id, "input": str(scan.path)}
            start = time.perf_counter()
            try:
                current, pending = pending, None
                if i + 1 < len(todo):
                    pending = pool.submit(load, todo[i + 1])  # prefetch while this one runs
                record.update(segment_scan(predictor, current.result(), scan.case_id, run.output,
                                           options.save_probabilities, options.extra_outputs))
                run.outputs[scan.case_id] = Path(record["output"])
            except Exception as err:  # noqa: BLE001 - one bad scan must not stop the batch
                reason = failure_reason(err, scan.path)
                log.debug("%s failed", scan.case_id, exc_info=True)
                if not options.quiet:
                    tqdm.write(f"{COMMAND}: {scan.case_id}: {reason}", file=sys.stderr)
                run.failures.append((scan.case_id, reason))
                record.update(status="failed", error=reason)
            record["total_seconds"] = round(time.perf_counter() - start, 3)
            run.records.append(record)
            bar.update(1)
    bar.close()


def merge_ranks(run: BatchRun, dist: distributed.DistInfo) -> bool:
    """Gather every rank's records on every rank; rank 0's ``run`` then holds them all.

    Returns:
        Whether this rank is rank 0 (the others keep their own records; their ``failures``
        become the failures of every rank, so that all ranks exit alike).
    """
    from medresunet.runinfo import write_run_json

    write_run_json(run.output / run.record_name, run.record())
    gathered = distributed.all_gather_object(
        dist, {"rank": dist.rank, "records": run.records, "failures": run.failures,
               "outputs": {k: str(v) for k, v in run.outputs.items()}, "device": str(run.settings["device"])})
    run.failures = [tuple(f) for g in gathered for f in g["failures"]]
    if not dist.is_main:
        return False
    run.records = [r for g in gathered for r in g["records"]]
    run.outputs = {k: Path(v) for g in gathered for k, v in g["outputs"].items()}
    run.settings["device"] = [g["device"] for g in gathered]
    run.scans = list(run.all_scans)
    run.shard = {"world_size": dist.world_size, "backend": dist.backend,
                 "per_rank": [{"rank": g["rank"], "n_scans": len(g["records"]),
                               "record": str(run.output / f"run.rank{g['rank']}.json")} for g in gathered]}
    run.record_name = "run.json"
    return True


def segment_folder(predictor: ScanPredictor, source: str | Path, output: str | Path,
                   options: BatchOptions | None = None, dist: distributed.DistInfo | None = None) -> BatchRun:
    """Segment every scan of ``source`` (a folder, a scan file or a DICOM series folder).

    Args:
        predictor: a :class:`ScanPredictor` (e.g. ``Predictor.from_file(...)``).
        source: where the scans are (:func:`~medresunet.io.discover_scans`).
        output: the output folder (created); ``<id>.nii.gz`` per scan.
        options: overwrite, probabilities, DICOM series, shard, progress.
        dist: under ``torchrun``, this rank's process group (the rank is the shard).

    Returns:
        A :class:`BatchRun`; the caller writes ``run.record(...)`` to
        ``output / run.record_name`` (``medresunet-infer`` adds the evaluation report).
        On ranks other than 0 under DDP, ``run.shard`` is set and ``run.record_name`` is
        its own, already written, ``run.rank<k>.json``.

    Raises:
        UsageError: no scans in ``source``, or ``options.shard`` under ``torchrun``.
    """
    options = options or BatchOptions()
    dist = dist or distributed.SINGLE
    run = start_batch(predictor, source, output, options, dist)
    run.output.mkdir(parents=True, exist_ok=True)
    s = run.settings
    log.info("%d scan(s); device %s, precision %s, overlap %s, tta %s", len(run.scans), s.get("device"),
             s.get("precision"), s.get("overlap"), s.get("tta"))
    todo = _skip_existing(run, options.overwrite)
    segment_all(predictor, run, todo, options, bar_position=dist.rank if dist.enabled else None)
    if dist.enabled:
        merge_ranks(run, dist)
    return run
