"""Postprocessing chosen by cross-validation (nnU-Net's rule), with its evidence.

For each foreground label two candidates are tried on the out-of-fold predictions:

- ``largest_component``: keep only the label's largest connected component;
- ``remove_small``: remove the label's components below V mL, where V is half the 5th
  percentile of the volumes of the label's connected components in the reference labels
  (a predicted island smaller than half of nearly every real object of that label).

A candidate is kept for a label when it raises the label's mean Dice over the CV cases
(by more than ``min_gain``) and lowers no case's Dice by more than ``margin``; of two kept,
the higher mean wins. Otherwise the label is left alone. Labels are independent: removed
voxels become background and no other label's mask changes.

Dice convention here: a case where the label is in neither the reference nor the
(postprocessed) prediction scores 1 (nothing to find, nothing found), so that removing a
false-positive island counts as the gain it is; the reports elsewhere keep DESIGN.md's
NaN for ``both_empty``.

Each case is read once and reduced to its components' volumes and overlaps, from which the
Dice of every candidate follows without another pass (pure numpy + scipy, no IO).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medresunet.errors import UsageError
from medresunet.inference.postprocess import LabelRule, voxel_volume_ml
from medresunet.metrics.overlap import dice_score

FORMAT = "medresunet-postprocessing/1"
MARGIN = 0.01  # the largest drop of one case's Dice a kept candidate may cause
MIN_GAIN = 1e-4  # a mean gain below this is float noise, not a reason to postprocess
CANDIDATES = ("largest_component", "remove_small")


@dataclass(frozen=True)
class LabelComponents:
    """One case and label, reduced to what the candidates' Dice needs.

    Attributes:
        ref_voxels: voxels of the label in the reference.
        pred_voxels: voxels per predicted connected component ``(n,)``.
        overlap_voxels: voxels of each predicted component inside the reference label ``(n,)``.
        ref_component_ml: volumes of the reference's connected components, mL ``(m,)``.
        voxel_ml: volume of one voxel, mL.
    """

    ref_voxels: int
    pred_voxels: np.ndarray
    overlap_voxels: np.ndarray
    ref_component_ml: np.ndarray
    voxel_ml: float


def label_components(pred: np.ndarray, ref: np.ndarray, value: int,
                     spacing_mm: Sequence[float]) -> LabelComponents:
    """Components of label ``value`` in ``pred`` and ``ref`` (same shape, same grid)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    voxel_ml = voxel_volume_ml(spacing_mm)
    in_ref = ref == value
    comps, n = ndimage.label(pred == value)
    pred_voxels = np.bincount(comps.ravel(), minlength=n + 1)[1:]
    overlap = np.bincount(comps[in_ref], minlength=n + 1)[1:]
    ref_comps, m = ndimage.label(in_ref)
    ref_sizes = np.bincount(ref_comps.ravel(), minlength=m + 1)[1:]
    return LabelComponents(int(np.count_nonzero(in_ref)), pred_voxels, overlap,
                           ref_sizes.astype(np.float64) * voxel_ml, voxel_ml)


def dice_kept(c: LabelComponents, keep: np.ndarray) -> float:
    """Dice of the label when only the predicted components where ``keep`` is true remain."""
    dice = dice_score(int(c.overlap_voxels[keep].sum()), int(c.pred_voxels[keep].sum()), c.ref_voxels)
    return 1.0 if math.isnan(dice) else dice  # both empty: see the module's convention


def candidate_keep(c: LabelComponents, candidate: str, min_ml: float) -> np.ndarray:
    """Which predicted components a candidate keeps (``"none"`` keeps all)."""
    n = c.pred_voxels.size
    if candidate == "none" or n == 0:
        return np.ones(n, dtype=bool)
    if candidate == "largest_component":
        keep = np.zeros(n, dtype=bool)
        keep[int(np.argmax(c.pred_voxels))] = True
        return keep
    if candidate == "remove_small":
        return c.pred_voxels * c.voxel_ml >= min_ml
    raise ValueError(f"candidate: expected 'none' or one of {CANDIDATES}, got {candidate!r}")


def small_component_ml(ref_component_ml: Iterable[float]) -> float:
    """V: half the 5th percentile of a label's reference component volumes (mL; 0 if none)."""
    volumes = np.asarray(list(ref_component_ml), dtype=np.float64)
    return 0.5 * float(np.percentile(volumes, 5)) if volumes.size else 0.0


