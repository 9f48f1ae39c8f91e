"""Network topology for a patch: per-level, per-axis pooling and kernels; cost estimates.

The rules follow nnU-Net's experiment planner (its ideas, not its code): an axis is
pooled while the pooled patch extent stays at least :data:`MIN_EXTENT` voxels and its
current spacing is at most twice the finest current spacing, so a thick axis waits until
the others have caught up; a convolution is 3 wide along an axis whose spacing is within
twice the finest, else 1 (no mixing of slices 5 mm apart at full in-plane resolution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from medresunet.networks.stride import total_stride

MIN_EXTENT = 8             # voxels a pooled axis keeps at least
SPACING_RATIO = 2.0        # pool / convolve an axis once its spacing is within 2x the finest
MAX_LEVELS = {2: 7, 3: 6}  # resolution levels at most (nnU-Net: 6 in 3D)
MAX_WIDTH = {2: 512, 3: 320}


@dataclass(frozen=True)
class Topology:
    """The per-level layout of a U-Net for one patch.

    Attributes:
        patch_size: voxels per axis, a multiple of the total stride per axis.
        strides: one per downsampling (``levels - 1``), each one int per axis (1 or 2).
        kernel_sizes: one per level, each one int per axis (1 or 3).
    """

    patch_size: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]

    @property
    def levels(self) -> int:
        return len(self.kernel_sizes)

    @property
    def total_stride(self) -> tuple[int, ...]:
        """The product of the strides, per axis."""
        return total_stride(self.strides, len(self.patch_size))


def topology_for(patch: Sequence[int], spacing: Sequence[float], max_levels: int | None = None) -> Topology:
    """Pooling and kernels of each level for ``patch`` (voxels) at ``spacing`` (mm).

    The patch is then rounded up per axis to a multiple of its total stride (rounding up
    keeps every pooling decision valid).
    """
    dims = len(patch)
    max_levels = max_levels or MAX_LEVELS[dims]
    extent = [int(p) for p in patch]
    space = [float(s) for s in spacing]
    strides: list[tuple[int, ...]] = []
    kernels: list[tuple[int, ...]] = []
    for level in range(max_levels):
        finest = min(space)
        kernels.append(tuple(3 if s <= SPACING_RATIO * finest else 1 for s in space))
        if level == max_levels - 1:
            break
        pool = [extent[a] // 2 >= MIN_EXTENT and space[a] <= SPACING_RATIO * finest for a in range(dims)]
        if not any(pool):
            break
        strides.append(tuple(2 if p else 1 for p in pool))
        for a in range(dims):
            if pool[a]:
                extent[a] //= 2
                space[a] *= 2
    total = total_stride(strides, dims)
    rounded = tuple(max(t, math.ceil(int(p) / t) * t) for p, t in zip(patch, total, strict=True))
    return Topology(rounded, tuple(strides), tuple(kernels))


def widths(levels: int, base: int, spatial_dims: int) -> tuple[int, ...]:
    """Feature maps per level: ``base`` doubling per level, capped (320 in 3D, 512 in 2D)."""
    return tuple(min(base * 2**level, MAX_WIDTH[spatial_dims]) for level in range(levels))


def _level_extents(topo: Topology) -> list[int]:
    extents, voxels = [], list(topo.patch_size)
    for level in range(topo.levels):
        extents.append(math.prod(voxels))
        if level < len(topo.strides):
            voxels = [v // s for v, s in zip(voxels, topo.strides[level], strict=True)]
    return extents


def forward_gflop(topo: Topology, channels: Sequence[int], in_channels: int, out_channels: int) -> float:
    """Multiply-adds x 2 of one forward pass of one patch, GFLOP (convolutions only).

    Counts the residual blocks' two convolutions and projection shortcuts, the decoder's
    transposed convolutions and the head: the terms that make up nearly all of the time.
    """
    flop = 0.0
    prev = in_channels
    extents = _level_extents(topo)
    for level, (vox, c) in enumerate(zip(extents, channels, strict=True)):
        k = math.prod(topo.kernel_sizes[level])
        flop += vox * (k * prev * c + k * c * c + (prev * c if prev != c else 0))  # encoder block
        if level < topo.levels - 1:
            up = channels[level + 1]
            flop += vox * up * c  # transposed conv (kernel = stride: one tap per output voxel)
            flop += vox * (k * 2 * c * c + k * c * c + 2 * c * c)  # decoder block
        prev = c
    flop += extents[0] * channels[0] * out_channels
    return 2.0 * flop / 1e9


def training_memory_gb(topo: Topology, channels: Sequence[int], batch_size: int, bytes_per_value: int) -> float:
    """Rough activation memory of one training step, GB.

    About 17 feature maps per level are kept for the backward pass (encoder and decoder
    blocks, upsampling and the concatenation), each ``voxels x channels`` values.
    """
    values = sum(v * c for v, c in zip(_level_extents(topo), channels, strict=True))
    return 17.0 * values * batch_size * bytes_per_value / 1e9
