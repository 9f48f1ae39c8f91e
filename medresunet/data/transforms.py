"""MONAI dict-transform chains built from a :class:`Preprocessing` (train / val / inference).

Deterministic preprocessing (:func:`preprocess_transforms`), on ``{"image": [path per
channel], "label": path}``:

1. load with the project's readers (:func:`medresunet.io.make_loader`), channels
   stacked on a new first axis -> ``(C, *spatial)`` float32 MetaTensor, affine -> RAS mm;
2. ``EnsureChannelFirstd``; ``Orientationd(prep.orientation)``;
3. ``Spacingd(prep.target_spacing)``: bilinear for images, nearest for labels; a 2D model
   keeps the slice thickness (third axis not resampled);
4. ``CropForegroundd`` on the raw intensities (CT: body > -500 HU; zscore: robust Otsu
   mask; none: above the minimum), margin ``CROP_MARGIN`` voxels, ``allow_smaller=True``
   (never pads), recorded so ``Invertd`` undoes it;
5. intensity normalisation per channel (:class:`~medresunet.data.normalize.NormalizeChannelsd`).

Orientation, spacing and crop are tracked in ``applied_operations``; the intensity step
is not spatial and needs no inverse. All padding of a normalised image uses
:func:`background_value`, never 0 (after z-scoring 0 is mean tissue intensity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from medresunet.config import AugmentConfig, DataConfig
from medresunet.data.fingerprint import is_anisotropic
from medresunet.data.normalize import (
    BACKGROUND_META_KEY,
    BackgroundPadd,
    ForegroundSelector,
    NormalizeChannelsd,
)
from medresunet.data.preprocessing import Preprocessing

IMAGE, LABEL = "image", "label"
CROP_MARGIN = 4                # voxels kept around the foreground box
ZSCORE_BACKGROUND = -3.0       # fallback background of a z-scored channel (see background_value)


def _is_label(key: str) -> bool:
    return key == LABEL or key.startswith(LABEL)


def _pixdim(prep: Preprocessing) -> tuple[float, float, float]:
    sx, sy, sz = prep.target_spacing
    # A 2D model works on slices: its third axis keeps the scan's own thickness
    # (a non-positive pixdim tells Spacing to keep the original spacing).
    return (sx, sy, -1.0) if prep.spatial_dims == 2 else (sx, sy, sz)


def preprocess_transforms(prep: Preprocessing, keys: Sequence[str] = (IMAGE, LABEL),
                          series_uid: str | None = None) -> list:
    """Deterministic load + preprocessing chain (see the module doc).

    Args:
        prep: the preprocessing to reproduce.
        keys: dict keys; ``"image"`` (a list of paths, one per channel) is required and
            the source of the crop box; keys starting with ``"label"`` are resampled
            nearest and not normalised. Missing label keys are skipped.
        series_uid: SeriesInstanceUID to read from DICOM folders with several series.

    Returns:
        list of MONAI dict transforms producing ``{"image": MetaTensor (C, X, Y, Z)
        float32 normalised, "label": MetaTensor (1, X, Y, Z) float32}`` on the
        reoriented, resampled, cropped grid.
    """
    from monai.transforms import CropForegroundd, EnsureChannelFirstd, Orientationd, Spacingd

    from medresunet.io import make_loader

    keys = tuple(keys)
    if IMAGE not in keys:
        raise ValueError(f"preprocess_transforms: keys must include 'image', got {keys}")
    modes = tuple("nearest" if _is_label(k) else "bilinear" for k in keys)
    chain = [
        make_loader(keys, series_uid=series_uid, allow_missing_keys=True),
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        Orientationd(keys, axcodes=prep.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S")),
                     allow_missing_keys=True),
        Spacingd(keys, pixdim=_pixdim(prep), mode=modes, padding_mode="border",
                 dtype=np.float32, allow_missing_keys=True),
    ]
    if prep.crop_foreground:
        chain.append(CropForegroundd(keys, source_key=IMAGE, select_fn=ForegroundSelector(prep.normalization),
                                     margin=CROP_MARGIN, allow_smaller=True, allow_missing_keys=True))
    chain.append(NormalizeChannelsd(IMAGE, prep.normalization))
    return chain


def background_value(prep: Preprocessing, channel: int, image: torch.Tensor | None = None) -> float:
    """The normalised intensity of "no object" for one channel: the padding value.

    * ``ct``: ``(clip_low - mean) / std``, exactly what air (and anything below the
      clip) becomes; the same for every image.
    * ``zscore``: image dependent. Given ``image`` (a preprocessed MetaTensor ``(C, ...)``
      from these transforms), the value recorded at normalisation: the median normalised
      intensity outside the robust foreground mask, i.e. the image's own background.
      Without it, ``ZSCORE_BACKGROUND`` (-3.0): three foreground standard deviations
      below the foreground mean, below ~99.9% of the foreground, which is where a
      no-signal MR background lands for typical contrasts (mean / std of 2 to 4).
    * ``none``: 0.0 (raw intensity of no signal).

    Args:
        prep: the preprocessing.
        channel: input channel index.
        image: optional preprocessed image carrying ``meta[BACKGROUND_META_KEY]``.
    """
    if not 0 <= channel < prep.n_channels:
        raise ValueError(f"background_value: channel {channel} out of range for {prep.n_channels} channels")
    meta = getattr(image, "meta", None) or {}
    recorded = meta.get(BACKGROUND_META_KEY)
    if recorded is not None:
        values = recorded.tolist() if isinstance(recorded, torch.Tensor) else list(recorded)
        if len(values) > channel:
            value = values[channel]
            return float(value.flatten()[0] if isinstance(value, torch.Tensor) else value)
    norm = prep.normalization[channel]
    if norm.scheme == "ct":
        return (norm.clip[0] - norm.mean) / norm.std
    if norm.scheme == "zscore":
        return ZSCORE_BACKGROUND
    return 0.0


def _patch_3d(prep: Preprocessing) -> tuple[int, int, int]:
    """Patch size in the 3D volume: ``(H, W, 1)`` slices for a 2D model."""
    return (*prep.patch_size, 1) if prep.spatial_dims == 2 else tuple(prep.patch_size)


def augment_transforms(prep: Preprocessing, aug: AugmentConfig) -> list:
    """Random augmentation of ``{"image", "label"}`` patches ``(C, *patch_size)``.

    Flips on every axis, small rotations (in-plane only for 2D models and, in 3D,
    about the thick axis only when the target spacing is anisotropic), isotropic
    scaling, intensity scale / shift, gamma (statistics kept) and Gaussian noise.
    Out-of-patch samples take the border value for images and 0 for labels.
    """
    from monai.transforms import (
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianNoised,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandZoomd,
    )

    if not aug.enabled:
        return []
    keys = (IMAGE, LABEL)
    dims = prep.spatial_dims
    out = [RandFlipd(keys, prob=aug.flip_prob, spatial_axis=axis) for axis in range(dims)]
    rad = math.radians(aug.rotate_deg)
    if aug.rotate_prob > 0 and rad > 0:
        if dims == 2:
            ranges = (rad, 0.0, 0.0)
        elif is_anisotropic(prep.target_spacing):
            thick = int(np.argmax(prep.target_spacing))
            ranges = tuple(rad if a == thick else 0.0 for a in range(3))
        else:
            ranges = (rad, rad, rad)
        out.append(RandRotated(keys, range_x=ranges[0], range_y=ranges[1], range_z=ranges[2],
                               prob=aug.rotate_prob, mode=("bilinear", "nearest"),
                               padding_mode=("border", "zeros")))
    if aug.scale_prob > 0 and aug.scale_range > 0:
        out.append(RandZoomd(keys, prob=aug.scale_prob, min_zoom=1.0 - aug.scale_range,
                             max_zoom=1.0 + aug.scale_range,
                             mode=("bilinear" if dims == 2 else "trilinear", "nearest"),
                             align_corners=(True, None), padding_mode=("edge", "constant")))
    out += [
        RandScaleIntensityd(IMAGE, factors=aug.intensity_scale, prob=aug.intensity_prob),
        RandShiftIntensityd(IMAGE, offsets=aug.intensity_shift, prob=aug.intensity_prob),
        RandAdjustContrastd(IMAGE, gamma=tuple(aug.gamma_range), prob=aug.gamma_prob, retain_stats=True),
        RandGaussianNoised(IMAGE, prob=aug.noise_prob, std=aug.noise_std),
    ]
    return out


def patch_sampler(keys: tuple[str, str], patch: tuple[int, ...], data_cfg: DataConfig,
                  n_classes: int | None = None):
    """The random patch crop of ``data_cfg.sampling`` (``pos_fraction`` of the centres on a label).

    ``posneg``: MONAI ``RandCropByPosNegLabeld`` (centres on any foreground voxel or on
    background). ``classes``: ``RandCropByLabelClassesd`` with ratio ``1 - pos_fraction``
    for the background and ``pos_fraction / (n_classes - 1)`` for each label (a label a case
    lacks gets no centre), so it needs ``n_classes`` (background included).
    """
    from monai.transforms import RandCropByLabelClassesd, RandCropByPosNegLabeld

    pos, n = float(data_cfg.pos_fraction), data_cfg.samples_per_volume
    if data_cfg.sampling == "posneg":
        return RandCropByPosNegLabeld(keys, label_key=LABEL, spatial_size=patch, pos=pos, neg=1.0 - pos,
                                      num_samples=n)
    if n_classes is None or n_classes < 2:
        raise ValueError(f"data.sampling 'classes' needs the number of classes (>= 2), got {n_classes}")
    ratios = [1.0 - pos] + [pos / (n_classes - 1)] * (n_classes - 1)
    return RandCropByLabelClassesd(keys, label_key=LABEL, spatial_size=patch, ratios=ratios,
                                   num_classes=n_classes, num_samples=n, warn=False)


def train_transforms(prep: Preprocessing, data_cfg: DataConfig, n_classes: int | None = None) -> tuple[list, list]:
    """Training chain split into its cacheable and random parts.

    Deterministic: :func:`preprocess_transforms` then padding to at least the patch
    (images with their background value, labels with 0). Random: label-balanced
    patches (:func:`patch_sampler`: ``pos_fraction`` of the centres on a label,
    ``samples_per_volume`` per volume), for a 2D model ``(H, W, 1)`` slabs
    squeezed to ``(C, H, W)``, augmentation per ``data_cfg.augment``, and plain float32
    tensors (meta dropped) for the batch. ``n_classes`` (background included) is needed
    by ``data.sampling: classes``.

    Returns:
        ``(deterministic, random)`` lists; each sample is ``{"image": (C, *patch_size),
        "label": (1, *patch_size)}`` and one input dict gives a list of
        ``samples_per_volume`` samples (collate with ``monai.data.list_data_collate``).
    """
    from monai.transforms import EnsureTyped, SqueezeDimd

    patch = _patch_3d(prep)
    keys = (IMAGE, LABEL)
    fallback = [background_value(prep, c) for c in range(prep.n_channels)]
    deterministic = preprocess_transforms(prep, keys) + [BackgroundPadd(IMAGE, LABEL, patch, fallback)]
    random = [patch_sampler(keys, patch, data_cfg, n_classes)]
    if prep.spatial_dims == 2:
        random.append(SqueezeDimd(keys, dim=-1))
    random += augment_transforms(prep, data_cfg.augment)
    random.append(EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return deterministic, random


def val_transforms(prep: Preprocessing) -> list:
    """Deterministic preprocessing of whole ``{"image", "label"}`` volumes (validation).

    The image stays a MetaTensor ``(C, X, Y, Z)`` so :func:`background_value` can read
    its recorded background; sliding-window validation runs in this space.
    """
    return preprocess_transforms(prep, (IMAGE, LABEL))


def inference_transforms(prep: Preprocessing, series_uid: str | None = None):
    """``Compose`` over ``{"image": [path per channel]}`` -> ``{"image": MetaTensor (C, X, Y, Z)}``.

    Invertible: ``Invertd(keys="pred", transform=<this Compose>, orig_keys="image")``
    maps a prediction ``(K, X, Y, Z)`` on the preprocessed grid back to the scan's own
    grid (crop, spacing and orientation undone in that order).
    """
    from monai.transforms import Compose

    return Compose(preprocess_transforms(prep, (IMAGE,), series_uid=series_uid))
