"""Training / validation cases of a cross-validation fold: explicit splits and folds, else a seeded k-fold."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable

from medresunet.errors import ManifestError
from medresunet.manifest.schema import Case, Manifest, _is_int

log = logging.getLogger(__name__)

def assign_folds(case_ids: Iterable[str], folds: int, seed: int) -> dict[str, int]:
    """A seeded, balanced k-fold assignment: case id -> fold in ``0..folds-1``.

    Deterministic for a seed and independent of the input order (ids are sorted first);
    fold sizes differ by at most one.
    """
    ids = sorted(set(case_ids))
    random.Random(seed).shuffle(ids)
    return {cid: i % folds for i, cid in enumerate(ids)}


def split_cases(manifest: Manifest, fold: int, folds: int, seed: int) -> tuple[list[Case], list[Case]]:
    """Training and validation cases for cross-validation fold ``fold`` of ``folds``.

    Rules, per case: split "test" and unlabelled cases are left out; explicit split
    "train"/"val" wins; an explicit ``fold`` goes to validation when it equals ``fold``;
    the remaining labelled cases get a seeded, balanced k-fold (:func:`assign_folds`).

    Returns:
        ``(train_cases, val_cases)``, each in the manifest's order.

    Raises:
        ManifestError: ``folds`` < 2, ``fold`` out of range, a case's fold >= ``folds``,
            or no training case.
    """
    if not _is_int(folds) or folds < 2:
        raise ManifestError(f"manifest {manifest.path}: expected folds >= 2, got {folds!r}")
    if not _is_int(fold) or not 0 <= fold < folds:
        raise ManifestError(f"manifest {manifest.path}: expected fold in 0..{folds - 1}, got {fold!r}")
    usable = [c for c in manifest.cases if c.split != "test" and c.label is not None]
    bad = [c for c in usable if c.fold is not None and c.fold >= folds]
    if bad:
        listed = ", ".join(f"{c.case_id!r} (fold {c.fold})" for c in bad)
        raise ManifestError(
            f"manifest {manifest.path}: expected case folds in 0..{folds - 1} for {folds} folds, got {listed}"
        )
    auto = assign_folds((c.case_id for c in usable if c.split is None and c.fold is None), folds, seed)
    train: list[Case] = []
    val: list[Case] = []
    for case in usable:
        if case.split is not None:
            is_val = case.split == "val"
        else:
            is_val = (case.fold if case.fold is not None else auto[case.case_id]) == fold
        (val if is_val else train).append(case)
    if not train:
        raise ManifestError(
            f"manifest {manifest.path}: fold {fold} of {folds} leaves no training case "
            f"({len(val)} validation); expected labelled cases with split 'train' or no split"
        )
    if not val:
        log.warning("manifest %s: fold %d of %d has no validation case", manifest.path, fold, folds)
    return train, val
