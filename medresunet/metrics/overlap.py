"""Dice, the one definition: from voxel counts, and per label from one pass over a label pair.

:func:`dice_score` is the formula (``case_metrics``' ``dice`` column uses it);
:func:`dice_per_label` scores every label of a pair at once (training validation and model
selection use it): NaN where the label is in neither volume (``both_empty``), 0 where it
is in one only.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def dice_score(n_intersection: int, n_pred: int, n_ref: int) -> float:
    """Dice from voxel counts: ``2 |P & R| / (|P| + |R|)``; NaN when both masks are empty."""
    total = n_pred + n_ref
    return float("nan") if total == 0 else 2.0 * n_intersection / total


def dice_per_label(pred: np.ndarray, ref: np.ndarray, values: Iterable[int]) -> dict[int, float]:
    """Dice of each label value from the joint histogram of ``pred`` and ``ref``.

    Args:
        pred: integer label volume ``(*spatial)``.
        ref: integer label volume, same shape.
        values: the label values to score (> 0).

    Returns:
        value -> Dice (NaN when both volumes lack the label).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    values = [int(v) for v in values]
    n = int(max(pred.max(initial=0), ref.max(initial=0), *values)) + 1
    joint = np.bincount(ref.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel(),
                        minlength=n * n).reshape(n, n)  # [ref value, pred value]
    out = {}
    for v in values:
        out[v] = dice_score(int(joint[v, v]), int(joint[:, v].sum()), int(joint[v, :].sum()))
    return out
