"""Dice per label from one pass over a label pair (the overlap metric alone, no distances).

The same values as :func:`medresunet.metrics.case.case_metrics`'s ``dice``: NaN where the
label is in neither volume (``both_empty``), 0 where it is in one only.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


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
        total = joint[v, :].sum() + joint[:, v].sum()
        out[v] = float("nan") if total == 0 else 2.0 * float(joint[v, v]) / float(total)
    return out
