"""``medresunet-train``: train a residual U-Net from a manifest and a YAML config.

    medresunet-train --manifest M --config C --output RUN [--resume] [--epochs N]
                     [--max-minutes T] [--set section.key=value ...] [--device D] [--quiet]

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
    parser.add_argument("--config", help="YAML config or preset name (3d, 2d, article, demo); "
                                         "not needed with --resume")
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
            raise UsageError("--config is required for a new run (a YAML file or a preset: 3d, 2d, article, demo)")
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


def _run_rank(args: argparse.Namespace, dist: Any, device: Any) -> int:  # noqa: C901 - one linear workflow
    import yaml

    from medresunet.config import config_to_dict
    from medresunet.data.checks import check_cases
    from medresunet.errors import ManifestError, UsageError
    from medresunet.manifest import load_manifest, split_cases
    from medresunet.runinfo import environment_info, write_run_json

    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.monotonic()
    run_dir = Path(args.output)
    _check_args(args, run_dir)
    config, ckpt = _resolve_config(args, run_dir)
    distributed.barrier(dist)  # every rank has checked --output before rank 0 writes into it

    manifest = getattr(args, "cv_manifest", None) or load_manifest(args.manifest)  # a fold: the CV's
    tc = config.train
    train_cases, val_cases = split_cases(manifest, tc.fold, tc.folds, tc.seed)
    if not train_cases:
        raise ManifestError(f"manifest {manifest.path}: no labelled training cases")
    if dist.world_size > len(train_cases):
        raise UsageError(f"{dist.world_size} ranks but only {len(train_cases)} training case(s) in "
                         f"{manifest.path}: start at most {len(train_cases)} processes")
    if dist.is_main:  # the others wait for its verdict (and stop with it: torchrun ends the job)
        check_cases([*train_cases, *val_cases], manifest.labels, len(manifest.channels),
                    progress=not args.quiet)
    distributed.barrier(dist)
    logger.info("%d training and %d validation cases from %s; device %s", len(train_cases),
                len(val_cases), manifest.path, device)

    import torch  # noqa: F401  (after the checks: the fast failures stay fast)

    from medresunet.data.preprocessing import Preprocessing
    from medresunet.networks import build_network, network_kwargs
    from medresunet.training.loop import train
    from medresunet.training.state import seed_everything

    if ckpt is not None:
        prep = Preprocessing.from_dict(ckpt["preprocessing"])
    elif getattr(args, "shared_preprocessing", None) is not None:  # a fold: the run's one fingerprint
        prep = Preprocessing.from_dict(args.shared_preprocessing)
    else:  # measured once, on rank 0, from all training cases
        prep_dict = (_fingerprint(train_cases, manifest.channels, config, args.quiet).to_dict()
                     if dist.is_main else None)
        prep = Preprocessing.from_dict(distributed.broadcast_object(dist, prep_dict))
    logger.info("preprocessing: %s", prep.to_dict())
    own_cases = distributed.shard(train_cases, dist.rank, dist.world_size)  # this rank's share only
    train_data, val_data, background = _datasets(own_cases, val_cases if dist.is_main else [], prep, config,
                                                 args.quiet or not dist.is_main)
    out_channels = max(manifest.labels.values()) + 1
    kwargs = network_kwargs(config.model, len(manifest.channels), out_channels)
    seed_everything(config.train.seed)  # the initial weights depend on the seed only
    model = build_network(config.model, len(manifest.channels), out_channels)

    from medresunet.io.atomic import write_text_atomic

    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    inputs = {
        "manifest": str(manifest.path), "config": None if args.resume else str(args.config),
        "overrides": list(args.set), "resume": bool(args.resume),
        "train_cases": [c.case_id for c in train_cases], "val_cases": [c.case_id for c in val_cases],
        "labels": dict(manifest.labels), "channels": list(manifest.channels),
    }
    record: dict[str, Any] = {
        "command": "medresunet-train", "status": "running", "environment": environment_info(device),
        "seed": config.train.seed, "config": config_to_dict(config), "preprocessing": prep.to_dict(),
        "inputs": inputs, "outputs": {}, "time": {"started": started.isoformat(timespec="seconds")},
        "distributed": {"world_size": dist.world_size, "backend": dist.backend,
                        "batch_size_per_rank": config.train.batch_size,
                        "global_batch_size": config.train.batch_size * dist.world_size,
                        "lr": config.train.lr, "timeout_s": dist.timeout_s if dist.enabled else None},
    }
    if dist.is_main:
        write_run_json(run_dir / "run.json", record)
    result = train(
        config=config, model=model, model_kwargs=kwargs, train_data=train_data, val_data=val_data,
        labels=manifest.labels, input_channels=list(manifest.channels), preprocessing=prep,
        background=background, run_dir=run_dir, device=device, resume=bool(args.resume),
        max_minutes=args.max_minutes, quiet=args.quiet, dist=dist,
    )
    if not dist.is_main:
        return EXIT_OK
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
                           "training_seconds": round(result.seconds, 2)})
    write_run_json(run_dir / "run.json", record)
    if result.stopped_by_budget:
        logger.warning("stopped by the --max-minutes budget after epoch %d; continue with --resume",
                       result.epochs_done)
    best = _finite(result.best_metric)
    logger.info("done: %d epochs, %d steps, best validation mean Dice %s (epoch %d); run folder %s",
                result.epochs_done, result.global_step, "n/a" if best is None else f"{best:.4f}",
                result.best_epoch, run_dir)
    return EXIT_OK


def _finite(value: float) -> float | None:
    import math

    return float(value) if math.isfinite(value) else None


def _fingerprint(train_cases: list, channels: tuple[str, ...], config: Any, quiet: bool) -> Any:
    from medresunet.data.fingerprint import fingerprint
    from medresunet.errors import ManifestError

    try:
        return fingerprint(train_cases, channels, config.data, config.model.spatial_dims, quiet=quiet,
                           seed=config.train.seed)
    except ValueError as err:
        raise ManifestError(f"cannot measure the training cases: {err}") from err


def _datasets(train_cases: list, val_cases: list, prep: Any, config: Any, quiet: bool) -> tuple[Any, Any, Any]:
    """Cached training / validation datasets and the per-image background function."""
    from medresunet.data.datasets import make_train_dataset, make_val_dataset
    from medresunet.data.transforms import background_value

    data = config.data
    logger.info("preprocessing %d training and %d validation cases", len(train_cases), len(val_cases))
    train_data = make_train_dataset(train_cases, prep, data, progress=not quiet)
    val_data = (make_val_dataset(val_cases, prep, cache=data.cache, cache_dir=data.cache_dir,
                                 num_workers=data.num_workers, progress=not quiet)
                if val_cases else [])

    def background(image: Any) -> list[float]:
        return [float(background_value(prep, c, image)) for c in range(prep.n_channels)]

    return train_data, val_data, background


def main(argv: list[str] | None = None) -> int:
    return run_main(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
