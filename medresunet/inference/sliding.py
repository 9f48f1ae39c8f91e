"""Sliding-window inference: Gaussian-weighted patches stitched into a whole-volume output.

The core of prediction, with no file IO. The windows and their weights are MONAI's
(``dense_patch_slices`` at MONAI's scan interval, ``compute_importance_map``); the stitching
loop is ours because where its buffer lives, in which dtype, and what happens when CUDA runs
out of memory decide whether a large scan fits on a GPU (MONAI's ``sliding_window_inference``
allocates the buffer inside, in the input's dtype, out of reach of a fallback). Around it:

* padding with the *normalised background* of each channel (``cval``), never 0, when the image
  is smaller than a window (after z-scoring, 0 is mean tissue intensity);
* a 2D network run slice by slice over a 3D volume (windows of ``(H, W, 1)`` whose last axis is
  squeezed before the network and restored after);
* autocast (fp16 on CUDA, bf16 on CPU) through :func:`medresunet.devices.autocast`;
* the stitching buffer in float32, or float16 on CUDA when ``classes x voxels`` is large
  (:func:`medresunet.inference.memory.stitch_dtype`); the weight sum stays float32;
* where the buffer lives: ``same`` (the compute device), ``cpu``, or ``auto`` (the compute
  device, with the out-of-memory fallback of :mod:`medresunet.inference.memory`: a smaller
  window batch, then the buffer on the CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from medresunet.devices import autocast
from medresunet.inference import memory as mem

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


def scan_interval(spatial: Sequence[int], roi: Sequence[int], overlap: float) -> tuple[int, ...]:
    """Window starts' step per axis, MONAI's rule: ``int(roi * (1 - overlap))``, at least 1,
    and one window along an axis the window fills."""
    out = []
    for size, r in zip(spatial, roi, strict=True):
        out.append(int(r) if int(r) == int(size) else max(1, int(r * (1.0 - overlap))))
    return tuple(out)


def fallback_for(stitch_device: str, sw_batch_size: int,
                 memory: mem.OomFallback | None = None) -> mem.OomFallback:
    """The out-of-memory state for a ``stitch_device`` choice (``memory`` if given)."""
    if stitch_device not in STITCH_DEVICES:
        raise ValueError(f"stitch_device: expected one of {STITCH_DEVICES}, got {stitch_device!r}")
    if memory is not None:
        return memory
    return mem.OomFallback(sw_batch_size=sw_batch_size, on_host=stitch_device == "cpu",
                           enabled=stitch_device == "auto")


def gaussian_weight(roi: Sequence[int], sigma_scale: float, device: Any) -> torch.Tensor:
    """MONAI's Gaussian importance map of a window ``(*roi)``, float32 on ``device``."""
    from monai.data.utils import compute_importance_map

    return compute_importance_map(tuple(int(r) for r in roi), mode="gaussian", sigma_scale=sigma_scale,
                                  device=device, dtype=torch.float32)


