"""The total downsampling factor of the network per spatial axis (no torch: the config uses it).

One function decides it, for the network (the multiple an input is padded to, the factor
of each decoder level), for the planner's topology and for the config (``data.patch_size``
must be a multiple of it, checked when the config is read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def default_strides(n_downsamplings: int, spatial_dims: int) -> tuple[tuple[int, ...], ...]:
    """The strides of an isotropic network: x2 along every axis at each downsampling."""
    return ((2,) * int(spatial_dims),) * int(n_downsamplings)


def total_stride(strides: Sequence[Sequence[int]], spatial_dims: int) -> tuple[int, ...]:
    """The product of the downsampling strides along each spatial axis.

    Args:
        strides: one entry per downsampling (of the levels considered), each one stride per
            axis; empty for full resolution.
        spatial_dims: 2 or 3.

    Returns:
        ``spatial_dims`` ints, the factor per voxel axis (e.g. ``(16, 16, 16)`` for four x2
        downsamplings, ``(8, 8, 2)`` when two of three leave the last axis alone).
    """
    return tuple(math.prod(int(s[a]) for s in strides) for a in range(int(spatial_dims)))


def patch_size_problem(patch_size: Sequence[int], stride: Sequence[int]) -> str | None:
    """Why ``patch_size`` does not fit the network's total ``stride``, or None when it does.

    A patch must be a multiple of the total stride on every axis, else the network pads
    every patch (and the padding is seen in training as if it were image).
    """
    if all(p % s == 0 for p, s in zip(patch_size, stride, strict=True)):
        return None
    fixed = [-(-p // s) * s for p, s in zip(patch_size, stride, strict=True)]  # the next multiple up
    return (f"expected a multiple of the network's total stride {list(stride)} on every axis "
            f"(the product of model.strides; x2 per axis at each of the len(model.channels) - 1 "
            f"downsamplings by default), got {list(patch_size)}; e.g. {fixed}")
