"""Postprocessing of label volumes: connected components per label (pure numpy + scipy).

Removed voxels become background (0). Connectivity is face-adjacency (6 neighbours in 3D,
4 in 2D), scipy's default and nnU-Net's choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def voxel_volume_ml(spacing_mm: Sequence[float]) -> float:
    """Volume of one voxel in mL (1 mL = 1000 mm^3) from its spacing in mm.

    A 2D image given with a third spacing (the slice thickness) uses it; with two values the
    "volume" is an area in mm^2 / 1000.
    """
    return float(np.prod([float(s) for s in spacing_mm])) / 1000.0


def _foreground_labels(labels: np.ndarray, which: Iterable[int] | None) -> list[int]:
    present = [int(v) for v in np.unique(labels) if v != 0]
    if which is None:
        return present
    wanted = {int(v) for v in which}
    return [v for v in present if v in wanted]


def keep_largest_component(labels: np.ndarray, which: Iterable[int] | None = None) -> np.ndarray:
    """Keep only the largest connected component of each foreground label.

    Args:
        labels: integer label volume ``(*spatial)``.
        which: labels to process (default: every non-zero label present).

    Returns:
        A new array, same shape and dtype; other components of a label set to 0.
    """
    out = np.array(labels, copy=True)
    for value in _foreground_labels(out, which):
        mask = out == value
        components, n = ndimage.label(mask)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(np.argmax(sizes)))] = 0
    return out


def remove_small_components(labels: np.ndarray, spacing_mm: Sequence[float], min_ml: float,
                            which: Iterable[int] | None = None) -> np.ndarray:
    """Remove the connected components of each label smaller than ``min_ml`` millilitres.

    Args:
        labels: integer label volume ``(*spatial)``.
        spacing_mm: voxel spacing in mm, one per axis (a 2D image may add its thickness).
        min_ml: minimum component volume in mL; components strictly below it become 0.
        which: labels to process (default: every non-zero label present).

    Returns:
        A new array, same shape and dtype.
    """
    out = np.array(labels, copy=True)
    if min_ml <= 0:
        return out
    min_voxels = min_ml / voxel_volume_ml(spacing_mm)
    for value in _foreground_labels(out, which):
        mask = out == value
        components, n = ndimage.label(mask)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel())
        small = np.flatnonzero(sizes < min_voxels)
        small = small[small != 0]
        if small.size:
            out[mask & np.isin(components, small)] = 0
    return out


def postprocess(labels: np.ndarray, spacing_mm: Sequence[float], *, largest_component: bool = False,
                min_component_ml: float = 0.0) -> np.ndarray:
    """Apply the optional postprocessing steps, small components first, then the largest one.

    Args:
        labels: integer label volume ``(*spatial)``.
        spacing_mm: voxel spacing in mm.
        largest_component: keep only the largest component of each label.
        min_component_ml: remove components below this volume in mL (0: keep all).

    Returns:
        The processed labels (the input itself when nothing is asked).
    """
    if min_component_ml > 0:
        labels = remove_small_components(labels, spacing_mm, min_component_ml)
    if largest_component:
        labels = keep_largest_component(labels)
    return labels


@dataclass(frozen=True)
class LabelRule:
    """The postprocessing of one label (chosen by cross-validation: ``RUN/postprocessing.json``).

    Attributes:
        largest_component: keep only the label's largest connected component.
        min_component_ml: remove the label's components below this volume in mL (0: none).
    """

    largest_component: bool = False
    min_component_ml: float = 0.0

    @property
    def active(self) -> bool:
        """Whether the rule changes anything."""
        return self.largest_component or self.min_component_ml > 0


def apply_rules(labels: np.ndarray, spacing_mm: Sequence[float], rules: Mapping[int, LabelRule]) -> np.ndarray:
    """Apply a rule per label value (small components first, then the largest one).

    Labels are independent: a removed voxel becomes background and no other label changes.

    Args:
        labels: integer label volume ``(*spatial)``.
        spacing_mm: voxel spacing in mm.
        rules: label value -> :class:`LabelRule`; labels without a rule are kept.

    Returns:
        The processed labels (the input itself when no rule is active).
    """
    for value, rule in sorted(rules.items()):
        if rule.min_component_ml > 0:
            labels = remove_small_components(labels, spacing_mm, rule.min_component_ml, which=[value])
        if rule.largest_component:
            labels = keep_largest_component(labels, which=[value])
    return labels
