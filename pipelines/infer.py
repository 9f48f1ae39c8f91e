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
                        "(its folds' ensemble and postprocessing.json); repeat to ensemble checkpoints; "
                        "or an export written by medresunet-export (its folder, model.onnx, model.ts, "
                        "model_int8.xml)")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                   help="what runs an exported network; auto: the fastest installed for the device "
                        "(timed on one window batch; torch on CUDA); a checkpoint runs on torch")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write OUTPUT/<id>.seg.dcm (DICOM SEG, highdicom) for DICOM series inputs")
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
    if args.dicom_seg:
        import importlib.util

        if importlib.util.find_spec("highdicom") is None:
            raise UsageError("--dicom-seg: highdicom is not installed; pip install 'medresunet[dicom-seg]'")
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


def _quiet_third_party() -> None:
    """Silence notes that say nothing about the user's scans."""
    import warnings

    # MONAI's Orientation on a 2D scan with three axis codes (it uses the first two)
    warnings.filterwarnings("ignore", message=r"axcodes .* length is smaller", category=UserWarning)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def _evaluate(args: argparse.Namespace, outputs: dict[str, Path], images: dict[str, Path],
              labels: dict[str, int]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Per-patient report of ``outputs`` against ``args.labels`` into ``OUTPUT/report``."""
    from medresunet.metrics.evaluate import evaluate_to_reports
    from medresunet.metrics.pairing import pair, read_references

    pairing = pair(outputs, read_references(args.labels), images, args.output)
    for cid in sorted(set(outputs) - {p[0] for p in pairing.pairs}):
        log.warning("%s: no reference label in %s; not evaluated", cid, args.labels)
    if not pairing.pairs:
        log.warning("--labels %s: no reference matches an output by case id; no report", args.labels)
        return {}, []
    result = evaluate_to_reports(pairing.pairs, labels, args.output / "report", quiet=args.quiet)
    if not args.quiet:
        from medresunet.metrics.aggregate import format_summary

        print(format_summary(result.summary))
    return {k: str(v) for k, v in result.paths.items()}, [(c, f"evaluation: {r}") for c, r in result.failures]


def check_dicom_seg_input(source: Path) -> None:
    """--dicom-seg needs at least one DICOM series among the inputs."""
    from medresunet.errors import UsageError
    from medresunet.io import discover_scans

    if not any(s.kind == "dicom" for s in discover_scans(source)):
        raise UsageError(f"--dicom-seg: DICOM SEG needs a DICOM source series, and --input {source} "
                         "holds none (NIfTI/NRRD/MHA only); drop --dicom-seg or give DICOM series folders")


def dicom_seg_writer(members: list[str], labels: dict[str, int], series_uid: str | None):
    """The batch loop's extra output: OUTPUT/<id>.seg.dcm for each DICOM series input."""
    import medresunet
    from medresunet.export.loading import model_identity
    from medresunet.io import scan_kind
    from medresunet.io.dicom_seg import Algorithm, seg_target, write_dicom_seg

    ident = model_identity(tuple(members))  # hashed once per run
    algorithm = Algorithm("medresunet", medresunet.__version__, ident["sha256"], ident["name"])

    def write(case_id: str, loaded: Any, result: Any, output: Path) -> dict[str, Any]:
        source = loaded.paths[0]
        if scan_kind(source) != "dicom":
            log.warning("%s: no DICOM SEG: DICOM SEG needs a DICOM source series, %s is not one",
                        case_id, source)
            return {"dicom_seg": None}
        path = write_dicom_seg(result.labels, loaded.geometry, source, seg_target(output, case_id),
                               labels, algorithm, series_uid=series_uid)
        return {"dicom_seg": str(path)}
    return write


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    with distributed.session(args.device) as (dist, device):
        return _run_rank(args, dist, device)


def _run_rank(args: argparse.Namespace, dist: Any, device: Any) -> int:
    from medresunet.export.loading import open_any
    from medresunet.inference.batch import BatchOptions, segment_folder
    from medresunet.runinfo import write_run_json

    _quiet_third_party()
    if args.dicom_seg:
        check_dicom_seg_input(args.input)
    predictor, model_info = open_any(
        args.model, args.backend, postprocessing=not args.no_postprocessing, device=device, overlap=args.overlap,
        sw_batch_size=args.sw_batch_size, tta=args.tta, precision=args.precision,
        stitch_device=args.stitch_device, largest_component=args.largest_component,
        min_component_ml=args.min_component_ml)
    members = model_info["members"]
    record_info = {"checkpoint": members[0] if len(members) == 1 else None, **model_info}
    shard = (args.shard_index, args.shard_count) if args.shard is not None else None
    options = BatchOptions(overwrite=args.overwrite, save_probabilities=args.save_probabilities,
                           series_uid=args.series_uid, shard=shard, quiet=args.quiet, record_info=record_info,
                           extra_outputs=dicom_seg_writer(model_info["members"], predictor.labels,
                                                          args.series_uid) if args.dicom_seg else None)
    run = segment_folder(predictor, args.input, args.output, options, dist)
    if dist.enabled and not dist.is_main:  # rank 0 evaluates and writes run.json
        return EXIT_FAILED_CASES if run.failures else EXIT_OK
    report: dict[str, Any] = {}
    if args.labels is not None and run.outputs:
        images = {s.case_id: s.path for s in run.scans if s.path.is_file()}
        report, eval_failures = _evaluate(args, run.outputs, images, predictor.labels)
        run.failures += eval_failures
    try:
        write_run_json(args.output / run.record_name, run.record(report=report))
    finally:  # the failed scans are listed even when run.json cannot be written (a full disk)
        counts = run.counts()
        log.info("%d written, %d skipped, %d failed; outputs in %s", counts["ok"], counts["skipped"],
                 counts["failed"], args.output)
        report_failures(PROG, run.failures)
    return EXIT_FAILED_CASES if run.failures else EXIT_OK


def main(argv=None) -> int:
    return run_main(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
