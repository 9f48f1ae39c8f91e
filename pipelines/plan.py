"""``medresunet-plan``: plan a training run for a dataset, a device and a time budget.

    medresunet-plan --manifest M [--device D] [--max-minutes T] [--gpu-memory-gb G]
                    [--output plan.yaml] [--quiet]

Prints each planned value with its reason and, with ``--output``, writes the plan as a
config file (the YAML that ``medresunet-train --config`` reads, the reasons as comments).
With ``--max-minutes`` a short probe measures candidate networks on the device first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines._cli import EXIT_OK, make_parser, run_main


def _parser() -> argparse.ArgumentParser:
    parser = make_parser("medresunet-plan", "Plan spacing, patch, network and schedule for a dataset.")
    parser.add_argument("--manifest", required=True, help="dataset manifest (JSON/YAML or MSD dataset.json)")
    parser.add_argument("--max-minutes", type=float, dest="max_minutes",
                        help="training budget in minutes: probe candidate networks on the device and "
                             "plan the largest that still trains enough steps")
    parser.add_argument("--gpu-memory-gb", type=float, dest="gpu_memory_gb",
                        help="plan for a GPU with this much memory (default: the device's own)")
    parser.add_argument("--output", help="write the plan as a config file here (YAML)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from medresunet.errors import ManifestError, UsageError

    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UsageError(f"--max-minutes: expected a positive number of minutes, got {args.max_minutes}")
    if args.gpu_memory_gb is not None and not args.gpu_memory_gb > 0:
        raise UsageError(f"--gpu-memory-gb: expected a positive number, got {args.gpu_memory_gb}")
    from medresunet.config import TrainConfig
    from medresunet.devices import resolve_device
    from medresunet.manifest import load_manifest, split_cases
    from medresunet.planning import plan_yaml
    from medresunet.training.autoplan import dataset_fingerprint, plan_training

    manifest = load_manifest(args.manifest)
    defaults = TrainConfig()
    train_cases, val_cases = split_cases(manifest, defaults.fold, defaults.folds, defaults.seed)
    if not train_cases:
        raise ManifestError(f"manifest {manifest.path}: no labelled training cases")
    device = resolve_device(args.device)
    fp = dataset_fingerprint(train_cases, len(val_cases), manifest.channels, manifest.labels, quiet=args.quiet)
    plan = plan_training(fp, device, args.max_minutes, args.gpu_memory_gb)
    text = plan_yaml(plan)
    for key, why in plan.reasons:
        print(f"{key}: {why}")
    if plan.step_seconds is not None:
        print(f"measured: {plan.step_seconds:.3f} s/step, expected steps {plan.expected_steps}")
    if args.output:
        from medresunet.io.atomic import write_text_atomic

        write_text_atomic(Path(args.output), text)
        print(f"plan written to {args.output} (train with: medresunet-train --config {args.output} ...)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_main(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