def stitch_windows(
    padded: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    weight: torch.Tensor,
    *,
    plan: mem.MemoryPlan,
    device: torch.device,
    overlap: float,
    dtype: str = "fp32",
    progress: bool = False,
) -> torch.Tensor:
    """One attempt: every window of ``padded`` through ``predictor``, blended under ``plan``.

    Args:
        padded: ``(B, C, *spatial)`` image at least the window large on every axis.
        predictor: ``(n, C, *roi)`` on ``device`` -> ``(n, K, *roi)`` float32 logits.
        weight: the window's blending weights ``(*roi)`` on ``device`` (:func:`gaussian_weight`).
        plan: window batch and where the buffer lives (``on_host``: the CPU).
        device: where the windows run.
        overlap: fraction of a window shared with its neighbour.
        dtype: ``auto|fp32|fp16`` for the buffer, see :func:`medresunet.inference.memory.stitch_dtype`.
        progress: a progress bar over the window batches.

    Returns:
        ``(B, K, *spatial)`` weighted mean logits on the buffer's device, float32 or float16.
    """
    from monai.data.utils import dense_patch_slices
    from tqdm.auto import tqdm

    roi = tuple(int(r) for r in weight.shape)
    spatial = tuple(int(s) for s in padded.shape[2:])
    out_device = torch.device("cpu") if plan.on_host else device
    source = padded if plan.on_host else padded.to(device)
    windows = [(b, sl) for b in range(padded.shape[0])
               for sl in dense_patch_slices(spatial, roi, scan_interval(spatial, roi, overlap))]
    weight_out = weight.to(out_device)
    buffer: torch.Tensor | None = None
    count = mem.allocate((1, 1, *spatial), torch.float32, out_device, mem.BUFFER)
    starts = range(0, len(windows), plan.sw_batch_size)
    for i in tqdm(starts, disable=not progress, desc="windows", unit="batch", leave=False):
        group = windows[i:i + plan.sw_batch_size]
        batch = torch.cat([source[(slice(b, b + 1), slice(None), *sl)] for b, sl in group]).to(device)
        try:
            logits = predictor(batch)
        except RuntimeError as err:
            mem.mark_stage(err, mem.FORWARD)
            raise
        del batch
        logits.mul_(weight)
        if buffer is None:
            kind = mem.stitch_dtype(dtype, int(logits.shape[1]) * count.numel(), device)
            buffer = mem.allocate((padded.shape[0], logits.shape[1], *spatial), kind, out_device, mem.BUFFER)
        part = logits.to(device=out_device, dtype=buffer.dtype)
        del logits
        for j, (b, sl) in enumerate(group):
            buffer[(b, slice(None), *sl)] += part[j]
            count[(0, slice(None), *sl)] += weight_out
        del part
    if buffer is None:  # cannot happen: padded is at least one window large
        raise ValueError(f"no window of {roi} fits the image {spatial}")
    return buffer.div_(count)


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
    stitch_dtype: str = "fp32",
    sigma_scale: float = 0.125,
    progress: bool = False,
    memory: mem.OomFallback | None = None,
    plan: mem.MemoryPlan | None = None,
) -> torch.Tensor:
    """Whole-volume logits from Gaussian-weighted sliding windows.

    Args:
        image: ``(B, C, *spatial)`` preprocessed image, 2 or 3 spatial axes, any device.
        network: callable mapping ``(n, C, *window)`` to logits ``(n, K, *window)``; for a 2D
            network over a 3D image it receives ``(n, C, H, W)`` slices.
        patch_size: the network's window, ``network_dims`` values in voxels.
        network_dims: 2 or 3.
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.
        sw_batch_size: windows per network call (the first attempt's).
        cval: padding value (the normalised background), one per channel or one for all.
        device: the compute device (``torch.device``); default the image's device.
        precision: resolved precision ``fp32|bf16|fp16`` (autocast around the network).
        stitch_device: where the output buffer lives: ``same`` (the compute device), ``cpu``,
            or ``auto`` (the compute device, with the out-of-memory fallback).
        stitch_dtype: ``fp32`` (default), ``fp16``, or ``auto`` (fp16 on CUDA for large
            ``classes x voxels``).
        sigma_scale: Gaussian sigma as a fraction of the window size.
        progress: show a progress bar over the windows.
        memory: the fallback state to use and update (e.g. kept across scans); default a
            fresh one for ``stitch_device``.
        plan: run exactly this plan, without a fallback (the caller runs its own, around a
            larger attempt).

    Returns:
        ``(B, K, *spatial)`` logits on the stitching device, float32 (float16 with a half
        buffer), same spatial shape as ``image``.
    """
    memory = fallback_for(stitch_device, sw_batch_size, memory)
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

    padded, crop = _pad_to_window(torch.as_tensor(image).as_subclass(torch.Tensor).float(), roi, cvals)
    net: Callable[[torch.Tensor], torch.Tensor] = network
    if network_dims == 2 and image_dims == 3:
        net = _SliceWise(network)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            out = net(window)
        if isinstance(out, (tuple, list)):  # deep supervision: full resolution first
            out = out[0]
        return out.float()

    def attempt(p: mem.MemoryPlan) -> torch.Tensor:
        # no_grad, not inference_mode: callers update the result in place (softmax, ensembles)
        with torch.no_grad():
            out = stitch_windows(padded, predictor, gaussian_weight(roi, sigma_scale, device), plan=p,
                                 device=device, overlap=overlap, dtype=stitch_dtype, progress=progress)
        return out[(slice(None), slice(None), *crop)]

    if plan is not None:
        return attempt(plan)
    return mem.run_with_fallback(attempt, memory, int(padded[0, 0].numel()), device, "sliding window")
