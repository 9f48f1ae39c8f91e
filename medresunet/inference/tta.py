"""Test-time augmentation: mirror flips averaged in probability space (the nnU-Net way).

Memory: the softmax runs in slabs of :data:`SLAB` slices along the first spatial axis, in
place in the stitching buffer without flips, and into one accumulation array (the buffer's
device and dtype: on the GPU when the buffer is there) with them, so a scan never holds more
than the accumulation and one flip's logits (``2 x classes x voxels``; the softmax of a whole
volume and its flipped copy were two more).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

from medresunet.inference import memory as mem

#: Slices (first spatial axis) per softmax: the float32 temporaries stay at ``SLAB / X`` of
#: the volume.
SLAB = 16


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


def _add_softmax(total: torch.Tensor, logits: torch.Tensor, combo: tuple[int, ...], scale: float,
                 first: bool) -> None:
    """``total (+)= scale * flip(softmax(logits), combo)``, slab by slab (float32 softmax).

    ``total`` may be ``logits`` itself (no flips): each slab is read before it is written.
    """
    n = int(logits.shape[2])
    for start in range(0, n, SLAB):
        stop = min(n, start + SLAB)
        src = slice(n - stop, n - start) if 2 in combo else slice(start, stop)  # flipped slab
        part = torch.softmax(logits[:, :, src].float(), dim=1)
        if combo:
            part = torch.flip(part, combo)
        if scale != 1.0:
            part.mul_(scale)
        if first:
            total[:, :, start:stop] = part
        else:
            total[:, :, start:stop] += part


def predict_probabilities(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    flip_axes: Sequence[int] = (),
) -> torch.Tensor:
    """Softmax probabilities, averaged over flipped copies of the image.

    Each flipped copy of ``image`` goes through ``logits_fn``; the softmax of its output is
    flipped back and the mean over all ``2 ** len(flip_axes)`` copies is returned. Each
    copy's softmax is divided by the number of copies before it is added, so a float16
    accumulation stays in ``[0, 1]`` where its resolution is finest.

    Args:
        logits_fn: ``(B, C, *spatial) -> (B, K, *spatial)`` logits, e.g. a sliding-window run;
            its output is overwritten (without flips it becomes the result).
        image: ``(B, C, *spatial)`` preprocessed image.
        flip_axes: tensor dimensions to flip (empty: no test-time augmentation).

    Returns:
        ``(B, K, *spatial)`` probabilities summing to 1 over ``K``, on the device and in the
        floating dtype of ``logits_fn``'s output (float32 for anything else).
    """
    combos = flip_combinations(flip_axes)  # the identity first
    with torch.no_grad():  # the result stays a normal tensor: callers add to it in place
        logits = logits_fn(image)
        if not logits.is_floating_point():
            logits = logits.float()
        if len(combos) == 1:
            _add_softmax(logits, logits, (), 1.0, first=True)
            return logits
        total = mem.allocate(logits.shape, logits.dtype, logits.device, mem.ACCUMULATE)
        scale = 1.0 / len(combos)
        _add_softmax(total, logits, (), scale, first=True)
        del logits
        for combo in combos[1:]:
            logits = logits_fn(torch.flip(image, combo))
            _add_softmax(total, logits, combo, scale, first=False)
            del logits
        return total
