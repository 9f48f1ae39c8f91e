"""Dice + cross-entropy loss, with optional deep supervision.

Dice is MONAI's soft Dice over the foreground labels, computed over the whole batch
(``batch=True``: a label absent from one patch does not make that patch's Dice
meaningless), plus cross-entropy over all labels; both take logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn


def deep_supervision_weights(levels: int) -> list[float]:
    """Weights 1, 1/2, 1/4, ... for ``levels`` outputs (full resolution first), summing to 1."""
    raw = [0.5**i for i in range(max(1, levels))]
    total = sum(raw)
    return [w / total for w in raw]


class SegmentationLoss(nn.Module):
    """Dice + CE on logits ``(B, K, *spatial)`` against labels ``(B, 1, *spatial)``.

    With a tuple/list of logits (deep supervision, full resolution first), each output
    is compared with the label downsampled by nearest neighbour to its size and the
    losses are summed with :func:`deep_supervision_weights`.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.dice_ce = DiceCELoss(
            include_background=False, to_onehot_y=True, softmax=True, batch=True,
            smooth_nr=1e-5, smooth_dr=1e-5, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
        )

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of one output; ``target`` is resized (nearest) when its size differs."""
        target = torch.as_tensor(target)
        if target.shape[2:] != logits.shape[2:]:
            target = F.interpolate(target.float(), size=logits.shape[2:], mode="nearest")
        return self.dice_ce(logits.float().as_subclass(torch.Tensor), target.as_subclass(torch.Tensor))

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, (list, tuple)):
            weights = deep_supervision_weights(len(logits))
            return sum(w * self.single(out, target) for w, out in zip(weights, logits, strict=True))
        return self.single(logits, target)
