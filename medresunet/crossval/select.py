"""Choose between cross-validated runs (configurations) and their ensembles, by CV Dice.

Each run's candidate score is its CV estimate (``RUN/cv/summary.json``: the mean over
labels of the per-label mean Dice of the out-of-fold cases). An ensemble of runs is scored
the same way on the same cases: per case, the runs' out-of-fold class probabilities
(``RUN/cv/probabilities/``, written with ``--oof-probabilities``) are averaged on the scan's
grid and the argmax is compared with the reference. The candidate with the highest score
wins; on a tie, the one with fewer runs (cheaper to run). A run whose CV is incomplete (a
fold missing) or that was cross-validated on other cases is listed with the reason and not
chosen.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medresunet.crossval.layout import cv_dir, probabilities_dir, read_folds
from medresunet.errors import UsageError

PathLike = str | os.PathLike[str]
FORMAT = "medresunet-selection/1"


def read_summary(run_dir: PathLike) -> dict[str, Any]:
    """``RUN/cv/summary.json``.

    Raises:
        UsageError: missing or unreadable (the run has no finished cross-validation).
    """
    path = cv_dir(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise UsageError(f"{path}: not found; expected a run trained with medresunet-train --fold "
                         "whose folds are all done") from err
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: unreadable ({err})") from err


def _cases(run_dir: PathLike) -> list[str]:
    _, folds = read_folds(run_dir)
    return sorted(c for ids in folds.values() for c in ids)


def _ensemble_scores(runs: Sequence[Path], cases: Sequence[str], references: Mapping[str, Path],
                     labels: Mapping[str, int]) -> dict[str, float | None]:
    """Per-label mean Dice of the runs' averaged out-of-fold probabilities."""
    import nibabel as nib

    from medresunet.io import read_volume
    from medresunet.metrics.overlap import dice_per_label

    fg = {name: int(v) for name, v in labels.items() if int(v) > 0}
    scores: dict[str, list[float]] = {name: [] for name in fg}
    for case_id in cases:
        total = None
        for run in runs:  # a running sum: one probability volume in memory besides the one read
            probs = np.asarray(nib.load(probabilities_dir(run) / f"{case_id}.nii.gz").dataobj, dtype=np.float32)
            total = probs if total is None else np.add(total, probs, out=total)
        ref, _ = read_volume(references[case_id])
        pred = np.argmax(total, axis=-1).reshape(ref.shape)
        dice = dice_per_label(pred, np.rint(ref).astype(np.int64), fg.values())
        for name, value in fg.items():
            scores[name].append(dice[value])
    return {name: (float(np.nanmean(v)) if np.isfinite(v).any() else None) for name, v in scores.items()}


def _has_probabilities(run: Path, cases: Sequence[str]) -> bool:
    return all((probabilities_dir(run) / f"{c}.nii.gz").is_file() for c in cases)


def _mean(per_label: Mapping[str, float | None]) -> float | None:
    values = [v for v in per_label.values() if v is not None]
    return float(np.mean(values)) if values else None


def select_runs(runs: Sequence[PathLike], references: Mapping[str, Path] | None = None,
                labels: Mapping[str, int] | None = None, max_ensemble: int = 4) -> dict[str, Any]:
    """Compare runs and ensembles of them; the selection document.

    Args:
        runs: run folders with ``cv/summary.json``.
        references: case id -> reference label file (needed to score ensembles).
        labels: name -> value (needed to score ensembles).
        max_ensemble: the most runs in one ensemble candidate.

    Returns:
        ``{"format", "rule", "n_cases", "candidates": [{"runs", "kind", "mean_dice", "per_label",
        "eligible", "reason"}], "chosen": candidate or None, "notes": [text]}``.

    Raises:
        UsageError: fewer than one run, or a run without a CV summary.
    """
    paths = [Path(r) for r in runs]
    if not paths:
        raise UsageError("medresunet-select: expected at least one run folder")
    summaries = {p: read_summary(p) for p in paths}
    base_cases = _cases(paths[0])
    candidates: list[dict[str, Any]] = []
    for p in paths:
        s = summaries[p]
        per_label = {name: v.get("dice_mean") for name, v in s["per_label"].items()}
        reason = None
        if not s.get("complete"):
            missing = ", ".join(f"fold {m['fold']}" for m in s.get("missing_folds", [])) or "failed cases"
            reason = f"cross-validation incomplete ({missing}): its estimate covers part of the cases"
        elif _cases(p) != base_cases:
            reason = f"cross-validated on other cases than {paths[0]}: not comparable"
        candidates.append({"runs": [str(p)], "mean_dice": s.get("mean_dice"), "per_label": per_label,
                           "eligible": reason is None, "reason": reason})
    eligible = [Path(c["runs"][0]) for c in candidates if c["eligible"]]
    with_probs = [p for p in eligible if _has_probabilities(p, base_cases)]
    notes = [f"{p}: no out-of-fold probabilities in {probabilities_dir(p)} (train with "
             "--oof-probabilities): its ensembles with other runs are not judged"
             for p in eligible if p not in with_probs and len(eligible) > 1]
    if len(with_probs) > 1 and references is not None and labels is not None:
        for size in range(2, min(max_ensemble, len(with_probs)) + 1):
            for combo in itertools.combinations(with_probs, size):
                per_label = _ensemble_scores(combo, base_cases, references, labels)
                candidates.append({"runs": [str(p) for p in combo], "kind": "ensemble",
                                   "mean_dice": _mean(per_label), "per_label": per_label,
                                   "eligible": True, "reason": None})
    for c in candidates:
        c.setdefault("kind", "single")
    ranked = [c for c in candidates if c["eligible"] and c["mean_dice"] is not None]
    chosen = max(ranked, key=lambda c: (round(c["mean_dice"], 6), -len(c["runs"]))) if ranked else None
    return {"format": FORMAT, "n_cases": len(base_cases),
            "rule": "the highest CV mean Dice over labels; on a tie, fewer runs",
            "candidates": candidates, "chosen": chosen, "notes": notes}
