"""medresunet-demo: the embedded default. Phantoms -> training -> inference -> report.

Makes a small synthetic CT dataset (:mod:`medresunet.data.phantoms`: three organs, varying
spacing and orientation, one test case as a DICOM series), trains ``configs/demo.yaml``
(a small 3D residual U-Net), segments the test scans (NIfTI files and the DICOM series)
with ``medresunet-infer``, evaluates them with ``medresunet-eval`` and prints the
per-patient table and the path of ``report.html``. The same steps a user runs by hand,
through the same console-script entry points.

    medresunet-demo [--output DIR] [--device D] [--minutes M] [--quick]

Output folder: ``data/`` (phantoms + ``manifest.json``), ``run/`` (checkpoints, training
log, ``progress.png``, ``summary.html``, ``run.json``), ``predictions/`` (one
``<case>.nii.gz`` per test scan), ``evaluation/`` (``metrics.csv``, ``metrics.json``,
``summary.json``, ``summary.csv``, ``report.html``) and ``demo.json`` (what ran, timings,
mean Dice per organ).

Exit codes: 0 all done, 1 a stage failed on some case (or ``--min-dice`` was not reached),
2 bad usage (e.g. the output folder holds something else).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import shutil
import sys
import time
from pathlib import Path

from pipelines._cli import EXIT_FAILED_CASES, EXIT_OK, make_parser, run_main

log = logging.getLogger(__name__)
PROG = "medresunet-demo"
SUBFOLDERS = ("data", "run", "predictions", "evaluation")
MARKER = "demo.json"
# --quick: tiny phantoms (about 40 x 32 x 26 voxels) and a few iterations, for CI.
QUICK_DATA = {"n_train": 3, "n_test": 2, "spacing_scale": 2.5}
QUICK_SET = [
    "model.channels=[4,8,16]",
    "data.target_spacing=[4.0,4.0,4.0]",
    "data.patch_size=[16,16,16]",
    "data.samples_per_volume=1",
    "data.augment.enabled=false",
    "train.epochs=2",
    "train.steps_per_epoch=2",
    "train.batch_size=1",
    "train.val_interval=2",
    "train.warmup_epochs=0",
    "infer.sw_batch_size=1",
]
FULL_DATA = {"n_train": 8, "n_test": 3, "spacing_scale": 1.0}


def _parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "The demo: make synthetic CT phantoms, train a small 3D residual "
                         "U-Net, segment the test scans (NIfTI and DICOM), and print the per-patient "
                         "report. Minutes on a CPU, about one on a GPU.")
    parser.add_argument("--output", type=Path, default=Path("medresunet-demo"), metavar="DIR",
                        help="output folder (default: ./medresunet-demo)")
    parser.add_argument("--minutes", type=float, default=8.0, metavar="M",
                        help="wall-clock budget of the training in minutes (default: 8; training "
                             "stops cleanly when it runs out)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny phantoms and a few iterations: checks the whole chain in seconds "
                             "(the segmentations are not meant to be good)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantoms and the training (default: 0)")
    parser.add_argument("--config", default="demo", metavar="YAML",
                        help="training config, a file or a preset name (default: demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to training, e.g. train.epochs=10 (repeatable)")
    parser.add_argument("--min-dice", type=float, default=None, metavar="D",
                        help="exit 1 unless the mean Dice of every organ is at least D")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier demo in --output")
    return parser


def _prepare_output(out: Path, overwrite: bool) -> None:
    from medresunet.errors import UsageError

    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out}: is a file; expected a folder (new, or of an earlier demo)")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).exists() and not any((out / name).exists() for name in SUBFOLDERS):
            raise UsageError(f"--output {out}: the folder is not empty and holds no earlier demo; "
                             "choose a new or empty folder")
        if not overwrite:
            raise UsageError(f"--output {out}: holds an earlier demo; pass --overwrite to replace it "
                             "or choose another folder")
        for name in SUBFOLDERS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        (out / MARKER).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _stage(args: argparse.Namespace, index: int, text: str) -> None:
    if not args.quiet:
        print(f"[{index}/4] {text}", flush=True)


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_metrics(path: Path) -> list[dict]:
    """The rows of an evaluation's ``metrics.csv`` (numbers as floats, NaN when empty)."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("dice", "hd95_mm"):
            row[key] = _number(row.get(key, ""))
    return rows


def mean_dice(rows: list[dict]) -> dict[str, float]:
    """Mean Dice per organ over the finite values (NaN if none), in order of appearance."""
    values: dict[str, list[float]] = {}
    for row in rows:
        values.setdefault(row["label_name"], [])
        if math.isfinite(row["dice"]):
            values[row["label_name"]].append(row["dice"])
    return {name: (sum(v) / len(v) if v else math.nan) for name, v in values.items()}


