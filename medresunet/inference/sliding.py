"""Sliding-window inference: Gaussian-weighted patches stitched into a whole-volume output.

The core of prediction, with no file IO. It wraps MONAI's ``sliding_window_inference`` and adds
what a segmentation tool needs around it:

* padding with the *normalised background* of each channel (``cval``), never 0, when the image
  is smaller than a window (after z-scoring, 0 is mean tissue intensity);
* a 2D network run slice by slice over a 3D volume (windows of ``(H, W, 1)`` whose last axis is
  squeezed before the network and restored after);
* autocast (fp16 on CUDA, bf16 on CPU) through :func:`medresunet.devices.autocast`, the stitching
  buffer always float32;
* a choice of where the stitching buffer lives: ``same`` (the compute device), ``cpu``, or
  ``auto`` (the compute device, falling back to the CPU when CUDA runs out of memory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from medresunet.devices import autocast

log = logging.getLogger(__name__)

STITCH_DEVICES = ("auto", "cpu", "same")


def window_size(patch_size: Sequence[int], network_dims: int, image_dims: int) -> tuple[int, ...]:
    """The sliding-window size for a network of ``network_dims`` over an image of ``image_dims``.

    Args:
        patch_size: the training patch size (``network_dims`` values, voxels).
        network_dims: 2 or 3, the network's spatial dimensions.
        image_dims: 2 or 3, the image's spatial dimensions.

    Returns:
        ``patch_size`` itself, or ``(*patch_size, 1)`` for a 2D network over a 3D image.

    Raises:
        ValueError: a 3D network over a 2D image (the caller adds a singleton axis first), or a
            patch size of the wrong length.
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != network_dims:
        raise ValueError(f"patch_size {patch} has {len(patch)} values; the network is {network_dims}D")
    if network_dims == image_dims:
        return patch
    if network_dims == 2 and image_dims == 3:
        return (*patch, 1)
    raise ValueError(f"a {network_dims}D network cannot slide over a {image_dims}D image")


class _SliceWise(torch.nn.Module):
    """Run a 2D network on windows ``(B, C, H, W, 1)``: squeeze the last axis and restore it."""

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x[..., 0]).unsqueeze(-1)


def _pad_to_window(image: torch.Tensor, roi: Sequence[int],
                   cval: Sequence[float]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad ``image (B, C, *spatial)`` symmetrically to at least ``roi`` with a value per channel.

    Returns the padded tensor and the slices that crop the output back to the input's extent.
    """
    spatial = image.shape[2:]
    before = [max(r - s, 0) // 2 for r, s in zip(roi, spatial, strict=True)]
    after = [max(r - s, 0) - b for r, s, b in zip(roi, spatial, before, strict=True)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    if not any(before) and not any(after):
        return image, crop
    pads: list[int] = []
    for b, a in zip(reversed(before), reversed(after), strict=True):
        pads.extend([b, a])
    channels = [F.pad(image[:, c:c + 1], pads, mode="constant", value=float(cval[c]))
                for c in range(image.shape[1])]
    return torch.cat(channels, dim=1), crop


def sliding_window_logits(
    image: torch.Tensor,
    network: Callable[[torch.Tensor], torch.Tensor],
    patch_size: Sequence[int],
    *,
    network_dims: int,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    cval: float | Sequence[float] = 0.0,
    device: Any = None,
    precision: str = "fp32",
    stitch_device: str = "auto",
    sigma_scale: float = 0.125,
    progress: bool = False,
) -> torch.Tensor:
    """Whole-volume logits from Gaussian-weighted sliding windows.

    Args:
        image: ``(B, C, *spatial)`` preprocessed image, 2 or 3 spatial axes, any device.
        network: callable mapping ``(n, C, *window)`` to logits ``(n, K, *window)``; for a 2D
            network over a 3D image it receives ``(n, C, H, W)`` slices.
        patch_size: the network's window, ``network_dims`` values in voxels.
        network_dims: 2 or 3.
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.
        sw_batch_size: windows per network call.
        cval: padding value (the normalised background), one per channel or one for all.
        device: the compute device (``torch.device``); default the image's device.
        precision: resolved precision ``fp32|bf16|fp16`` (autocast around the network).
        stitch_device: where the output buffer lives: ``same`` (the compute device), ``cpu``,
            or ``auto`` (the compute device; on CUDA out-of-memory, retried on the CPU).
        sigma_scale: Gaussian sigma as a fraction of the window size.
        progress: show MONAI's window progress bar.

    Returns:
        ``(B, K, *spatial)`` float32 logits, on the stitching device, same spatial shape as
        ``image``.
    """
    if stitch_device not in STITCH_DEVICES:
        raise ValueError(f"stitch_device: expected one of {STITCH_DEVICES}, got {stitch_device!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap: expected a value in [0, 1), got {overlap}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size: expected >= 1, got {sw_batch_size}")
    image_dims = image.ndim - 2
    roi = window_size(patch_size, network_dims, image_dims)
    device = torch.device(device) if device is not None else image.device
    n_channels = image.shape[1]
    cvals = [float(cval)] * n_channels if isinstance(cval, (int, float)) else [float(v) for v in cval]
    if len(cvals) != n_channels:
        raise ValueError(f"cval has {len(cvals)} values; the image has {n_channels} channels")

    image = torch.as_tensor(image).float()
    padded, crop = _pad_to_window(image, roi, cvals)
    net: Callable[[torch.Tensor], torch.Tensor] = network
    if network_dims == 2 and image_dims == 3:
        net = _SliceWise(network)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            out = net(window)
        if isinstance(out, (tuple, list)):  # deep supervision: full resolution first
            out = out[0]
        return out.float()

    def run(stitch: torch.device) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        inputs = padded.to(stitch if stitch.type == "cpu" else device)
        with torch.inference_mode():
            out = sliding_window_inference(
                inputs, roi, sw_batch_size, predictor, overlap=overlap, mode="gaussian",
                sigma_scale=sigma_scale, padding_mode="constant", cval=cvals[0],
                sw_device=device, device=stitch, progress=progress,
            )
        out = torch.as_tensor(out)  # drop any MetaTensor wrapper
        return out[(slice(None), slice(None), *crop)].float()

    cpu = torch.device("cpu")
    if stitch_device == "cpu":
        return run(cpu)
    if stitch_device == "same" or device.type != "cuda":
        return run(device)
    try:
        return run(device)
    except torch.cuda.OutOfMemoryError:
        log.warning("CUDA out of memory while stitching on %s; retrying with the stitching "
                    "buffer on the CPU (use --stitch-device cpu to start there)", device)
        torch.cuda.empty_cache()
        return run(cpu)
