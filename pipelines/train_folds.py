"""``medresunet-train --fold K|all``: cross-validation folds of one run.

    medresunet-train --manifest M --config C --output RUN --fold all [--max-minutes T]
    medresunet-train --manifest M --output RUN --fold all --max-minutes T    (planned)
    medresunet-train --manifest M --config C --output RUN --fold ${SLURM_ARRAY_TASK_ID}
    medresunet-train --manifest M --output RUN --fold K --resume

Fold K trains into ``RUN/fold_K/`` (the single-run workflow of ``pipelines/train.py``, DDP
under torchrun included) with the run's one config (``RUN/config.yaml``) and one
preprocessing, measured once on every CV case (``RUN/fingerprint.json``). When it ends, its
validation cases are predicted whole into ``RUN/cv/predictions/`` (``RUN/fold_K/oof.json``
records them); the call that finds every fold done writes ``RUN/cv/report/``,
``RUN/cv/summary.json`` and ``RUN/postprocessing.json`` (:mod:`medresunet.crossval`).
``--max-minutes`` is the budget of the whole call: each fold gets an equal share of what is
left when it starts. Without ``--config`` the folds' one config is planned
(:mod:`medresunet.planning`) for one fold's share of the budget (``RUN/plan.yaml``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medresunet.training import distributed
from pipelines._cli import EXIT_OK

logger = logging.getLogger("medresunet.train")


def _base_config(args: argparse.Namespace, run_dir: Path, device: Any, dist: Any) -> Any:
    """The run's shared config: --config (+ --set), else the one a fold of RUN stored, else planned."""
    from medresunet.config import apply_overrides, config_from_dict, load_config
    from medresunet.training.checkpoint import load_checkpoint

    stored = sorted(run_dir.glob("fold_*/last.pt"))
    if args.config and not (args.resume and stored):
        config = load_config(args.config, args.set)
    elif stored:
        config = config_from_dict(apply_overrides(load_checkpoint(stored[0]).get("config") or {}, args.set))
    else:
        config = _planned_folds_config(args, run_dir, device, dist)
    if args.epochs is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=args.epochs))
    return config


def _planned_folds_config(args: argparse.Namespace, run_dir: Path, device: Any, dist: Any) -> Any:
    """No --config: one plan for every fold, made on fold 0's split with one fold's share of the budget.

    The folds train on equal-sized splits of the same cases, so one plan fits them all;
    ``RUN/plan.yaml`` keeps it with its reasons.
    """
    from medresunet.config import apply_overrides, config_from_dict
    from medresunet.crossval import folds as cv
    from medresunet.io.atomic import write_text_atomic
    from medresunet.manifest import load_manifest
    from medresunet.planning import plan_yaml
    from medresunet.training.autoplan import planned_config

    base = config_from_dict(apply_overrides({}, list(args.set))).train
    which = cv.parse_fold(args.fold, base.folds)
    _check_fold_dirs(args, run_dir, which)  # before the probe's seconds are spent
    minutes = cv.share_minutes(args.max_minutes, len(which))
    manifest = cv.cv_manifest(load_manifest(args.manifest))
    config, plan = planned_config(manifest, [*args.set, "train.fold=0"], None, device, minutes, dist, args.quiet)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, fold=base.fold))
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "plan.yaml", plan_yaml(plan))
    return config


def _check_fold_dirs(args: argparse.Namespace, run_dir: Path, folds: list[int]) -> None:
    from medresunet.crossval.layout import fold_dir
    from medresunet.errors import UsageError

    if (run_dir / "last.pt").exists():
        raise UsageError(f"--output {run_dir}: holds a single run (last.pt), not folds; "
                         "choose another folder for --fold")
    for k in folds:
        d = fold_dir(run_dir, k)
        if not args.resume and d.is_dir() and any(d.iterdir()):
            raise UsageError(f"--fold {k}: {d} exists and is not empty; use --resume to continue it "
                             "or choose another --output")