def format_table(rows: list[dict]) -> str:
    """The per-patient table: case, organ, Dice, HD95 mm, status; then mean Dice per organ."""
    lines = [f"{'case':<16} {'organ':<10} {'Dice':>6} {'HD95 mm':>8}  status"]
    for row in sorted(rows, key=lambda r: (r["case_id"], int(r.get("label") or 0))):
        dice = f"{row['dice']:.3f}" if math.isfinite(row["dice"]) else "-"
        hd95 = f"{row['hd95_mm']:.2f}" if math.isfinite(row["hd95_mm"]) else "-"
        lines.append(f"{row['case_id']:<16} {row['label_name']:<10} {dice:>6} {hd95:>8}  {row['status']}")
    lines.append("mean Dice: " + ", ".join(f"{name} {value:.3f}" for name, value in mean_dice(rows).items()))
    return "\n".join(lines)


def _common(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device]
    if args.quiet:
        out.append("--quiet")
    if args.debug:
        out.append("--debug")
    return out


def _run(args: argparse.Namespace) -> int:
    from medresunet.data.phantoms import make_demo_dataset
    from medresunet.errors import UsageError
    from medresunet.runinfo import environment_info, write_run_json
    from pipelines import evaluate, infer, train

    if args.minutes is not None and not args.minutes > 0:
        raise UsageError(f"--minutes must be > 0, got {args.minutes}")
    out = args.output.resolve()
    _prepare_output(out, args.overwrite)
    started = time.time()
    timings: dict[str, float] = {}
    record = {"command": PROG, "environment": environment_info(), "quick": args.quick, "seed": args.seed,
              "device": args.device, "config": args.config, "overrides": list(args.overrides),
              "outputs": {name: str(out / name) for name in SUBFOLDERS}, "status": "running"}
    write_run_json(out / MARKER, record)

    def finish(status: str, code: int) -> int:
        timings["total"] = round(time.time() - started, 1)
        record.update(status=status, seconds=timings)
        write_run_json(out / MARKER, record)
        if code != EXIT_OK:
            print(f"{PROG}: {status}", file=sys.stderr)
        return code

    _stage(args, 1, "making the phantoms")
    t0 = time.time()
    sizes = QUICK_DATA if args.quick else FULL_DATA
    dataset = make_demo_dataset(out / "data", seed=args.seed, **sizes)
    timings["phantoms"] = round(time.time() - t0, 1)
    if not args.quiet:
        print(f"      {len(dataset.train_ids)} training, {len(dataset.val_ids)} validation and "
              f"{len(dataset.test_ids)} test cases ({len(dataset.dicom_ids)} as DICOM) in {dataset.root}")

    _stage(args, 2, "training the 3D residual U-Net")
    t0 = time.time()
    overrides = (QUICK_SET if args.quick else []) + [f"train.seed={args.seed}"] + list(args.overrides)
    argv = ["--manifest", str(dataset.manifest), "--config", str(args.config), "--output", str(out / "run")]
    for item in overrides:
        argv += ["--set", item]
    if args.minutes is not None:
        argv += ["--max-minutes", f"{args.minutes:g}"]
    code = train.main(argv + _common(args))
    timings["train"] = round(time.time() - t0, 1)
    if code != EXIT_OK:
        return finish(f"training failed (exit {code}); see the messages above", code)
    model = out / "run" / "best.pt"
    if not model.exists():
        model = out / "run" / "last.pt"

    _stage(args, 3, "segmenting the test scans (NIfTI and DICOM)")
    t0 = time.time()
    code = infer.main(["--model", str(model), "--input", str(dataset.images_test),
                       "--output", str(out / "predictions")] + _common(args))
    timings["infer"] = round(time.time() - t0, 1)
    if code != EXIT_OK:
        return finish(f"inference failed (exit {code}); see the messages above", code)

    _stage(args, 4, "evaluating against the reference labels")
    t0 = time.time()
    labels = ",".join(f"{name}={value}" for name, value in dataset.labels.items() if value)
    argv = ["--pred", str(out / "predictions"), "--ref", str(dataset.labels_test), "--output",
            str(out / "evaluation"), "--labels", labels, "--images", str(dataset.images_test)]
    if args.quick:
        argv += ["--workers", "1"]
    code = evaluate.main(argv + (["--quiet"] if args.quiet else []) + (["--debug"] if args.debug else []))
    timings["evaluate"] = round(time.time() - t0, 1)
    if code != EXIT_OK:
        return finish(f"evaluation failed (exit {code}); see the messages above", code)

    rows = read_metrics(out / "evaluation" / "metrics.csv")
    means = mean_dice(rows)
    record["mean_dice"] = means
    print()
    print(format_table(rows))
    print(f"report: {out / 'evaluation' / 'report.html'}")
    print(f"training: {out / 'run' / 'summary.html'} (curves: {out / 'run' / 'progress.png'})")
    print(f"demo finished in {time.time() - started:.0f} s (training {timings['train']:.0f} s)")
    if args.min_dice is not None:
        low = {name: d for name, d in means.items() if not d >= args.min_dice}
        if low:
            return finish(f"mean Dice below {args.min_dice} for: "
                          + ", ".join(f"{n} {d:.3f}" for n, d in low.items()), EXIT_FAILED_CASES)
    return finish("ok", EXIT_OK)


def main(argv=None) -> int:
    return run_main(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
