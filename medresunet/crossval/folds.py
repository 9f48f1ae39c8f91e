"""The pieces of ``medresunet-train --fold``: which cases each fold validates, the shared
config and fingerprint at ``RUN/``, the budget share of a fold, and the out-of-fold
predictions a fold writes when it ends.

Cross-validation uses every labelled case that is not ``split: test``: a case's explicit
``split: train`` / ``split: val`` (one validation split) gives way to the folds, an explicit
``fold`` is kept, and the others get the manifest's seeded, balanced assignment
(:func:`medresunet.manifest.split_cases`). Each case is validated by exactly one fold.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medresunet.crossval.layout import (
    MEMBER_CHECKPOINT,
    fold_dir,
    predictions_dir,
    probabilities_dir,
    read_folds,
    write_folds,
    write_oof_record,
)
from medresunet.errors import ConfigError, UsageError
from medresunet.io.atomic import write_text_atomic
from medresunet.manifest import Case, Manifest, split_cases

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


def parse_fold(text: str, folds: int) -> list[int]:
    """``"K"`` (0-based) or ``"all"`` -> the folds to train.

    Raises:
        UsageError: not ``all`` nor an integer in ``0..folds-1``.
    """
    if str(text).strip().lower() == "all":
        return list(range(folds))
    try:
        k = int(text)
    except ValueError:
        k = -1
    if not 0 <= k < folds:
        raise UsageError(f"--fold {text!r}: expected 'all' or a fold in 0..{folds - 1} "
                         f"(train.folds = {folds}; 0-based, e.g. SLURM_ARRAY_TASK_ID)")
    return [k]


def cv_manifest(manifest: Manifest) -> Manifest:
    """The manifest with its train/val split given up to the folds (test cases kept out)."""
    cases = tuple(dataclasses.replace(c, split=None) if c.split in ("train", "val") else c
                  for c in manifest.cases)
    return dataclasses.replace(manifest, cases=cases)


def fold_cases(manifest: Manifest, folds: int, seed: int) -> dict[int, list[Case]]:
    """Fold -> its validation cases (each CV case in exactly one fold)."""
    cv = cv_manifest(manifest)
    return {k: split_cases(cv, k, folds, seed)[1] for k in range(folds)}


def all_cv_cases(manifest: Manifest, folds: int, seed: int) -> list[Case]:
    """Every case of the cross-validation (the fingerprint is measured on all of them)."""
    train, val = split_cases(cv_manifest(manifest), 0, folds, seed)
    return [*train, *val]


def fold_config(config: Any, fold: int) -> Any:
    """The config of one fold: the shared one with ``train.fold = fold``."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, fold=int(fold)))


def share_minutes(remaining_minutes: float | None, folds_left: int) -> float | None:
    """A fold's fair share of what is left of the call's budget (None: no budget).

    Time a fold does not use flows to the folds after it.
    """
    if remaining_minutes is None:
        return None
    return max(remaining_minutes, 0.0) / max(1, folds_left)


def write_shared_config(run_dir: PathLike, config_dict: dict[str, Any]) -> Path:
    """``RUN/config.yaml``, or a check that the existing one is this config (fold aside).

    Raises:
        ConfigError: ``RUN`` was started with another config (folds of one run must share it).
    """
    import yaml

    path = Path(run_dir) / "config.yaml"
    shared = _without_fold(config_dict)
    if path.is_file():
        existing = _without_fold(yaml.safe_load(path.read_text()) or {})
        if existing != shared:
            diff = sorted(f"{s}.{k}" for s in set(shared) | set(existing) if isinstance(shared.get(s), dict)
                          for k in set(shared.get(s, {})) | set(existing.get(s, {}) or {})
                          if shared.get(s, {}).get(k) != (existing.get(s, {}) or {}).get(k))
            raise ConfigError(f"{path}: the run's folds were started with another config (differs in "
                              f"{', '.join(diff) or 'its sections'}); every fold of a run shares one "
                              "config: use the same --config/--set, or another --output")
        return path
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, yaml.safe_dump(shared, sort_keys=False))


def _without_fold(config_dict: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config_dict.items()}
    if isinstance(out.get("train"), dict):
        out["train"].pop("fold", None)
    return out


