"""Ensemble: several checkpoints (the folds of a run) predicting as one Predictor.

The members' class probabilities (each averaged over its flips with TTA) are averaged on
the preprocessed grid, before the inversion to the scan's grid and the argmax, as nnU-Net
ensembles its folds. A scan is preprocessed once (the members share the preprocessing) and
the members run one after the other into a running sum: the memory of a scan is one
member's sliding-window run (its window batch and its stitched output) plus one float
``(K, *spatial)`` probability volume, whatever the number of members; never an array of
``members x K x volume``.

:class:`Ensemble` is a :class:`~medresunet.inference.predictor.Predictor` (same ``load``,
``predict_loaded``, settings and ``labels``), so the batch loop takes either. It can also
apply per-label postprocessing rules (the ``RUN/postprocessing.json`` chosen by
cross-validation, :mod:`medresunet.crossval.postprocessing`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medresunet.errors import CheckpointError
from medresunet.inference.memory import MemoryPlan
from medresunet.inference.postprocess import LabelRule, apply_rules
from medresunet.inference.predictor import LoadedScan, Prediction, Predictor

PathLike = str | os.PathLike[str]

#: Checkpoint entries the members must agree on: what the network reads and what it outputs.
SHARED_KEYS = ("labels", "input_channels", "preprocessing")


def check_members(checkpoints: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Refuse members that disagree in labels, input channels or preprocessing.

    Args:
        checkpoints: ``(name, checkpoint dict)`` per member; the first is the reference.

    Raises:
        CheckpointError: no member, or a member whose ``labels``, ``input_channels`` or
            ``preprocessing`` differs from the first's; the message names both checkpoints
            and the values.
    """
    if not checkpoints:
        raise CheckpointError("an ensemble needs at least one checkpoint, got none")
    first_name, first = checkpoints[0]
    for name, ckpt in checkpoints[1:]:
        for key in SHARED_KEYS:
            mine, theirs = _plain(first.get(key)), _plain(ckpt.get(key))
            if mine != theirs:
                raise CheckpointError(
                    f"{name}: its {key} differ from those of {first_name}: expected {mine}, got "
                    f"{theirs}; ensemble only checkpoints trained on the same labels, channels and "
                    "preprocessing (the folds of one run)")


def _plain(value: Any) -> Any:
    """Lists for tuples, so that a checkpoint's values compare by content."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Ensemble(Predictor):
    """Average the probabilities of several checkpoints.

    Args:
        checkpoints: ``(name, checkpoint dict)`` per member (the name, usually the file,
            is used in messages and in ``members``).
        rules: per-label postprocessing (label value -> :class:`LabelRule`) applied after
            the argmax, instead of the global ``largest_component`` / ``min_component_ml``.
        models: networks to use instead of the checkpoints' weights, one per member (tests).
        **kwargs: the :class:`Predictor` settings (device, overlap, tta, precision, ...),
            shared by every member.

    Raises:
        CheckpointError: the members disagree (:func:`check_members`) or one cannot be built.
    """

    def __init__(self, checkpoints: Sequence[tuple[str, Mapping[str, Any]]],
                 rules: Mapping[int, LabelRule] | None = None, models: Sequence[Any] | None = None,
                 **kwargs: Any) -> None:
        check_members(checkpoints)
        if models is not None and len(models) != len(checkpoints):
            raise ValueError(f"models: expected one per checkpoint ({len(checkpoints)}), got {len(models)}")
        self.member_names = [str(name) for name, _ in checkpoints]
        self.members: list[Predictor] = []
        for i, (name, ckpt) in enumerate(checkpoints):
            try:
                self.members.append(Predictor(dict(ckpt), model=None if models is None else models[i],
                                              **kwargs))
            except CheckpointError as err:
                raise CheckpointError(f"{name}: {err}") from err
        super().__init__(dict(checkpoints[0][1]), model=self.members[0].model, **kwargs)
        self.rules = {int(k): v for k, v in (rules or {}).items()}

    @classmethod
    def from_files(cls, paths: Sequence[PathLike], **kwargs: Any) -> Ensemble:
        """Load checkpoint files (:func:`load_checkpoint`) and ensemble them."""
        from medresunet.training.checkpoint import load_checkpoint

        return cls([(str(p), load_checkpoint(p)) for p in paths], **kwargs)

    @property
    def members_info(self) -> list[str]:
        """The members' names (checkpoint files), in order."""
        return list(self.member_names)

    def _probabilities_on(self, image: torch.Tensor, plan: MemoryPlan) -> torch.Tensor:
        """Mean softmax probabilities ``(K, *spatial)`` over the members, on the plan's device.

        One attempt of the out-of-memory fallback (every member under the same plan); the
        first member's output becomes the running mean and each further member's is added
        (divided by the number of members first, which keeps a float16 sum in ``[0, 1]``) and
        freed before the next one runs.
        """
        total: torch.Tensor | None = None
        scale = 1.0 / len(self.members)
        for member in self.members:
            probs = member._probabilities_on(image, plan)
            if total is None:
                total = probs.mul_(scale)
            else:
                total.add_(probs, alpha=scale)
            del probs
        assert total is not None  # check_members refuses an empty ensemble
        return total

    def predict_loaded(self, scan: LoadedScan, return_probabilities: bool = False) -> Prediction:
        """As :meth:`Predictor.predict_loaded`, then the per-label rules (if any)."""
        result = super().predict_loaded(scan, return_probabilities)
        if self.rules:
            start = time.perf_counter()
            spacing = tuple(float(s) for s in np.linalg.norm(scan.geometry.affine[:3, :3], axis=0))
            result.labels = apply_rules(result.labels, spacing, self.rules)
            result.seconds["postprocess"] = time.perf_counter() - start
        return result


