"""medresunet-eval: per-patient metrics of predicted segmentations against reference labels.

Predictions and references pair by case id (file name without extension); ``--ref`` may
also be a manifest (its labelled cases and label map). Label names come from
``--label-names``, else the manifest, else the ``run.json`` that ``medresunet-infer`` left
in ``--pred`` (the model's label map). Writes ``metrics.csv``,
``metrics.json``, ``summary.json``, ``summary.csv``, ``report.html`` and ``run.json`` into
``--output`` and prints the per-label summary.

    medresunet-eval --pred preds/ --ref labelsTr/ --output eval/ --label-names liver=1,tumour=2

Exit codes: 0 all cases evaluated, 1 some failed (unpaired, unreadable, other grid; listed
at the end; the reports hold the others), 2 bad usage or manifest.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from pipelines._cli import (
    EXIT_FAILED_CASES,
    EXIT_OK,
    make_parser,
    parse_label_names,
    report_failures,
    run_main,
)

log = logging.getLogger(__name__)
PROG = "medresunet-eval"


def _parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "Evaluate predicted segmentations against reference labels: Dice, "
                         "IoU, HD, HD95, ASSD, NSD and volumes per case and label, a summary and "
                         "an HTML report.")
    parser.add_argument("--pred", required=True, type=Path, metavar="DIR", help="folder of predictions")
    parser.add_argument("--ref", required=True, type=Path, metavar="DIR_OR_MANIFEST",
                        help="folder of reference labels, or a dataset manifest (JSON/YAML/MSD)")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="folder for the reports")
    parser.add_argument("--label-names", "--labels", dest="label_names", metavar="NAME=V,...",
                        help="label map, e.g. liver=1,spleen=2, the syntax of medresunet-manifest "
                             "(default: the manifest's map, else that of medresunet-infer's "
                             "run.json in --pred, else label_<v> for the values found)")
    parser.add_argument("--nsd-tolerance", type=float, default=2.0, metavar="MM",
                        help="NSD tolerance in mm (default: 2)")
    parser.add_argument("--empty-distance", choices=("nan", "diagonal"), default="nan",
                        help="HD/HD95/ASSD of a missed or false-positive label: NaN (default) or the "
                             "image diagonal in mm")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="parallel processes (default: min(4, CPUs))")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="folder of scans (same case ids) to draw the overlays on")
    parser.add_argument("--resample-pred-to-ref", action="store_true",
                        help="resample a prediction on another grid onto the reference's "
                             "(nearest neighbour) instead of failing that case")
    parser.add_argument("--overwrite", action="store_true", help="replace existing reports in --output")
    return parser


def _run(args: argparse.Namespace) -> int:
    from medresunet.errors import UsageError
    from medresunet.metrics import format_summary
    from medresunet.metrics.evaluate import EvalSettings, evaluate_to_reports
    from medresunet.metrics.pairing import pair_cases
    from medresunet.metrics.report import existing_reports
    from medresunet.runinfo import environment_info, write_run_json

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if not args.nsd_tolerance >= 0:
        raise UsageError(f"--nsd-tolerance must be >= 0 mm, got {args.nsd_tolerance}")
    existing = existing_reports(args.output)
    if existing and not args.overwrite and not (args.output / "run.json").exists():
        # run.json is written last: without it the reports are those of an interrupted run
        log.warning("%s: reports of an interrupted run (no run.json); replacing them", args.output)
        existing = []
    if existing and not args.overwrite:
        raise UsageError(f"{args.output}: reports exist already ({', '.join(existing)}); "
                         "pass --overwrite to replace them or choose another --output")
    started = time.time()
    pairing = pair_cases(args.pred, args.ref, args.images)
    labels = parse_label_names(args.label_names) if args.label_names else pairing.labels
    if not pairing.pairs:
        report_failures(PROG, pairing.unpaired)
        raise UsageError(f"no prediction in {args.pred} pairs with a reference in {args.ref} by case id; "
                         "expected the same file names (case ids) in both")
    settings = EvalSettings(args.nsd_tolerance, args.empty_distance, args.workers, args.resample_pred_to_ref)
    result = evaluate_to_reports(pairing.pairs, labels, args.output, settings, args.quiet)
    failures = sorted(pairing.unpaired + result.failures)
    summary, paths = result.summary, result.paths
    write_run_json(args.output / "run.json", {
        "command": PROG, "environment": environment_info(), "pred": str(args.pred), "ref": str(args.ref),
        "images": None if args.images is None else str(args.images), "labels": labels,
        "nsd_tolerance_mm": args.nsd_tolerance, "empty_distance": args.empty_distance,
        "n_pairs": len(pairing.pairs), "failures": [list(f) for f in failures],
        "outputs": {k: str(v) for k, v in paths.items()}, "seconds": round(time.time() - started, 2),
    })
    print(format_summary(summary))
    print(f"reports in {args.output}")
    report_failures(PROG, failures)
    return EXIT_FAILED_CASES if failures else EXIT_OK


def main(argv=None) -> int:
    return run_main(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
