"""``medresunet-export``: a checkpoint's network as ONNX / TorchScript, verified, with its metadata."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipelines._cli import EXIT_FAILED_CASES, EXIT_OK, make_parser, run_main

PROG = "medresunet-export"
log = logging.getLogger(PROG)


def _parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Export a checkpoint's network (ONNX with dynamic spatial axes, TorchScript) "
                          "with everything inference needs in model.json; the export verifies itself "
                          "against the checkpoint and exits non-zero past the tolerance.")
    p.add_argument("--model", required=True, type=Path, help="checkpoint (.pt) written by medresunet-train")
    p.add_argument("--output", required=True, type=Path, help="export folder (model.onnx, model.ts, model.json)")
    p.add_argument("--format", default="onnx,torchscript",
                   help="comma-separated: onnx, torchscript (default: both)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default 18)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max |logit difference| against the checkpoint, relative to max(1, max |logit|) "
                        "(default 1e-3)")
    p.add_argument("--int8", action="store_true",
                   help="also build an int8 OpenVINO model (NNCF post-training quantisation)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="manifest whose training cases calibrate --int8 (validation cases check it)")
    p.add_argument("--max-dice-drop", type=float, default=0.005,
                   help="refuse the int8 model when validation Dice drops by more than this (default 0.005)")
    p.add_argument("--calibration-patches", type=int, default=32,
                   help="training patches used to calibrate --int8 (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    return p


def _run(args: argparse.Namespace) -> int:
    from medresunet.errors import UsageError
    from medresunet.export.exporter import export_checkpoint, parse_formats
    from medresunet.export.verify import DEFAULT_TOLERANCE, format_rows

    formats = parse_formats(args.format)
    if args.int8 != (args.calibration is not None):
        raise UsageError("--int8 and --calibration MANIFEST go together (the manifest's training "
                         "cases calibrate, its validation cases check the Dice)")
    if args.calibration is not None and not args.calibration.is_file():
        raise UsageError(f"--calibration {args.calibration}: no such manifest file")
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    if not tolerance > 0:
        raise UsageError(f"--tolerance: expected > 0, got {tolerance}")
    int8 = None
    if args.int8:
        int8 = {"manifest": str(args.calibration), "max_dice_drop": args.max_dice_drop,
                "patches": args.calibration_patches, "quiet": args.quiet}
    report = export_checkpoint(args.model, args.output, formats, args.opset, tolerance,
                               args.overwrite, int8)
    print(f"verification against {args.model} (tolerance {tolerance:g} x max(1, max|logit|)):")
    for backend, result in report["verification"].items():
        print("\n".join("  " + line for line in format_rows(backend, result)))
    if not report["passed"]:
        print(f"{PROG}: error: an exported model differs from the checkpoint beyond the tolerance; "
              f"nothing written to {args.output}", file=sys.stderr)
        return EXIT_FAILED_CASES
    q = report.get("int8")
    if q is not None:
        print(f"int8: {json.dumps({k: q[k] for k in ('accepted', 'dice_fp32', 'dice_int8', 'dice_drop') if k in q})}")
        if not q.get("accepted"):
            print(f"{PROG}: error: int8 model refused: {q['reason']}; the fp32 export is in {args.output}",
                  file=sys.stderr)
            return EXIT_FAILED_CASES
    print(f"exported to {report['folder']}: {', '.join(sorted(Path(f).name for f in report['files'].values()))}")
    return EXIT_OK


def main(argv=None) -> int:
    return run_main(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