def _judge(before: np.ndarray, after: np.ndarray, margin: float, min_gain: float) -> dict[str, Any]:
    gain = float(after.mean() - before.mean()) if before.size else 0.0
    worst = float((after - before).min()) if before.size else 0.0
    return {"mean_dice": float(after.mean()) if after.size else None, "gain": gain,
            "worst_case_change": worst, "accepted": bool(gain > min_gain and worst >= -margin)}


def decide_label(cases: Mapping[str, LabelComponents], margin: float = MARGIN,
                 min_gain: float = MIN_GAIN) -> dict[str, Any]:
    """The decision for one label from its per-case components.

    Returns:
        ``{"rule": {"largest_component", "min_component_ml"}, "chosen", "min_component_ml",
        "mean_dice_before", "mean_dice_after", "candidates": {name: {"mean_dice", "gain",
        "worst_case_change", "accepted"}}, "per_case": {case_id: {"before", "after"}}}``.
    """
    ids = sorted(cases)
    min_ml = small_component_ml(v for cid in ids for v in cases[cid].ref_component_ml)
    dice = {name: np.array([dice_kept(cases[cid], candidate_keep(cases[cid], name, min_ml)) for cid in ids])
            for name in ("none", *CANDIDATES)}
    judged = {name: _judge(dice["none"], dice[name], margin, min_gain) for name in CANDIDATES}
    judged["remove_small"]["min_component_ml"] = min_ml
    if min_ml <= 0:
        judged["remove_small"]["accepted"] = False
    accepted = [name for name in CANDIDATES if judged[name]["accepted"]]
    chosen = max(accepted, key=lambda name: judged[name]["gain"]) if accepted else "none"
    rule = LabelRule(largest_component=chosen == "largest_component",
                     min_component_ml=min_ml if chosen == "remove_small" else 0.0)
    before = dice["none"]
    return {
        "rule": {"largest_component": rule.largest_component, "min_component_ml": rule.min_component_ml},
        "chosen": chosen, "n_cases": len(ids),
        "mean_dice_before": float(before.mean()) if ids else None,
        "mean_dice_after": float(dice[chosen].mean()) if ids else None,
        "candidates": judged,
        "per_case": {cid: {"before": float(b), "after": float(a)}
                     for cid, b, a in zip(ids, before, dice[chosen], strict=True)},
    }


def choose_postprocessing(cases: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[float]]],
                          labels: Mapping[str, int], margin: float = MARGIN,
                          min_gain: float = MIN_GAIN) -> dict[str, Any]:
    """Decide every foreground label's postprocessing from out-of-fold predictions.

    Args:
        cases: ``(case_id, prediction, reference, spacing_mm)``, one at a time (a generator
            that reads them keeps one case in memory); both arrays on the reference's grid.
        labels: name -> value (background 0 skipped).
        margin: the largest drop of one case's Dice a kept candidate may cause.
        min_gain: the smallest rise of the mean Dice that counts.

    Returns:
        The ``postprocessing.json`` document: ``{"format", "rule", "margin", "min_gain",
        "n_cases", "labels": {name: decide_label(...) + {"value"}}}``.
    """
    fg = {str(name): int(v) for name, v in labels.items() if int(v) > 0}
    per_label: dict[str, dict[str, LabelComponents]] = {name: {} for name in fg}
    n = 0
    for case_id, pred, ref, spacing in cases:
        n += 1
        for name, value in fg.items():
            per_label[name][str(case_id)] = label_components(pred, ref, value, spacing)
    decisions = {name: {"value": fg[name], **decide_label(per_label[name], margin, min_gain)} for name in fg}
    return {"format": FORMAT,
            "rule": ("per label, keep a candidate if it raises the CV mean Dice by more than min_gain "
                     "and lowers no case's Dice by more than margin (both-empty scores 1)"),
            "margin": margin, "min_gain": min_gain, "n_cases": n, "labels": decisions}


def rules_from_doc(doc: Mapping[str, Any], where: str = "postprocessing") -> dict[int, LabelRule]:
    """Label value -> :class:`LabelRule` from a ``postprocessing.json`` document.

    Raises:
        UsageError: the document is not one :func:`choose_postprocessing` wrote.
    """
    try:
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
        return {int(d["value"]): LabelRule(bool(d["rule"]["largest_component"]),
                                           float(d["rule"]["min_component_ml"]))
                for d in doc["labels"].values()}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise UsageError(f"{where}: not a postprocessing decision file ({err}); expected the "
                         "RUN/postprocessing.json that medresunet-train --fold writes") from err


def read_rules(path: str | os.PathLike[str]) -> dict[int, LabelRule]:
    """The rules of a ``postprocessing.json`` file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: unreadable ({err}); expected a postprocessing decision file") from err
    return rules_from_doc(doc, str(path))
