"""Budget-aware training: the steps that still fit, and cheap patch validation.

With ``train.fit_budget`` and a ``--max-minutes`` budget the loop re-fits the number of
steps (and so of epochs) after each epoch to what the remaining budget allows at the step
time measured so far (so the learning rate decays to the last step that really runs,
whatever the load of the machine); with ``train.val_mode: patch`` it validates during
training on one patch-sized crop per validation case, centred on the case's foreground, and
on the whole volumes only at the end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

SAFETY = 0.98  # of the remaining budget that the re-fitted steps may fill


def refit_steps(steps_done: int, elapsed_s: float, budget_s: float, step_s: float, planned: int) -> int:
    """Total optimizer steps that end within the budget at ``step_s`` seconds per step.

    The learning rate decays over this many steps, so it reaches its floor where the budget
    will really end (a horizon in whole epochs would end mid-epoch, the rate still high).

    Args:
        steps_done: steps taken so far.
        elapsed_s: seconds of the budget already used.
        budget_s: the whole budget (s).
        step_s: seconds per step so far, the epochs' validations spread over their steps.
        planned: the current total (returned when nothing is measured).

    Returns:
        At least ``steps_done + 1`` when any budget is left, else ``steps_done``.
    """
    if step_s <= 0:
        return planned
    remaining = budget_s - elapsed_s
    if remaining <= 0:
        return max(1, steps_done)
    return steps_done + max(1, int(SAFETY * remaining / step_s))


def _crop_slices(mask: torch.Tensor, roi: Sequence[int]) -> tuple[slice, ...]:
    """Slices of a ``roi`` window centred on the voxels of ``mask`` ``(*spatial)``, inside it."""
    spatial = mask.shape
    fg = torch.nonzero(mask)
    centre = (fg.float().mean(0) if len(fg) else torch.tensor(spatial, dtype=torch.float32) / 2).tolist()
    out = []
    for size, want, c in zip(spatial, roi, centre, strict=True):
        want = min(int(want), int(size))
        start = int(round(c - want / 2))
        start = max(0, min(start, int(size) - want))
        out.append(slice(start, start + want))
    return tuple(out)


def patch_crops(volumes: Sequence[Mapping[str, Any]], patch_size: Sequence[int], spatial_dims: int,
                max_slices: int = 16) -> list[dict[str, Any]]:
    """Crops of each validation volume, one centred on each label it has: the patch validation set.

    Args:
        volumes: ``{"image": (C, *spatial), "label": (1, *spatial)}`` whole preprocessed volumes.
        patch_size: the training patch (voxels); a 2D model's crop keeps ``max_slices`` slices.
        spatial_dims: the model's (2 or 3).
        max_slices: slices of a 2D model's crop along the last axis.

    Returns:
        Items of the same form, each at most a patch (so a sliding window is one forward).
    """
    roi = tuple(patch_size) if spatial_dims == 3 else (*patch_size, max_slices)
    out = []
    for item in volumes:
        label = torch.as_tensor(item["label"]).as_subclass(torch.Tensor)
        image = torch.as_tensor(item["image"]).as_subclass(torch.Tensor)
        window_roi = roi[: label.ndim - 1]  # a true 2D image: crop the plane only
        values = [int(v) for v in torch.unique(label) if v > 0] or [0]
        for value in values:  # every label gets a crop: small organs are not left out
            index = (slice(None), *_crop_slices(label[0] == value if value else label[0] >= 0, window_roi))
            out.append({"image": image[index].clone(), "label": label[index].clone(),
                        "case_id": item.get("case_id")})
    return out


def mean_epoch_seconds(epoch_seconds: Sequence[float]) -> float:
    """Mean of the epochs' seconds, the first left out when there are others (warm-up, caches)."""
    values = list(epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds)
    return float(sum(values) / len(values)) if values else math.nan


def rebuild_scheduler(scheduler: Any, total_steps: int, warmup_steps: int, kind: str) -> Any:
    """The scheduler with a new horizon of ``total_steps``, at the step it had reached."""
    from medresunet.training.schedule import load_scheduler_state, make_scheduler, scheduler_state

    state = scheduler_state(scheduler)
    new = make_scheduler(scheduler.optimizer, total_steps, warmup_steps, kind)
    load_scheduler_state(new, state)
    return new