def _fold_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def run_folds(args: argparse.Namespace, dist: Any, device: Any,
              train_one: Callable[[argparse.Namespace, Any, Any], int]) -> int:
    """Train the folds of ``args.fold`` one after the other, each with ``train_one``."""
    from medresunet.config import config_to_dict
    from medresunet.crossval import folds as cv
    from medresunet.crossval.layout import fold_dir, oof_record_path, read_oof_record
    from medresunet.data.checks import check_cases
    from medresunet.manifest import load_manifest

    t0 = time.monotonic()
    run_dir = Path(args.output)
    config = _base_config(args, run_dir, device, dist)
    which = cv.parse_fold(args.fold, config.train.folds)
    _check_fold_dirs(args, run_dir, which)
    manifest = cv.cv_manifest(load_manifest(args.manifest))
    per_fold = cv.fold_cases(manifest, config.train.folds, config.train.seed)
    cases = cv.all_cv_cases(manifest, config.train.folds, config.train.seed)
    distributed.barrier(dist)
    prep = None
    if dist.is_main:
        if not args.resume:  # a resumed run keeps its config (--epochs may extend it)
            cv.write_shared_config(run_dir, config_to_dict(config))
        cv.record_folds(run_dir, per_fold)
        check_cases(cases, manifest.labels, len(manifest.channels), progress=not args.quiet)
        from medresunet.training.prepare import (
            measure_preprocessing,  # the single run's, on every CV case
        )

        prep = cv.shared_fingerprint(run_dir, cases,
                                     lambda: measure_preprocessing(cases, manifest.channels, config, args.quiet))
    prep = distributed.broadcast_object(dist, prep)
    logger.info("cross-validation: %d folds over %d cases; training fold(s) %s into %s",
                config.train.folds, len(cases), ", ".join(map(str, which)), run_dir)
    for i, k in enumerate(which):
        fdir = fold_dir(run_dir, k)
        resume = bool(args.resume) and (fdir / "last.pt").is_file()
        if resume and args.epochs is None and read_oof_record(run_dir, k) is not None \
                and _fold_status(fdir) == "finished":
            logger.info("fold %d: finished, with its out-of-fold predictions; skipped", k)
            continue
        left = None if args.max_minutes is None else args.max_minutes - (time.monotonic() - t0) / 60.0
        if left is not None and left <= 0:
            logger.warning("--max-minutes: the budget is spent before fold %d; continue with --resume", k)
            break
        fold_args = copy.copy(args)
        fold_args.output, fold_args.resume, fold_args.fold = str(fdir), resume, None
        fold_args.max_minutes = cv.share_minutes(left, len(which) - i)
        fold_args.set = [*args.set, f"train.fold={k}"]
        fold_args.config = None if resume else (args.config or str(run_dir / "config.yaml"))
        fold_args.cv_manifest, fold_args.shared_preprocessing = manifest, prep
        if dist.is_main:
            oof_record_path(run_dir, k).unlink(missing_ok=True)  # stale once the fold trains on
        logger.info("fold %d of %d (%s): %s", k, config.train.folds, "resumed" if resume else "new",
                    "no budget" if fold_args.max_minutes is None else f"{fold_args.max_minutes:.2f} min")
        train_one(fold_args, dist, device)
        if dist.is_main:
            record = cv.predict_out_of_fold(run_dir, k, per_fold[k], device, quiet=args.quiet,
                                            probabilities=bool(getattr(args, "oof_probabilities", False)))
            logger.info("fold %d: %d out-of-fold prediction(s) in %s", k, len(record["cases"]),
                        run_dir / "cv" / "predictions")
        distributed.barrier(dist)
    if dist.is_main:
        _finish(run_dir, manifest, args.quiet)
    return EXIT_OK


def _finish(run_dir: Path, manifest: Any, quiet: bool) -> None:
    from medresunet.crossval import folds as cv
    from medresunet.crossval.layout import read_folds, read_oof_record

    if not cv.cv_finished(run_dir):
        n, _ = read_folds(run_dir)
        todo = [k for k in range(n) if read_oof_record(run_dir, k) is None]
        logger.info("folds not done yet: %s; the CV report is written when every fold is",
                    ", ".join(map(str, todo)))
        return
    out = cv.finish_cv(run_dir, manifest, quiet=quiet)
    summary = out["summary"]
    means = ", ".join(f"{name} {v['dice_mean']:.4f}" for name, v in summary["per_label"].items()
                      if v["dice_mean"] is not None)
    logger.info("CV estimate (mean Dice over %d out-of-fold cases): %s; report in %s", summary["n_cases"],
                means, summary["report"])
    chosen = {name: d["chosen"] for name, d in out["postprocessing"]["labels"].items()}
    logger.info("postprocessing chosen by CV: %s (%s)", chosen, run_dir / "postprocessing.json")

