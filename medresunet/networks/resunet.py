"""ResidualUNet: a residual U-Net for 2D and 3D segmentation (DESIGN section 5).

The network returns logits. The source article's softmax head is this 1x1
convolution followed by a softmax that lives outside the network: in the loss
(Dice + cross-entropy take logits) and at inference (softmax, then argmax).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medresunet.config import ACTIVATIONS, DOWNSAMPLES, NORMS, UPSAMPLES, ModelConfig
from medresunet.networks.blocks import ResidualBlock, make_conv, make_downsample, make_upsample
from medresunet.networks.stride import total_stride


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"ResidualUNet {name}: expected one of {list(choices)}, got {value!r}")


def per_axis(name: str, value: Any, count: int, dims: int, default: int,
             allowed: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """``count`` entries of ``dims`` ints from ``allowed``: ``value`` (None: ``default`` everywhere).

    An entry may be one int for every axis.
    """
    if value is None:
        return ((default,) * dims,) * count
    out = []
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == count:
        for entry in value:
            entry = (entry,) * dims if _is_int(entry) else tuple(entry) if isinstance(entry, Sequence) else ()
            if len(entry) == dims and all(_is_int(e) and e in allowed for e in entry):
                out.append(tuple(int(e) for e in entry))
    if len(out) != count:
        raise ValueError(f"ResidualUNet {name}: expected {count} entries (one per level) of {dims} values "
                         f"from {list(allowed)} (one per axis), got {value!r}")
    return tuple(out)


def _validate(
    spatial_dims: Any, in_channels: Any, out_channels: Any, channels: Any, num_res_blocks: Any,
    norm: Any, act: Any, dropout: Any, upsample: Any, downsample: Any,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check the hyper-parameters; return ``channels`` and per-level ``num_res_blocks``."""
    if not _is_int(spatial_dims) or spatial_dims not in (2, 3):
        raise ValueError(f"ResidualUNet spatial_dims: expected 2 or 3, got {spatial_dims!r}")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"ResidualUNet {name}: expected an integer >= 1, got {value!r}")
    if (
        isinstance(channels, (str, bytes))
        or not isinstance(channels, Sequence)
        or len(channels) < 2
        or not all(_is_int(c) and c >= 1 for c in channels)
    ):
        raise ValueError(
            "ResidualUNet channels: expected at least two positive integer feature counts "
            f"(one per level, the last is the bottleneck), got {channels!r}"
        )
    levels = len(channels)
    if _is_int(num_res_blocks):
        blocks = (num_res_blocks,) * levels
    elif isinstance(num_res_blocks, Sequence) and not isinstance(num_res_blocks, (str, bytes)):
        blocks = tuple(num_res_blocks)
    else:
        blocks = ()
    if len(blocks) != levels or not all(_is_int(b) and b >= 1 for b in blocks):
        raise ValueError(
            "ResidualUNet num_res_blocks: expected a positive integer or one positive integer "
            f"per level ({levels} levels), got {num_res_blocks!r}"
        )
    _check_choice("norm", norm, NORMS)
    _check_choice("act", act, ACTIVATIONS)
    _check_choice("upsample", upsample, UPSAMPLES)
    _check_choice("downsample", downsample, DOWNSAMPLES)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"ResidualUNet dropout: expected a number in [0, 1), got {dropout!r}")
    return tuple(int(c) for c in channels), tuple(int(b) for b in blocks)


