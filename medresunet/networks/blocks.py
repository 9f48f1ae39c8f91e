"""Building blocks of :class:`~medresunet.networks.ResidualUNet`, for 2D and 3D.

Every layer comes from MONAI's layer factories (``Conv``, ``Pool``, ``Norm``, ``Act``,
``Dropout``), indexed by the number of spatial dimensions, so one code path builds
both the 2D and the 3D network.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Act, Conv, Dropout, Norm, Pool
from torch import nn

from medresunet.config import ACTIVATIONS, DOWNSAMPLES, NORMS, UPSAMPLES

#: The most groups a ``group`` norm uses (fewer when 8 does not divide the channels).
MAX_GROUPS = 8


def group_count(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """The largest number of groups ``<= max_groups`` that divides ``channels``."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def make_norm(norm: str, spatial_dims: int, channels: int) -> nn.Module | None:
    """A normalisation layer over ``channels`` feature maps, or ``None`` for ``"none"``.

    Instance norm is affine (a learned scale and shift per channel, as in nnU-Net) and
    computed as a group norm with one group per channel: the same function (per-sample,
    per-channel statistics in training and eval, eps 1e-5) and the same parameters, but
    PyTorch's group-norm kernel keeps the channels-last memory format and on the CPU
    runs 1.5-13x faster than ``InstanceNorm2d/3d`` (which copies channels-last input).
    """
    if norm == "none":
        return None
    if norm == "instance":
        return Norm[Norm.GROUP, spatial_dims](channels, channels, affine=True)
    if norm == "batch":
        return Norm[Norm.BATCH, spatial_dims](channels)
    if norm == "group":
        return Norm[Norm.GROUP, spatial_dims](group_count(channels), channels)
    raise ValueError(f"norm: expected one of {list(NORMS)}, got {norm!r}")


def make_act(act: str) -> nn.Module:
    """An activation layer (in place where that is safe)."""
    if act == "relu":
        return Act[Act.RELU](inplace=True)
    if act == "leakyrelu":
        return Act[Act.LEAKYRELU](negative_slope=0.01, inplace=True)
    if act == "prelu":
        return Act[Act.PRELU]()
    if act == "gelu":
        return Act[Act.GELU]()
    raise ValueError(f"act: expected one of {list(ACTIVATIONS)}, got {act!r}")


Size = int | tuple[int, ...]
"""One value for every spatial axis, or one per axis."""


def make_conv(
    spatial_dims: int, in_channels: int, out_channels: int, kernel_size: Size, stride: Size, bias: bool
) -> nn.Module:
    """A ``kernel_size``-wide convolution with "same" padding (for odd kernels, per axis)."""
    padding = kernel_size // 2 if isinstance(kernel_size, int) else tuple(k // 2 for k in kernel_size)
    return Conv[Conv.CONV, spatial_dims](
        in_channels, out_channels, kernel_size=kernel_size, stride=stride,
        padding=padding, bias=bias,
    )


def _is_one(size: Size) -> bool:
    return all(s == 1 for s in size) if isinstance(size, tuple) else size == 1


def _sequential(*layers: nn.Module | None) -> nn.Sequential:
    return nn.Sequential(*(layer for layer in layers if layer is not None))


class ResidualBlock(nn.Module):
    """conv3x3-norm-act, (spatial dropout), conv3x3-norm, plus the shortcut, then act.

    The shortcut is the identity when the block keeps the channel count and the
    resolution, else a 1x1 convolution (with ``stride``) followed by the norm (the
    projection shortcut). A convolution followed by a norm layer has no bias (the
    norm's shift makes it redundant); with ``norm="none"`` the convolutions have a
    bias when ``bias`` is true.

    Args:
        spatial_dims: 2 or 3.
        in_channels: feature maps in.
        out_channels: feature maps out.
        stride: 1, or 2 to halve the resolution (first conv and shortcut); or one per axis.
        kernel_size: 3 (or 1, or one per axis: 1 along a thick axis).
        norm: ``instance``, ``batch``, ``group`` or ``none``.
        act: ``relu``, ``leakyrelu``, ``prelu`` or ``gelu``.
        dropout: probability of spatial (whole feature map) dropout between the convs.
        bias: bias of the convolutions not followed by a norm layer.

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, out_channels, *spatial / stride)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: Size = 1,
        norm: str = "instance",
        act: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        kernel_size: Size = 3,
    ) -> None:
        super().__init__()
        conv_bias = bias and norm == "none"
        self.conv1 = make_conv(spatial_dims, in_channels, out_channels, kernel_size, stride, conv_bias)
        self.norm1 = make_norm(norm, spatial_dims, out_channels) or nn.Identity()
        self.act1 = make_act(act)
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout) if dropout > 0 else nn.Identity()
        self.conv2 = make_conv(spatial_dims, out_channels, out_channels, kernel_size, 1, conv_bias)
        self.norm2 = make_norm(norm, spatial_dims, out_channels) or nn.Identity()
        if in_channels != out_channels or not _is_one(stride):
            self.shortcut: nn.Module = _sequential(
                make_conv(spatial_dims, in_channels, out_channels, 1, stride, conv_bias),
                make_norm(norm, spatial_dims, out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x)
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(self.dropout(y)))
        if y.dtype == residual.dtype and y.shape == residual.shape:
            # In place: y is a fresh tensor that no backward needs (norm and conv backward
            # read their inputs), so the sum needs no new full-size buffer.
            return self.act2(y.add_(residual))
        return self.act2(y + residual)


def make_downsample(downsample: str, spatial_dims: int, stride: Size = 2) -> nn.Module | None:
    """The max-pooling between encoder levels (2x2(x2), or ``stride`` per axis), or ``None`` for ``"conv"``.

    With ``"conv"`` the next level's first residual block downsamples itself (``stride``
    in its first convolution and its projection shortcut).
    """
    if downsample == "maxpool":
        return Pool[Pool.MAX, spatial_dims](kernel_size=stride, stride=stride)
    if downsample == "conv":
        return None
    raise ValueError(f"downsample: expected one of {list(DOWNSAMPLES)}, got {downsample!r}")


def make_upsample(
    upsample: str, spatial_dims: int, in_channels: int, out_channels: int, bias: bool, stride: Size = 2
) -> tuple[nn.Module, int]:
    """The x2 (or ``stride`` per axis) upsampling of the decoder and the channel count it gives.

    ``transpose``: a transposed convolution with kernel = stride to ``out_channels``;
    ``linear``: bilinear (2D) / trilinear (3D) interpolation, ``align_corners=False``,
    channels unchanged; ``nearest``: nearest-neighbour interpolation, channels unchanged.
    """
    if upsample == "transpose":
        layer = Conv[Conv.CONVTRANS, spatial_dims](
            in_channels, out_channels, kernel_size=stride, stride=stride, bias=bias
        )
        return layer, out_channels
    scale = float(stride) if isinstance(stride, int) else tuple(float(s) for s in stride)
    if upsample == "linear":
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        return nn.Upsample(scale_factor=scale, mode=mode, align_corners=False), in_channels
    if upsample == "nearest":
        return nn.Upsample(scale_factor=scale, mode="nearest"), in_channels
    raise ValueError(f"upsample: expected one of {list(UPSAMPLES)}, got {upsample!r}")
