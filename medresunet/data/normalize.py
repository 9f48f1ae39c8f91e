"""Intensity normalisation and foreground masks as MONAI dict transforms.

Schemes (one :class:`~medresunet.data.preprocessing.ChannelNorm` per channel):

* ``ct``: clip to ``clip`` (HU), then ``(x - mean) / std`` with the training set's
  foreground statistics. Air and everything below ``clip[0]`` become
  ``(clip[0] - mean) / std``, the channel's background value.
* ``zscore`` (MR and other modalities without absolute units): mean and std over a
  *robust* foreground mask of the image itself: Otsu's threshold on a Gaussian-smoothed
  copy. "Non-zero" is not a mask: a noisy MR background is non-zero everywhere and
  would pull the statistics towards the noise. The normalised level of the background
  (median of the normalised voxels outside the mask) is recorded in the image's meta
  (``BACKGROUND_META_KEY``, one float per channel) so padding can use it.
* ``none``: identity.

Everything runs in float32, in place where the input is not needed afterwards
(no float64 copies of a whole volume).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medresunet.data.preprocessing import ChannelNorm

BACKGROUND_META_KEY = "medresunet_background"
CT_BODY_HU = -500.0          # crop mask of CT: voxels above this (body, not air)
_SAMPLE = 200_000            # voxels used for thresholds and background statistics
_EPS = 1e-6


def _sample(values: np.ndarray, n: int = _SAMPLE, seed: int = 0) -> np.ndarray:
    """A deterministic random subsample of a flat array (all of it when small)."""
    if values.size <= n:
        return values
    idx = np.random.default_rng(seed).integers(0, values.size, n)
    return values[idx]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (between-class variance maximised over a histogram)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))]) if bins > 1 else lo


def robust_foreground(channel: np.ndarray | torch.Tensor, size: int = 3) -> np.ndarray:
    """Robust foreground mask of one channel ``(*spatial)``: Otsu on a smoothed copy.

    Smoothing (mean over ``size`` voxels per axis, cheaper than a Gaussian) removes most background noise before the
    threshold; Otsu then separates the signal from the background. A voxel is
    foreground when both its smoothed and its own intensity exceed the threshold. Falls back to the
    whole image when the image is constant or the mask would be empty.

    Returns:
        bool array ``(*spatial)``.
    """
    from scipy.ndimage import uniform_filter

    arr = channel.detach().cpu().numpy() if isinstance(channel, torch.Tensor) else np.asarray(channel)
    smooth = uniform_filter(arr.astype(np.float32, copy=False), size=size)
    t = otsu_threshold(_sample(smooth.ravel()))
    # Smoothed AND raw above the threshold: no noise speckles outside, no blurred rim
    # of background voxels around the edge.
    mask = (smooth > t) & (arr > t)
    if not mask.any():
        mask[...] = True
    return mask


def channel_foreground(channel: np.ndarray | torch.Tensor, norm: ChannelNorm) -> np.ndarray:
    """Foreground (crop) mask of one raw channel ``(*spatial)`` for its scheme.

    ``ct``: body, voxels above ``CT_BODY_HU`` (-500 HU); ``zscore``: the robust Otsu
    mask; ``none``: voxels above the image minimum.
    """
    arr = channel.detach().cpu().numpy() if isinstance(channel, torch.Tensor) else np.asarray(channel)
    if norm.scheme == "ct":
        return arr > CT_BODY_HU
    if norm.scheme == "zscore":
        return robust_foreground(arr)
    return arr > arr.min()


class ForegroundSelector:
    """``select_fn`` for ``CropForegroundd``: per-channel foreground masks ``(C, *spatial)``.

    A picklable callable (DataLoader workers, PersistentDataset).
    """

    def __init__(self, norms: Sequence[ChannelNorm]) -> None:
        self.norms = tuple(norms)

    def __call__(self, img: torch.Tensor | np.ndarray) -> np.ndarray:
        masks = [channel_foreground(img[c], self.norms[min(c, len(self.norms) - 1)])
                 for c in range(img.shape[0])]
        out = np.stack(masks, axis=0)
        return torch.as_tensor(out) if isinstance(img, torch.Tensor) else out


def normalize_channel(x: torch.Tensor, norm: ChannelNorm) -> float:
    """Normalise one float32 channel ``(*spatial)`` in place; return its background value.

    Returns:
        The normalised background level: ``(clip[0] - mean) / std`` for ``ct``, the
        median of the normalised voxels outside the robust mask for ``zscore`` (the
        image minimum when the mask covers everything), ``0.0`` for ``none``.
    """
    if norm.scheme == "ct":
        lo, hi = norm.clip
        x.clamp_(lo, hi).sub_(norm.mean).div_(norm.std)
        return (lo - norm.mean) / norm.std
    if norm.scheme == "zscore":
        mask = torch.as_tensor(robust_foreground(x), device=x.device)
        fg = x[mask]
        mean = float(fg.mean(dtype=torch.float64))
        std = float(fg.std().clamp_min(0)) if fg.numel() > 1 else 0.0
        del fg
        x.sub_(mean).div_(std if std > _EPS else 1.0)
        step = max(1, x.numel() // _SAMPLE)          # strided sample: no full-size copy
        flat_x, flat_m = x.reshape(-1)[::step], mask.reshape(-1)[::step]
        bg = flat_x[~flat_m]
        if bg.numel() == 0:
            bg = x[~mask]
        if bg.numel() == 0:
            return float(x.min())
        return float(bg.median())
    return 0.0


class NormalizeChannelsd(MapTransform):
    """Per-channel intensity normalisation of ``(C, *spatial)`` images (see module doc).

    Args:
        keys: image keys (labels must not be listed).
        norms: one :class:`ChannelNorm` per channel.

    The output is float32; the per-channel background values go to
    ``img.meta[BACKGROUND_META_KEY]`` (a list of floats) when the image is a MetaTensor.
    """

    def __init__(self, keys: KeysCollection, norms: Sequence[ChannelNorm],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.norms = tuple(norms)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, torch.Tensor):
                img = MetaTensor(torch.as_tensor(np.asarray(img)))
            if img.dtype != torch.float32:
                img = img.to(torch.float32)
            if img.shape[0] != len(self.norms):
                raise ValueError(f"{key}: image has {img.shape[0]} channels, the preprocessing "
                                 f"expects {len(self.norms)}")
            backgrounds = [normalize_channel(img[c], norm) for c, norm in enumerate(self.norms)]
            if isinstance(img, MetaTensor):
                img.meta[BACKGROUND_META_KEY] = backgrounds
            d[key] = img
        return d


class BackgroundPadd(MapTransform):
    """Pad images (constant = per-channel background value) and labels (0) to a minimum size.

    Pads symmetrically so every spatial axis is at least ``spatial_size``. Image
    channels take the recorded per-image background (``BACKGROUND_META_KEY``) or
    ``fallback[c]``; labels are padded with 0 (background class). Not invertible
    (used on training patches only).
    """

    def __init__(self, image_keys: KeysCollection, label_keys: KeysCollection,
                 spatial_size: Sequence[int], fallback: Sequence[float]) -> None:
        keys = tuple(np.atleast_1d(image_keys)) + tuple(np.atleast_1d(label_keys))
        super().__init__(keys, allow_missing_keys=True)
        self.image_keys = tuple(np.atleast_1d(image_keys))
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.fallback = tuple(float(v) for v in fallback)

    def _pad_widths(self, shape: Sequence[int]) -> list[tuple[int, int]]:
        widths = []
        for n, want in zip(shape, self.spatial_size, strict=False):
            extra = max(want - n, 0)
            widths.append((extra // 2, extra - extra // 2))
        return widths

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        from monai.transforms import BorderPad

        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            widths = self._pad_widths(img.shape[1:])
            if not any(a or b for a, b in widths):
                continue
            border = [w for pair in widths for w in pair]
            if key in self.image_keys:
                meta = img.meta if isinstance(img, MetaTensor) else {}
                values = meta.get(BACKGROUND_META_KEY, self.fallback)
                chans = [BorderPad(border, mode="constant", value=float(values[min(c, len(values) - 1)]))(
                    img[c:c + 1]) for c in range(img.shape[0])]
                d[key] = torch.cat(chans, dim=0) if len(chans) > 1 else chans[0]
            else:
                d[key] = BorderPad(border, mode="constant", value=0)(img)
        return d
