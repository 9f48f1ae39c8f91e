"""``medresunet-train``: train a residual U-Net from a manifest and a YAML config (or a plan).

    medresunet-train --manifest M [--config C] --output RUN [--resume] [--epochs N]
                     [--max-minutes T] [--set section.key=value ...] [--device D] [--quiet]

Without ``--config`` the run is planned (:mod:`medresunet.planning`): spacing, patch,
network, batch and schedule from the training cases, the device and ``--max-minutes``
(a short probe of candidate networks counts against the budget); the plan is written to
``RUN/plan.yaml`` (with its reasons) and stored in ``run.json`` and the checkpoints;
``--set`` and ``--epochs`` apply on top of it.

Everything the user can get wrong (config, manifest, the files it lists, the run
folder) is checked before any training starts; such an error is one line on stderr and
exit code 2. ``RUN`` receives ``last.pt``, ``best.pt``, ``log.csv``, ``config.yaml``,
``run.json`` and, when tensorboard is installed, ``tb/``. An existing, non-empty ``RUN``
is never overwritten: continue it with ``--resume`` or choose another folder.

On ``--resume`` the run's own config (stored in ``last.pt``) and preprocessing are used;
``--config`` may be left out (if given it is ignored), ``--set`` overrides and
``--epochs`` apply on top (``--epochs`` larger than the run's extends it, and the
learning-rate decay is recomputed over the new horizon).

Under ``torchrun`` (``torchrun --nproc-per-node N -m pipelines.train ...``) the same
command trains with DistributedDataParallel (:mod:`medresunet.training.distributed`): each rank
caches and samples its own share of the training cases, ``train.batch_size`` is the batch
of each rank (the global batch is N times larger; the learning rate is used as given),
rank 0 alone writes the run folder, and a rank that dies ends the job with a one-line
error and exit code 1 after at most ``MEDRESUNET_DIST_TIMEOUT_S`` seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import logging
import sys
import time
from pathlib import Path
from typing import Any

from medresunet.training import distributed
from pipelines._cli import EXIT_OK, make_parser, run_main

logger = logging.getLogger("medresunet.train")


def _parser() -> argparse.ArgumentParser:
    parser = make_parser("medresunet-train", "Train a residual U-Net (2D or 3D) from a dataset manifest.")
    parser.add_argument("--manifest", required=True, help="dataset manifest (JSON/YAML or MSD dataset.json)")
    parser.add_argument("--config", help="YAML config or preset name (3d, 2d, article, demo); without "
                                         "it the run is planned for the data, the device and "
                                         "--max-minutes (RUN/plan.yaml); not needed with --resume")
    parser.add_argument("--output", required=True, help="run folder (must be new or empty unless --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
    parser.add_argument("--epochs", type=int, help="total epochs of the run (overrides train.epochs; "
                                                   "with --resume may extend the run)")
    parser.add_argument("--max-minutes", type=float, dest="max_minutes",
                        help="wall-clock budget of this invocation in minutes; stops cleanly at the "
                             "end of the step that crosses it, validates and writes checkpoints")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3.0e-4 (repeatable)")
    parser.add_argument("--fold", metavar="K|all",
                        help="cross-validation: train fold K (0-based, of train.folds) or all folds into "
                             "RUN/fold_K/, then the out-of-fold CV report (pipelines/train_folds.py)")
    parser.add_argument("--oof-probabilities", action="store_true",
                        help="with --fold: also keep the out-of-fold class probabilities in "
                             "RUN/cv/probabilities/ (float32; lets medresunet-select judge ensembles of runs)")
    return parser


def _resolve_config(args: argparse.Namespace, run_dir: Path) -> tuple[Any, dict[str, Any] | None]:
    """The run's config, and the checkpoint on --resume."""
    from medresunet.config import apply_overrides, config_from_dict, load_config
    from medresunet.errors import ConfigError, UsageError

    ckpt = None
    if args.resume:
        if not (run_dir / "last.pt").is_file():
            raise UsageError(f"--resume: {run_dir / 'last.pt'} does not exist; nothing to resume "
                             "(start a new run without --resume)")
        from medresunet.training.checkpoint import load_checkpoint

        ckpt = load_checkpoint(run_dir / "last.pt")
        if args.config:
            logger.warning("--resume: using the run's own config; --config %s is ignored", args.config)
        try:
            config = config_from_dict(apply_overrides(ckpt.get("config") or {}, args.set))
        except ConfigError as err:
            raise ConfigError(f"{run_dir / 'last.pt'} (config of the run): {err}") from err
    else:
        if not args.config:
            return None, None  # planned for the data and the budget, once the manifest is read
        config = load_config(args.config, args.set)
    if args.epochs is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=args.epochs))
    return config, ckpt


def _check_args(args: argparse.Namespace, run_dir: Path) -> None:
    from medresunet.errors import UsageError

    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs: expected >= 1, got {args.epochs}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UsageError(f"--max-minutes: expected a positive number of minutes, got {args.max_minutes}")
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--output {run_dir}: exists and is not a folder")
    if not args.resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise UsageError(f"--output {run_dir}: the folder exists and is not empty; "
                         "use --resume to continue or choose another folder")


def _run(args: argparse.Namespace) -> int:
    with distributed.session(args.device) as (dist, device):
        if args.fold is not None:
            from pipelines.train_folds import run_folds

            return run_folds(args, dist, device, _run_rank)
        return _run_rank(args, dist, device)