def shared_fingerprint(run_dir: PathLike, cases: Sequence[Case], measure: Callable[[], Any]) -> dict[str, Any]:
    """The preprocessing of ``RUN/fingerprint.json``, measured (``measure()``) on first use.

    Concurrent fold jobs (a job array) measuring at once write the same file (the
    measurement is seeded): the first rename wins, the content is equal.
    """
    path = Path(run_dir) / "fingerprint.json"
    ids = sorted(c.case_id for c in cases)
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            if doc.get("cases") == ids:
                return dict(doc["preprocessing"])
            log.warning("%s: measured on other cases than this call's; measuring again", path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s: unreadable (%s); measuring again", path, err)
    prep = measure().to_dict()
    write_text_atomic(path, json.dumps({"preprocessing": prep, "cases": ids, "n_cases": len(ids)}, indent=1) + "\n")
    return prep


def record_folds(run_dir: PathLike, folds: dict[int, list[Case]]) -> Path:
    """``RUN/cv/folds.json``; refuses a run whose folds were assigned otherwise.

    Raises:
        ConfigError: the existing assignment differs (another manifest, seed or folds).
    """
    ids = {k: sorted(c.case_id for c in v) for k, v in folds.items()}
    try:
        n, existing = read_folds(run_dir)
    except UsageError:
        return write_folds(run_dir, len(folds), ids)
    if n != len(folds) or existing != ids:
        raise ConfigError(f"{Path(run_dir) / 'cv' / 'folds.json'}: this run's folds hold other cases than "
                          "this call's (manifest, train.folds or train.seed changed); use another --output")
    return Path(run_dir) / "cv" / "folds.json"


def predict_out_of_fold(run_dir: PathLike, fold: int, cases: Sequence[Case], device: Any,
                        quiet: bool = True, probabilities: bool = False) -> dict[str, Any]:
    """Predict a fold's validation cases whole, on their own grids, into ``RUN/cv/predictions/``
    with the fold's ``last.pt`` (no postprocessing: that is decided from these), then write
    ``RUN/fold_K/oof.json``. With ``probabilities`` also the class probabilities on the scan's
    grid into ``RUN/cv/probabilities/`` (float32, ``K`` x the scan: what ``medresunet-select``
    averages to judge an ensemble of configurations).

    Returns:
        The ``oof.json`` record: ``{"fold", "checkpoint", "cases": {id: path}, "failures"}``.
    """
    from tqdm.auto import tqdm

    from medresunet.inference.predictor import Predictor
    from medresunet.io import write_probabilities, write_segmentation

    ckpt = fold_dir(run_dir, fold) / MEMBER_CHECKPOINT
    predictor = Predictor.from_file(ckpt, device=device, largest_component=False, min_component_ml=0.0)
    out_dir = predictions_dir(run_dir)
    written: dict[str, str] = {}
    failures: list[list[str]] = []
    for case in tqdm(cases, desc=f"fold {fold}: out-of-fold", unit="case", disable=quiet):
        try:
            result = predictor.predict_loaded(predictor.load(list(case.images)), probabilities)
            if probabilities:
                write_probabilities(result.probabilities, result.geometry,
                                    probabilities_dir(run_dir) / f"{case.case_id}.nii.gz")
            written[case.case_id] = str(write_segmentation(result.labels, result.geometry,
                                                           out_dir / f"{case.case_id}.nii.gz"))
        except Exception as err:  # noqa: BLE001 - the CV report names the case; the others go on
            log.warning("fold %d: %s: out-of-fold prediction failed: %s", fold, case.case_id, err)
            failures.append([case.case_id, str(err)])
    record = {"fold": int(fold), "checkpoint": str(ckpt), "cases": written, "failures": failures}
    write_oof_record(run_dir, fold, record)
    return record


def cv_finished(run_dir: PathLike) -> bool:
    """Whether every fold of ``RUN/cv/folds.json`` has written its out-of-fold predictions."""
    from medresunet.crossval.layout import read_oof_record

    n, _ = read_folds(run_dir)
    return all(read_oof_record(run_dir, k) is not None for k in range(n))


def finish_cv(run_dir: PathLike, manifest: Manifest, quiet: bool = True) -> dict[str, Any]:
    """The CV report, summary and postprocessing decision of a run whose folds are done."""
    from medresunet.crossval.report import write_cv_report, write_postprocessing

    refs = {c.case_id: c.label for c in manifest.cases if c.label is not None}
    images = {c.case_id: c.images[0] for c in manifest.cases if c.images and c.images[0].is_file()}
    summary = write_cv_report(run_dir, refs, manifest.labels, images, quiet=quiet)
    post = write_postprocessing(run_dir, refs, manifest.labels)
    return {"summary": summary, "postprocessing": post}