def run_members(run_dir: PathLike, checkpoint: str = "last.pt") -> list[Path]:
    """The fold checkpoints of a run folder: ``RUN/fold_K/<checkpoint>``, by fold.

    Raises:
        CheckpointError: the folder holds no ``fold_K/<checkpoint>``.
    """
    from medresunet.crossval.layout import fold_dirs

    run = Path(run_dir)
    members = [d / checkpoint for _, d in fold_dirs(run) if (d / checkpoint).is_file()]
    if not members:
        raise CheckpointError(f"{run}: no fold_K/{checkpoint} in this run folder; expected the "
                              "folds of medresunet-train --fold (or give a checkpoint file)")
    return members


def open_models(models: Sequence[PathLike], postprocessing: bool = True, **kwargs: Any
                ) -> tuple[Predictor, dict[str, Any]]:
    """A Predictor for ``medresunet-infer --model``: one checkpoint, a run folder, or several.

    Args:
        models: checkpoint files and/or run folders (a run folder stands for its folds'
            ``fold_K/last.pt``). One checkpoint file gives a plain :class:`Predictor`.
        postprocessing: apply a single run folder's ``postprocessing.json`` (if it has one)
            unless ``largest_component`` / ``min_component_ml`` are given in ``kwargs``.
        **kwargs: the :class:`Predictor` settings.

    Returns:
        ``(predictor, info)``: info is ``{"members": [checkpoint paths], "postprocessing":
        {"source", "rules": {label value: {...}}} or None}`` for ``run.json``.

    Raises:
        CheckpointError: a checkpoint is unreadable, a run folder has no folds, or the members
            disagree. UsageError: an unreadable ``postprocessing.json``.
    """
    from medresunet.crossval.postprocessing import read_rules

    paths = [Path(m) for m in models]
    members = [p for m in paths for p in (run_members(m) if m.is_dir() else [m])]
    explicit = bool(kwargs.get("largest_component")) or bool(kwargs.get("min_component_ml"))
    rules_file = paths[0] / "postprocessing.json" if len(paths) == 1 and paths[0].is_dir() else None
    rules = None
    if postprocessing and not explicit and rules_file is not None and rules_file.is_file():
        rules = read_rules(rules_file)
    info: dict[str, Any] = {"members": [str(p) for p in members], "postprocessing": None}
    if rules:
        kwargs = {**kwargs, "largest_component": False, "min_component_ml": 0.0}  # the rules instead
        info["postprocessing"] = {"source": str(rules_file), "rules": {
            str(v): {"largest_component": r.largest_component, "min_component_ml": r.min_component_ml}
            for v, r in sorted(rules.items())}}
    if len(members) == 1 and not rules:
        return Predictor.from_file(members[0], **kwargs), info
    return Ensemble.from_files(members, rules=rules, **kwargs), info