def _run_rank(args: argparse.Namespace, dist: Any, device: Any) -> int:
    from medresunet.manifest import load_manifest
    from medresunet.runinfo import write_run_json

    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.monotonic()
    run_dir = Path(args.output)
    _check_args(args, run_dir)
    config, ckpt = _resolve_config(args, run_dir)
    distributed.barrier(dist)  # every rank has checked --output before rank 0 writes into it

    from medresunet.training.prepare import prepare_training

    manifest = getattr(args, "cv_manifest", None) or load_manifest(args.manifest)  # a fold: the CV's
    plan = None
    if config is None:
        from medresunet.training.autoplan import planned_config

        config, plan = planned_config(manifest, args.set, args.epochs, device, args.max_minutes, dist, args.quiet)
    planning_s = time.monotonic() - t0
    shared = getattr(args, "shared_preprocessing", None)  # a fold: the run's one fingerprint
    job = prepare_training(manifest, config, preprocessing=shared if ckpt is None else ckpt["preprocessing"],
                           dist=dist, quiet=args.quiet)
    if plan is not None:
        job = dataclasses.replace(job, info=dataclasses.replace(job.info, plan=plan.to_dict()))
    logger.info("device %s", device)

    from medresunet.training.loop import TrainOptions, train

    record = _run_record(args, config, job, manifest, dist, device, started)
    budget = args.max_minutes
    if plan is not None:
        record["inputs"]["config"] = "planned"
        record["plan"] = plan.to_dict()
        if budget is not None:  # the probe's time is part of the budget
            budget = max(0.01, budget - planning_s / 60.0)
    if dist.is_main:
        _write_config(run_dir, config, plan)
        write_run_json(run_dir / "run.json", record)
    result = train(config, job.model, job.data, job.info, run_dir, device,
                   TrainOptions(resume=bool(args.resume), max_minutes=budget, quiet=args.quiet),
                   dist=dist)
    if not dist.is_main:
        return EXIT_OK
    _finish_record(record, result, run_dir, t0)
    if budget is not None:  # summary.html marks where it ends on the curves
        record["budget"] = {"training_minutes": round(budget, 4), "from_epoch": result.start_epoch}
    write_run_json(run_dir / "run.json", record)
    from medresunet.training.summary import write_summary

    write_summary(run_dir)
    if result.stopped_by_budget:
        logger.warning("stopped by the --max-minutes budget after epoch %d; continue with --resume",
                       result.epochs_done)
    best = _finite(result.best_metric)
    logger.info("done: %d epochs, %d steps, best validation mean Dice %s (epoch %d); run folder %s",
                result.epochs_done, result.global_step, "n/a" if best is None else f"{best:.4f}",
                result.best_epoch, run_dir)
    return EXIT_OK


def _write_config(run_dir: Path, config: Any, plan: Any = None) -> None:
    import yaml

    from medresunet.config import config_to_dict
    from medresunet.io.atomic import write_text_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    if plan is not None:
        from medresunet.planning import plan_yaml

        write_text_atomic(run_dir / "plan.yaml", plan_yaml(plan))


def _run_record(args: argparse.Namespace, config: Any, job: Any, manifest: Any, dist: Any, device: Any,
                started: _dt.datetime) -> dict[str, Any]:
    """``run.json`` as written before training starts (status ``running``)."""
    from medresunet.config import config_to_dict
    from medresunet.runinfo import environment_info

    inputs = {
        "manifest": str(manifest.path), "config": None if args.resume else str(args.config),
        "overrides": list(args.set), "resume": bool(args.resume),
        "train_cases": [c.case_id for c in job.train_cases], "val_cases": [c.case_id for c in job.val_cases],
        "labels": dict(manifest.labels), "channels": list(manifest.channels),
    }
    return {
        "command": "medresunet-train", "status": "running", "environment": environment_info(device),
        "seed": config.train.seed, "config": config_to_dict(config), "preprocessing": job.preprocessing.to_dict(),
        "inputs": inputs, "outputs": {}, "time": {"started": started.isoformat(timespec="seconds")},
        "distributed": {"world_size": dist.world_size, "backend": dist.backend,
                        "batch_size_per_rank": config.train.batch_size,
                        "global_batch_size": config.train.batch_size * dist.world_size,
                        "lr": config.train.lr, "timeout_s": dist.timeout_s if dist.enabled else None},
    }


def _finish_record(record: dict[str, Any], result: Any, run_dir: Path, t0: float) -> None:
    record["status"] = "budget_reached" if result.stopped_by_budget else "finished"
    record["outputs"] = {**result.outputs, "config.yaml": str(run_dir / "config.yaml"),
                         "run.json": str(run_dir / "run.json")}
    if (run_dir / "tb").is_dir():
        record["outputs"]["tensorboard"] = str(run_dir / "tb")
    record["result"] = {
        "epochs_done": result.epochs_done, "global_step": result.global_step,
        "best_metric": {"name": "val_dice_mean", "value": _finite(result.best_metric),
                        "epoch": result.best_epoch},
        "last_validation": result.last_val, "stopped_by_budget": result.stopped_by_budget,
    }
    record["time"].update({"finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "seconds": round(time.monotonic() - t0, 2),
                           "training_seconds": round(result.seconds, 2),
                           "step_seconds": round(result.step_seconds, 2)})


def _finite(value: float) -> float | None:
    import math

    return float(value) if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    return run_main(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