class ResidualUNet(nn.Module):
    """Residual U-Net, one class for 2D and 3D, built from MONAI's layer factories.

    Encoder level ``i`` applies ``num_res_blocks[i]`` residual blocks (the first
    changes the channel count to ``channels[i]``); the levels are separated by a
    downsampling of ``strides[i]`` per axis (x2 everywhere by default: max-pooling, or
    with ``downsample="conv"`` the stride of the first convolution of the next level's
    first block); the last level is the bottleneck. The decoder, from deep to shallow,
    upsamples by the same strides, concatenates the encoder's skip and applies one
    residual block (projection shortcut) to ``channels[i]``. A 1x1 convolution gives the
    logits. The convolutions of level ``i`` are ``kernel_sizes[i]`` wide per axis (3 by
    default; 1 along an axis whose voxels are still much thicker than the others').

    Any input size works: the input is padded at the end of each spatial axis to a
    multiple of :attr:`total_stride` (per axis) and the output is cropped back. The
    padding takes each sample's and channel's lowest value, the normalised background
    (after a CT window exactly the value of air; after a z-score, 0 would be mean
    tissue). Configs are checked so that training patches need no padding.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (modalities), >= 1.
        out_channels: output classes (background included), >= 1.
        channels: feature maps per level, at least two (the last is the bottleneck).
        num_res_blocks: residual blocks per encoder level: an int, or one per level.
        norm: ``instance`` (affine; computed by a one-group-per-channel GroupNorm), ``batch``, ``group`` (<= 8 groups dividing the
            channels) or ``none`` (no norm layers; the convolutions keep their bias).
        act: ``relu``, ``leakyrelu`` (slope 0.01), ``prelu`` or ``gelu``.
        dropout: spatial dropout probability inside each residual block, in [0, 1).
        upsample: ``transpose`` (kernel-2 stride-2 transposed conv to the skip's
            channels), ``linear`` (bi/trilinear, ``align_corners=False``, channels kept)
            or ``nearest``.
        downsample: ``maxpool`` or ``conv`` (strided first convolution).
        bias: bias of the convolutions that no norm layer follows (with a norm layer a
            bias is redundant and left out); the 1x1 heads always have a bias.
        deep_supervision: add 1x1 heads on the decoder levels below full resolution.
        strides: one per downsampling (``len(channels) - 1``), each an int or one int
            (1 or 2) per axis; None: 2 along every axis.
        kernel_sizes: one per level (``len(channels)``), each an int or one int (1 or 3)
            per axis; None: 3 along every axis.

    Shapes:
        ``forward(x)``: ``(B, in_channels, *spatial)`` -> logits
        ``(B, out_channels, *spatial)``. In training mode with ``deep_supervision`` a
        tuple: the full-resolution logits, then ``(B, out_channels, *ceil(spatial / s_k))``
        for k = 1 .. len(channels) - 2, ``s_k`` the product of the first k strides.

    Raises:
        ValueError: a hyper-parameter out of range, naming it with expected and got.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        num_res_blocks: int | Sequence[int] = 1,
        norm: str = "instance",
        act: str = "relu",
        dropout: float = 0.0,
        upsample: str = "transpose",
        downsample: str = "maxpool",
        bias: bool = True,
        deep_supervision: bool = False,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        chans, blocks = _validate(
            spatial_dims, in_channels, out_channels, channels, num_res_blocks,
            norm, act, dropout, upsample, downsample,
        )
        self.strides = per_axis("strides", strides, len(chans) - 1, spatial_dims, 2, (1, 2))
        self.kernel_sizes = per_axis("kernel_sizes", kernel_sizes, len(chans), spatial_dims, 3, (1, 3))
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = chans
        self.num_res_blocks = blocks
        self.deep_supervision = bool(deep_supervision)
        dropout = float(dropout)

        def block(level: int, c_in: int, c_out: int, stride: Any = 1) -> ResidualBlock:
            kernel = self.kernel_sizes[level]
            return ResidualBlock(spatial_dims, c_in, c_out, stride, norm, act, dropout, bias, kernel)

        pools = [make_downsample(downsample, spatial_dims, s) for s in self.strides]
        self.pools = nn.ModuleList(p for p in pools if p is not None)  # empty with strided convs
        self.encoder = nn.ModuleList()
        prev = in_channels
        for level, (c, n) in enumerate(zip(chans, blocks, strict=True)):
            stride = self.strides[level - 1] if level > 0 and not self.pools else 1
            layers = [block(level, prev, c, stride)] + [block(level, c, c) for _ in range(n - 1)]
            self.encoder.append(nn.Sequential(*layers))
            prev = c

        # Decoder modules are indexed by the level they produce (0 = full resolution).
        self.upsamples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(len(chans) - 1):
            up, up_channels = make_upsample(upsample, spatial_dims, chans[level + 1], chans[level], bias,
                                            self.strides[level])
            self.upsamples.append(up)
            self.decoder.append(block(level, up_channels + chans[level], chans[level]))

        self.head = make_conv(spatial_dims, chans[0], out_channels, 1, 1, True)
        self.ds_heads = nn.ModuleList(
            make_conv(spatial_dims, chans[level], out_channels, 1, 1, True)
            for level in range(1, len(chans) - 1)
        ) if self.deep_supervision else nn.ModuleList()

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format of the weights: ``model.to(memory_format=...)`` opts in.

        With channels-last weights (``torch.channels_last_3d`` / ``torch.channels_last``)
        the input is converted to that layout once at the start of :meth:`forward`, so
        every layer runs channels-last (oneDNN's fast convolution layout on the CPU: 1.7x
        on the full-resolution 3x3x3 convolutions here) and the caller needs no
        ``.contiguous(memory_format=...)`` of its own. In eval mode the logits are
        returned in the standard contiguous layout.
        """
        weight = self.encoder[0][0].conv2.weight  # a 3x3(x3) kernel: the layout is unambiguous
        cl = torch.channels_last_3d if weight.ndim == 5 else torch.channels_last
        if weight.is_contiguous(memory_format=cl) and not weight.is_contiguous():
            return cl
        return torch.contiguous_format

    def stride_at(self, level: int) -> tuple[int, ...]:
        """The downsampling factor per axis of ``level`` (0: full resolution)."""
        return total_stride(self.strides[:level], self.spatial_dims)

    @property
    def total_stride(self) -> tuple[int, ...]:
        """The total downsampling factor per axis (``2 ** (len(channels) - 1)`` by default)."""
        return self.stride_at(len(self.channels) - 1)

    def padded_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The spatial shape the input is padded to (a multiple of :attr:`total_stride` per axis).

        The bottleneck gets at least two voxels, so instance and batch norm never see a
        single-voxel feature map in training (the last axis grows when needed).
        """
        stride = self.total_stride
        shape = [max(1, math.ceil(s / t)) * t for s, t in zip(spatial, stride, strict=True)]
        if all(s == t for s, t in zip(shape, stride, strict=True)):
            shape[-1] = 2 * stride[-1]
        return tuple(shape)

    @staticmethod
    def _pad(x: torch.Tensor, target: tuple[int, ...]) -> torch.Tensor:
        """Pad ``x`` at the end of each spatial axis to ``target`` with its background.

        The background is each sample's and channel's minimum: what "no object" is after
        normalisation (0 would be mean tissue after a z-score).
        """
        pad: list[int] = []
        for s, t in zip(reversed(x.shape[2:]), reversed(target), strict=True):
            pad += [0, t - s]
        background = x.detach().amin(dim=tuple(range(2, x.ndim)), keepdim=True)
        out = F.pad(x, pad)
        outside = torch.ones_like(out[:1, :1], dtype=torch.bool)
        outside[(slice(None), slice(None), *(slice(0, s) for s in x.shape[2:]))] = False
        return torch.where(outside, background.to(out.dtype), out)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits ``(B, out_channels, *spatial)`` of ``x`` ``(B, in_channels, *spatial)``.

        In training mode with ``deep_supervision``: a tuple, full resolution first.
        """
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"ResidualUNet input: expected a (B, C, *spatial) tensor with "
                f"{self.spatial_dims} spatial axes, got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        target = self.padded_shape(spatial)
        if target != spatial:
            x = self._pad(x, target)
        fmt = self.memory_format
        if fmt is not torch.contiguous_format:
            x = x.contiguous(memory_format=fmt)

        skips: list[torch.Tensor] = []
        for level, stage in enumerate(self.encoder):
            if level > 0 and self.pools:
                pool = self.pools[level - 1]
                # CPU autocast runs max_pool3d in fp32 (a copy and a cast for nothing):
                # max-pooling is exact in any precision, so pool in the input's dtype.
                # (Only where autocast exists: a meta-device copy counts FLOPs.)
                if x.device.type in ("cpu", "cuda"):
                    with torch.autocast(x.device.type, enabled=False):
                        x = pool(x)
                else:
                    x = pool(x)
            x = stage(x)
            skips.append(x)

        x = skips.pop()
        outputs: list[torch.Tensor] = []
        for level in range(len(self.channels) - 2, -1, -1):
            up = self.upsamples[level](x)
            skip = skips.pop()  # the skip of this level; dropped from the list once joined
            if up.dtype != skip.dtype:  # autocast may leave norm outputs in fp32
                up = up.to(skip.dtype)
            joined = torch.cat((up, skip), dim=1)
            # At full resolution up and skip are a third of the decoder's working memory in
            # inference; without other references they are freed before the block runs.
            del up, skip
            x = self.decoder[level](joined)
            del joined
            if self.training and self.deep_supervision and level > 0:
                outputs.append(self._crop(self.ds_heads[level - 1](x), spatial, self.stride_at(level)))
        logits = self._crop(self.head(x), spatial, self.stride_at(0))
        if fmt is not torch.contiguous_format and not self.training:
            logits = logits.contiguous()  # (B, K, *spatial) is small; callers expect NC(D)HW
        if self.training and self.deep_supervision:
            return (logits, *reversed(outputs))
        return logits

    @staticmethod
    def _crop(y: torch.Tensor, spatial: tuple[int, ...], factor: tuple[int, ...]) -> torch.Tensor:
        """Crop ``y`` to ``ceil(spatial / factor)`` per axis (a view, no copy)."""
        want = tuple(math.ceil(s / f) for s, f in zip(spatial, factor, strict=True))
        if tuple(y.shape[2:]) == want:
            return y
        return y[(slice(None), slice(None), *(slice(0, w) for w in want))]


