"""``medresunet-infer``: segment every scan of a folder with a trained checkpoint.

Each scan (NIfTI/NRRD/MHA file or DICOM series folder) becomes ``OUTPUT/<id>.nii.gz`` in the
scan's own geometry. A scan that fails is reported with its path and reason and the others go
on; the command then exits 1 with the list of failures. ``OUTPUT/run.json`` records inputs,
outputs, per-scan timing, device, precision and versions. With ``--labels`` the outputs are
also evaluated against reference labels into ``OUTPUT/report/``.

Sharding (:mod:`medresunet.training.distributed`). ``--shard I/N`` (0-based, ``0 <= I < N``) segments
only the scans whose position in the sorted list of scans is ``I`` modulo ``N``: N jobs
with I = 0 .. N-1 (a SLURM job array) cover every scan exactly once; each writes
``OUTPUT/run.shard<I>of<N>.json`` (no merged run.json). Under ``torchrun`` the shard is the
rank: each rank uses its own GPU (``cuda:LOCAL_RANK``), writes ``OUTPUT/run.rank<k>.json``,
and rank 0 merges every rank's records and failures into ``OUTPUT/run.json``, evaluates
(``--labels``) and prints the failure list; every rank exits 1 if any scan failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from medresunet.training import distributed
from pipelines._cli import EXIT_FAILED_CASES, EXIT_OK, make_parser, report_failures, run_main

PROG = "medresunet-infer"
log = logging.getLogger(PROG)


def _parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Segment scans (NIfTI files and/or DICOM series folders) with a trained "
                          "checkpoint; one OUTPUT/<id>.nii.gz per scan, in the scan's geometry.")
    p.add_argument("--model", required=True, type=Path, action="append",
                   help="checkpoint (.pt) written by medresunet-train, or a run folder trained with --fold "
                        "(its folds' ensemble and postprocessing.json); repeat to ensemble checkpoints")
    p.add_argument("--input", required=True, type=Path,
                   help="a scan file, a DICOM series folder, or a folder of scans")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    p.add_argument("--tta", action="store_true", default=None,
                   help="test-time mirror flips averaged in probability space (slower)")
    p.add_argument("--overlap", type=float, default=None,
                   help="sliding-window overlap in [0, 1) (default: the checkpoint's, 0.5)")
    p.add_argument("--sw-batch-size", type=int, default=None,
                   help="windows per forward pass (default: the checkpoint's)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                   help="auto: fp16 on CUDA, bf16 on CPUs with native support, else fp32")
    p.add_argument("--stitch-device", choices=("auto", "cpu", "same"), default="auto",
                   help="where the whole-volume output buffer lives; auto: the compute device, "
                        "falling back to the CPU on CUDA out-of-memory")
    p.add_argument("--largest-component", action="store_true", default=None,
                   help="keep only the largest connected component of each label")
    p.add_argument("--min-component-ml", type=float, default=None,
                   help="remove connected components smaller than this volume (mL)")
    p.add_argument("--no-postprocessing", action="store_true",
                   help="with --model RUN: do not apply RUN/postprocessing.json (chosen by cross-validation)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write OUTPUT/probabilities/<id>.nii.gz (float, one volume per class)")
    p.add_argument("--series-uid", default=None,
                   help="SeriesInstanceUID to read from DICOM folders holding several series")
    p.add_argument("--labels", type=Path, default=None,
                   help="reference labels (folder or manifest): also write OUTPUT/report/ "
                        "(an existing report is replaced only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="segment only shard I of N (0-based, 0 <= I < N): the scans whose index in the "
                        "sorted scan list is I modulo N; writes OUTPUT/run.shard<I>of<N>.json "
                        "(for job arrays; under torchrun the rank is the shard)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    from medresunet.errors import UsageError

    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise UsageError(f"--overlap: expected a value in [0, 1), got {args.overlap}")
    if args.sw_batch_size is not None and args.sw_batch_size < 1:
        raise UsageError(f"--sw-batch-size: expected >= 1, got {args.sw_batch_size}")
    if args.min_component_ml is not None and not args.min_component_ml >= 0:
        raise UsageError(f"--min-component-ml: expected >= 0 mL, got {args.min_component_ml}")
    if args.labels is not None and not args.labels.exists():
        raise UsageError(f"--labels {args.labels}: no such folder or manifest")
    if args.output.exists() and not args.output.is_dir():
        raise UsageError(f"--output {args.output}: exists and is not a folder")
    if args.labels is not None and not args.overwrite:
        from medresunet.metrics.report import existing_reports

        existing = existing_reports(args.output / "report")
        if existing:
            raise UsageError(f"{args.output / 'report'}: an evaluation report exists already "
                             f"({', '.join(existing)}); pass --overwrite to replace it (and the "
                             "predictions), or move it away first")
    if args.shard is not None:
        args.shard_index, args.shard_count = distributed.parse_shard(args.shard)
        if distributed.under_torchrun():
            raise UsageError("--shard under torchrun: the ranks shard the scans already; "
                             "use one or the other")
        if args.labels is not None:
            raise UsageError("--labels with --shard: a shard sees only part of the outputs; "
                             "evaluate all of them afterwards with medresunet-eval")


def _reason(err: BaseException, path: Path) -> str:
    """One line naming the scan and why it failed."""
    from medresunet.errors import MedresunetError

    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, MedresunetError):
        text = f"{type(err).__name__}: {text}"
    return text if str(path) in text else f"{path}: {text}"


def _quiet_third_party() -> None:
    """Silence notes that say nothing about the user's scans."""
    import warnings

    # MONAI's Orientation on a 2D scan with three axis codes (it uses the first two)
    warnings.filterwarnings("ignore", message=r"axcodes .* length is smaller", category=UserWarning)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def _evaluate(args: argparse.Namespace, outputs: dict[str, Path], images: dict[str, Path],
              labels: dict[str, int]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Per-patient report of ``outputs`` against ``args.labels`` into ``OUTPUT/report``."""
    from medresunet.evaluation import evaluate_pairs
    from medresunet.io import discover_scans
    from medresunet.metrics.aggregate import summarize
    from medresunet.metrics.report import write_reports

    ref = args.labels
    if ref.is_file() and ref.name.lower().endswith((".json", ".yaml", ".yml")):
        from medresunet.manifest import load_manifest

        manifest = load_manifest(ref)
        refs = {c.case_id: c.label for c in manifest.cases if c.label is not None}
    else:
        refs = {r.case_id: r.path for r in discover_scans(ref)}
    pairs = [(cid, out, refs[cid], images.get(cid)) for cid, out in sorted(outputs.items()) if cid in refs]
    for cid in sorted(set(outputs) - set(refs)):
        log.warning("%s: no reference label in %s; not evaluated", cid, ref)
    if not pairs:
        log.warning("--labels %s: no reference matches an output by case id; no report", ref)
        return {}, []
    try:
        import matplotlib  # noqa: F401

        overlays: dict | None = {}
    except ImportError:
        overlays = None
    rows, failures = evaluate_pairs(pairs, labels, quiet=args.quiet, overlays=overlays)
    summary = summarize(rows)
    paths = write_reports(rows, summary, args.output / "report", overlays)
    if not args.quiet:
        from medresunet.metrics.aggregate import format_summary

        print(format_summary(summary))
    return {k: str(v) for k, v in paths.items()}, [(c, f"evaluation: {r}") for c, r in failures]


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    with distributed.session(args.device) as (dist, device):
        return _run_rank(args, dist, device)


def _run_rank(args: argparse.Namespace, dist: Any, device: Any) -> int:  # noqa: C901 - one linear workflow
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from medresunet.inference.ensemble import open_models
    from medresunet.io import discover_scans, write_probabilities, write_segmentation
    from medresunet.runinfo import environment_info, write_run_json

    _quiet_third_party()
    started = time.time()
    all_scans = discover_scans(args.input)
    if not all_scans:
        from medresunet.errors import UsageError

        raise UsageError(f"--input {args.input}: no scans found (NIfTI, NRRD, MHA or DICOM series folders)")
    if dist.enabled:
        shard_index, shard_count, record_name = dist.rank, dist.world_size, f"run.rank{dist.rank}.json"
    elif args.shard is not None:
        shard_index, shard_count = args.shard_index, args.shard_count
        record_name = f"run.shard{shard_index}of{shard_count}.json"
    else:
        shard_index, shard_count, record_name = 0, 1, "run.json"
    scans = distributed.shard(all_scans, shard_index, shard_count)
    if shard_count > 1:
        log.info("shard %d of %d (0-based): %d of %d scan(s)", shard_index, shard_count, len(scans),
                 len(all_scans))
    predictor, model_info = open_models(
        args.model, postprocessing=not args.no_postprocessing, device=device, overlap=args.overlap,
        sw_batch_size=args.sw_batch_size, tta=args.tta, precision=args.precision,
        stitch_device=args.stitch_device, largest_component=args.largest_component,
        min_component_ml=args.min_component_ml)
    args.output.mkdir(parents=True, exist_ok=True)
    log.info("%d scan(s); device %s, precision %s, overlap %.2f, tta %s", len(scans), predictor.device,
             predictor.precision, predictor.overlap, predictor.tta)

    def target(scan) -> Path:
        return args.output / f"{scan.case_id}.nii.gz"

    todo = [s for s in scans if args.overwrite or not target(s).exists()]
    skipped = [s for s in scans if s not in todo]
    for s in skipped:
        log.info("%s: %s exists, skipped (use --overwrite to replace it)", s.case_id, target(s))
    records: list[dict[str, Any]] = [
        {"case_id": s.case_id, "input": str(s.path), "output": str(target(s)), "status": "skipped"}
        for s in skipped]
    failures: list[tuple[str, str]] = []
    outputs = {s.case_id: target(s) for s in skipped}

    def load(scan):
        return predictor.load([scan.path], args.series_uid)

    bar = tqdm(total=len(todo), desc="infer" if shard_count == 1 else f"infer {shard_index}/{shard_count}",
               unit="scan", disable=args.quiet, file=sys.stderr, position=shard_index if dist.enabled else None)
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
                loaded = current.result()
                result = predictor.predict_loaded(loaded, return_probabilities=args.save_probabilities)
                out = write_segmentation(result.labels, loaded.geometry, target(scan))
                record.update(status="ok", output=str(out), seconds=dict(result.seconds))
                if args.save_probabilities:
                    probs = write_probabilities(result.probabilities, loaded.geometry,
                                                args.output / "probabilities" / f"{scan.case_id}.nii.gz")
                    record["probabilities"] = str(probs)
                outputs[scan.case_id] = out
            except Exception as err:  # noqa: BLE001 - one bad scan must not stop the batch
                reason = _reason(err, scan.path)
                log.debug("%s failed", scan.case_id, exc_info=True)
                if not args.quiet:
                    tqdm.write(f"{PROG}: {scan.case_id}: {reason}", file=sys.stderr)
                failures.append((scan.case_id, reason))
                record.update(status="failed", error=reason)
            record["total_seconds"] = round(time.perf_counter() - start, 3)
            records.append(record)
            bar.update(1)
    bar.close()

    settings = {"device": str(predictor.device), "precision": predictor.precision,
                "overlap": predictor.overlap, "sw_batch_size": predictor.sw_batch_size,
                "tta": predictor.tta, "stitch_device": predictor.stitch_device,
                "largest_component": predictor.largest_component,
                "min_component_ml": predictor.min_component_ml, "series_uid": args.series_uid,
                "overwrite": args.overwrite}
    shard_info = {"index": shard_index, "count": shard_count, "n_scans": len(scans),
                  "n_scans_total": len(all_scans)}
    def run_record(**extra: Any) -> dict[str, Any]:
        return {"command": PROG, "environment": environment_info(predictor.device),
                "checkpoint": model_info["members"][0] if len(model_info["members"]) == 1 else None,
                **model_info, "input": str(args.input), "output": str(args.output),
                "settings": settings, **extra, "labels": predictor.labels,
                "cases": sorted(records, key=lambda r: r["case_id"]),
                "failures": [list(f) for f in failures], "seconds": round(time.time() - started, 2)}

    if dist.enabled:  # this rank's own record, then rank 0 merges every rank's
        write_run_json(args.output / record_name,
                       run_record(shard={**shard_info, "rank": dist.rank, "world_size": dist.world_size}))
        gathered = distributed.all_gather_object(
            dist, {"rank": dist.rank, "records": records, "failures": failures,
                   "outputs": {k: str(v) for k, v in outputs.items()}, "device": str(predictor.device)})
        if not dist.is_main:
            n_failed = sum(len(g["failures"]) for g in gathered)
            return EXIT_FAILED_CASES if n_failed else EXIT_OK
        records = [r for g in gathered for r in g["records"]]
        failures = [tuple(f) for g in gathered for f in g["failures"]]
        outputs = {k: Path(v) for g in gathered for k, v in g["outputs"].items()}
        settings["device"] = [g["device"] for g in gathered]
        skipped = [r for r in records if r["status"] == "skipped"]
        scans = all_scans
        shard_info = {"world_size": dist.world_size, "backend": dist.backend,
                      "per_rank": [{"rank": g["rank"], "n_scans": len(g["records"]),
                                    "record": str(args.output / f"run.rank{g['rank']}.json")} for g in gathered]}
        record_name = "run.json"
    report: dict[str, Any] = {}
    if args.labels is not None and outputs:
        images = {s.case_id: s.path for s in scans if s.path.is_file()}
        report, eval_failures = _evaluate(args, outputs, images, predictor.labels)
        failures += eval_failures
    try:
        sharded = shard_count > 1 or args.shard is not None
        write_run_json(args.output / record_name,
                       run_record(**({"shard": shard_info} if sharded else {}), report=report))
    finally:  # the failed scans are listed even when run.json cannot be written (a full disk)
        n_ok = sum(r["status"] == "ok" for r in records)
        log.info("%d written, %d skipped, %d failed; outputs in %s", n_ok, len(skipped),
                 sum(r["status"] == "failed" for r in records), args.output)
        report_failures(PROG, failures)
    return EXIT_FAILED_CASES if failures else EXIT_OK


def main(argv=None) -> int:
    return run_main(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
