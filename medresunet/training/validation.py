"""Validation on whole preprocessed volumes: sliding-window logits and Dice per label.

A 2D (slice-wise) model validates on 3D volumes with a window of ``(H, W, 1)``: the
window's last axis is squeezed before the network and restored after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from medresunet.devices import autocast

Background = Sequence[float] | Callable[[Any], Sequence[float]]
"""Per-channel padding values, or a function of the preprocessed image giving them."""


class _SliceWise(torch.nn.Module):
    """Run a 2D network on windows ``(B, C, H, W, 1)``, returning ``(B, K, H, W, 1)``."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.squeeze(-1)).unsqueeze(-1)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


def pad_to_window(image: torch.Tensor, roi: Sequence[int], background: Sequence[float]) -> tuple[torch.Tensor, list[slice]]:
    """Pad ``(B, C, *spatial)`` up to at least ``roi`` with each channel's background value.

    Returns the padded tensor and the slices that crop the result back.
    """
    spatial = image.shape[2:]
    pads, crop = [], [slice(None), slice(None)]
    for size, want in zip(spatial, roi, strict=True):
        extra = max(0, int(want) - int(size))
        lo = extra // 2
        pads.append((lo, extra - lo))
        crop.append(slice(lo, lo + size))
    if not any(p for pair in pads for p in pair):
        return image, crop
    flat = [p for pair in reversed(pads) for p in pair]
    out = torch.cat(
        [F.pad(image[:, c : c + 1], flat, mode="constant", value=float(background[min(c, len(background) - 1)]))
         for c in range(image.shape[1])],
        dim=1,
    )
    return out, crop


@torch.no_grad()
def sliding_window_logits(model: torch.nn.Module, image: torch.Tensor, patch_size: Sequence[int],
                          spatial_dims: int, overlap: float, background: Sequence[float],
                          device: torch.device, precision: str = "fp32",
                          sw_batch_size: int = 2) -> torch.Tensor:
    """Gaussian-weighted sliding-window logits of a whole volume.

    Args:
        model: the network (eval mode is the caller's business).
        image: ``(1, C, *spatial)`` preprocessed volume (3 spatial axes, or 2 for a
            true 2D image with a 2D model).
        patch_size: window in voxels, 3 values for a 3D model, 2 for a 2D model.
        spatial_dims: the model's spatial dims (2 or 3).
        overlap: window overlap fraction in [0, 1).
        background: normalised background value per input channel (used to pad).
        device: where the network runs; the stitched result stays on the image's device.
        precision: resolved precision (``fp32|bf16|fp16``).

    Returns:
        ``(1, K, *spatial)`` float32 logits on the image's device.
    """
    predictor: torch.nn.Module = model
    roi = tuple(int(p) for p in patch_size)
    if spatial_dims == 2 and image.ndim == 5:
        predictor = _SliceWise(model)
        roi = (*roi, 1)
    image = image.float()
    padded, crop = pad_to_window(image, roi, background)
    with autocast(device, precision):
        out = sliding_window_inference(
            padded, roi, sw_batch_size, lambda x: _first(predictor(x)).float(), overlap=overlap,
            mode="gaussian", cval=float(background[0]), sw_device=device, device=image.device,
        )
    return torch.as_tensor(out).float()[tuple(crop)]


def dice_per_label(pred: torch.Tensor, ref: torch.Tensor, labels: Mapping[str, int]) -> dict[str, float]:
    """Dice of each foreground label between two integer label volumes of one shape.

    A label absent from both gives NaN (left out of means).
    """
    out: dict[str, float] = {}
    for name, value in labels.items():
        if value == 0:
            continue
        p, r = pred == value, ref == value
        denom = int(p.sum()) + int(r.sum())
        out[name] = float("nan") if denom == 0 else 2.0 * int((p & r).sum()) / denom
    return out


def nanmean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


@torch.no_grad()
def validate(model: torch.nn.Module, volumes: Iterable[Mapping[str, Any]], labels: Mapping[str, int],
             patch_size: Sequence[int], spatial_dims: int, overlap: float, background: Background,
             device: torch.device, precision: str = "fp32", sw_batch_size: int = 2) -> dict[str, Any]:
    """Mean Dice per label over whole validation volumes.

    Args:
        volumes: items ``{"image": (C, *spatial), "label": (1, *spatial)}`` (preprocessed).
        labels: name -> value map (background 0 is skipped).
        background: padding value per channel, or a function of the item's image (e.g.
            ``lambda im: [background_value(prep, c, im) for c in ...]``, for image-dependent
            z-score backgrounds).

    Returns:
        ``{"dice_mean": float, "dice": {label_name: mean over cases}, "n_cases": int}``;
        a label's mean skips the cases where it is absent from reference and prediction.
    """
    was_training = model.training
    model.eval()
    per_label: dict[str, list[float]] = {n: [] for n, v in labels.items() if v != 0}
    n = 0
    try:
        for item in volumes:
            bg = background(item["image"]) if callable(background) else background
            image = torch.as_tensor(item["image"]).as_subclass(torch.Tensor)[None]
            ref = torch.as_tensor(item["label"]).as_subclass(torch.Tensor)[0].long()
            logits = sliding_window_logits(model, image, patch_size, spatial_dims, overlap, bg,
                                           device, precision, sw_batch_size)
            pred = logits[0].argmax(0).to(ref.device)
            for name, value in dice_per_label(pred, ref, labels).items():
                per_label[name].append(value)
            n += 1
    finally:
        model.train(was_training)
    dice = {name: nanmean(vals) for name, vals in per_label.items()}
    return {"dice_mean": nanmean(dice.values()), "dice": dice, "n_cases": n}