def network_kwargs(model: ModelConfig, in_channels: int, out_channels: int) -> dict[str, Any]:
    """The :class:`ResidualUNet` keyword arguments of a model config, as plain values.

    Lists, not tuples, and only ints, floats, bools and strings: safe in a checkpoint
    read with ``torch.load(weights_only=True)``; ``ResidualUNet(**kwargs)`` rebuilds it.
    """
    blocks = model.num_res_blocks
    kwargs: dict[str, Any] = {
        "spatial_dims": int(model.spatial_dims),
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "channels": [int(c) for c in model.channels],
        "num_res_blocks": int(blocks) if isinstance(blocks, int) else [int(b) for b in blocks],
        "norm": str(model.norm),
        "act": str(model.act),
        "dropout": float(model.dropout),
        "upsample": str(model.upsample),
        "downsample": str(model.downsample),
        "bias": bool(model.bias),
        "deep_supervision": bool(model.deep_supervision),
    }
    # only when set: an isotropic network's kwargs (and checkpoints) stay as they were
    if model.strides is not None:
        kwargs["strides"] = [[int(v) for v in s] for s in model.strides]
    if model.kernel_sizes is not None:
        kwargs["kernel_sizes"] = [[int(v) for v in k] for k in model.kernel_sizes]
    return kwargs


def build_network(model: ModelConfig, in_channels: int, out_channels: int) -> ResidualUNet:
    """Build the :class:`ResidualUNet` of a model config."""
    return ResidualUNet(**network_kwargs(model, in_channels, out_channels))
