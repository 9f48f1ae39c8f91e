"""Validation on whole preprocessed volumes: the inference sliding window, then Dice per label.

The logits come from :func:`medresunet.inference.sliding.sliding_window_logits`, the same
Gaussian-weighted window (and CUDA fallback) that inference uses; a 2D (slice-wise) model
validates on 3D volumes with a window of ``(H, W, 1)``. Dice is
:func:`medresunet.metrics.overlap.dice_per_label`, the definition of the evaluation reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medresunet.inference.sliding import sliding_window_logits
from medresunet.metrics.overlap import dice_per_label

Background = Sequence[float] | Callable[[Any], Sequence[float]]
"""Per-channel padding values, or a function of the preprocessed image giving them."""


@dataclass(frozen=True)
class Window:
    """The sliding window of validation.

    Attributes:
        patch_size: the network's window in voxels (``network_dims`` values).
        network_dims: the model's spatial dims (2 or 3).
        overlap: window overlap fraction in ``[0, 1)``.
        sw_batch_size: windows per forward pass.
        precision: resolved precision (``fp32|bf16|fp16``).
    """

    patch_size: Sequence[int]
    network_dims: int
    overlap: float = 0.5
    sw_batch_size: int = 2
    precision: str = "fp32"


def nanmean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


@torch.no_grad()
def validate(model: torch.nn.Module, volumes: Iterable[Mapping[str, Any]], labels: Mapping[str, int],
             window: Window, background: Background, device: torch.device) -> dict[str, Any]:
    """Mean Dice per label over whole validation volumes.

    Args:
        model: the network (put in eval mode here, its mode restored after).
        volumes: items ``{"image": (C, *spatial), "label": (1, *spatial)}`` (preprocessed).
        labels: name -> value map (background 0 is skipped).
        window: the sliding window.
        background: padding value per channel, or a function of the item's image (e.g.
            ``lambda im: [background_value(prep, c, im) for c in ...]``, for image-dependent
            z-score backgrounds).
        device: where the network runs.

    Returns:
        ``{"dice_mean": float, "dice": {label_name: mean over cases}, "n_cases": int}``;
        a label's mean skips the cases where it is absent from reference and prediction.
    """
    was_training = model.training
    model.eval()
    values = {str(n): int(v) for n, v in labels.items() if v != 0}
    per_label: dict[str, list[float]] = {n: [] for n in values}
    n = 0
    try:
        for item in volumes:
            bg = background(item["image"]) if callable(background) else background
            image = torch.as_tensor(item["image"]).as_subclass(torch.Tensor)[None]
            ref = torch.as_tensor(item["label"]).as_subclass(torch.Tensor)[0].long()
            logits = sliding_window_logits(
                image, model, window.patch_size, network_dims=window.network_dims, overlap=window.overlap,
                sw_batch_size=window.sw_batch_size, cval=bg, device=device, precision=window.precision)
            pred = logits[0].argmax(0).cpu()
            scores = dice_per_label(pred.numpy(), ref.cpu().numpy(), values.values())
            for name, value in values.items():
                per_label[name].append(scores[value])
            n += 1
    finally:
        model.train(was_training)
    dice = {name: nanmean(vals) for name, vals in per_label.items()}
    return {"dice_mean": nanmean(dice.values()), "dice": dice, "n_cases": n}
