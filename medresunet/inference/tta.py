"""Test-time augmentation: mirror flips averaged in probability space (the nnU-Net way)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch


def flip_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (including the empty one, the identity), smallest first.

    Args:
        axes: tensor dimensions that may be flipped, e.g. ``(2, 3, 4)`` for ``(B, C, X, Y, Z)``.

    Returns:
        ``2 ** len(axes)`` tuples of dimensions to flip together.
    """
    axes = tuple(axes)
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def tta_axes(image_dims: int, network_dims: int) -> tuple[int, ...]:
    """The spatial dimensions of ``(B, C, *spatial)`` worth flipping.

    A 2D network run slice by slice over a 3D image is flipped in-plane only: flipping the
    slice axis would only reorder the slices.
    """
    n = min(image_dims, network_dims) if network_dims == 2 else image_dims
    return tuple(range(2, 2 + n))


def predict_probabilities(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    flip_axes: Sequence[int] = (),
) -> torch.Tensor:
    """Softmax probabilities, averaged over flipped copies of the image.

    Each flipped copy of ``image`` goes through ``logits_fn``; the softmax of its output is
    flipped back and the mean over all ``2 ** len(flip_axes)`` copies is returned.

    Args:
        logits_fn: ``(B, C, *spatial) -> (B, K, *spatial)`` logits, e.g. a sliding-window run.
        image: ``(B, C, *spatial)`` preprocessed image.
        flip_axes: tensor dimensions to flip (empty: no test-time augmentation).

    Returns:
        ``(B, K, *spatial)`` float32 probabilities summing to 1 over ``K``.
    """
    combos = flip_combinations(flip_axes)  # the identity first
    total = torch.softmax(logits_fn(image).float(), dim=1)
    for combo in combos[1:]:
        probs = torch.softmax(logits_fn(torch.flip(image, combo)).float(), dim=1)
        total.add_(torch.flip(probs, combo))
        del probs
    return total.div_(len(combos))
