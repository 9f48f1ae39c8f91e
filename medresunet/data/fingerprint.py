"""The dataset fingerprint: measure the training cases once, get a :class:`Preprocessing`.

Like nnU-Net's fingerprint: the target spacing is the per-axis median of the cases'
spacings after reorientation (unless the config gives one), with the thick axis of
strongly anisotropic data (> 3x the others) taking the 10th percentile instead of the
median so it is not blurred by a few thin-slice cases; CT channels get the 0.5 / 99.5
percentiles of the labelled foreground (or the config's window) as their clip, and
the mean / std of the clipped foreground voxels. Voxels are subsampled per case, so
fingerprinting a large dataset costs one read per CT case and no more.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from medresunet.config import DataConfig
from medresunet.data.preprocessing import ChannelNorm, Preprocessing
from medresunet.errors import ScanError

log = logging.getLogger(__name__)

ANISOTROPY_RATIO = 3.0        # thick axis > 3x the others: "anisotropic"
THICK_AXIS_PERCENTILE = 10.0
VOXELS_PER_CASE = 100_000     # foreground intensity samples per case and channel


def channel_schemes(channels: Sequence[str], normalization: str) -> tuple[str, ...]:
    """Normalisation scheme per channel: ``auto`` -> ``ct`` for CT, ``zscore`` otherwise."""
    if normalization == "auto":
        return tuple("ct" if str(m).strip().upper() == "CT" else "zscore" for m in channels)
    return tuple(normalization for _ in channels)


def reoriented_spacing(affine: np.ndarray, orientation: str = "RAS") -> tuple[float, float, float]:
    """Voxel spacing (mm) along the axes of the image after reorientation to ``orientation``.

    The spacing of voxel axis ``i`` is the norm of the affine's column ``i``; reorienting
    permutes the axes to the closest ``orientation`` axes (as MONAI's ``Orientation``).
    """
    affine = np.asarray(affine, dtype=np.float64)
    cols = np.linalg.norm(affine[:3, :3], axis=0)
    out = np.empty(3)
    for i, j in enumerate(_axis_permutation(affine, orientation)):
        out[j] = cols[i]
    return tuple(float(s) for s in out)


def _axis_permutation(affine: np.ndarray, orientation: str) -> list[int]:
    """Voxel axis ``i`` becomes axis ``perm[i]`` after reorientation to ``orientation``."""
    import nibabel.orientations as nio

    transform = nio.ornt_transform(nio.io_orientation(np.asarray(affine, np.float64)),
                                   nio.axcodes2ornt(tuple(orientation)))
    return [int(transform[i, 0]) for i in range(3)]


def reoriented_shape(shape, affine: np.ndarray, orientation: str = "RAS") -> tuple[int, int, int]:
    """Voxels along the axes after reorientation (a 2D scan is one slice thick)."""
    shape = tuple(int(s) for s in shape) + (1,) * (3 - len(shape))
    out = [0, 0, 0]
    for i, j in enumerate(_axis_permutation(affine, orientation)):
        out[j] = shape[i]
    return tuple(out)


def case_geometries(cases: Sequence, orientation: str = "RAS", quiet: bool = True
                    ) -> tuple[list[tuple[float, float, float]], list[tuple[int, int, int]]]:
    """Spacing (mm) and shape (voxels) of each case's first image, after reorientation (headers only)."""
    from medresunet.io import read_geometry

    spacings, shapes = [], []
    for case in tqdm(cases, desc="geometry", unit="case", disable=quiet):
        geom = read_geometry(case.images[0])
        spacings.append(reoriented_spacing(geom.affine, orientation))
        shapes.append(reoriented_shape(geom.shape, geom.affine, orientation))
    return spacings, shapes


def target_spacing_from(spacings: np.ndarray) -> tuple[float, float, float]:
    """Per-axis median of ``spacings`` ``(N, 3)`` mm; the 10th percentile on a thick axis.

    An axis is thick when its median is more than ``ANISOTROPY_RATIO`` times the
    smallest median; nnU-Net uses the same rule so that resampling anisotropic data
    does not invent (or discard) too many slices.
    """
    spacings = np.asarray(spacings, dtype=np.float64).reshape(-1, 3)
    target = np.median(spacings, axis=0)
    thick = int(np.argmax(target))
    others = np.delete(target, thick)
    if target[thick] > ANISOTROPY_RATIO * others.max():
        target[thick] = max(np.percentile(spacings[:, thick], THICK_AXIS_PERCENTILE), others.max())
    return tuple(float(s) for s in target)


def is_anisotropic(spacing: Sequence[float]) -> bool:
    """True when the largest spacing exceeds ``ANISOTROPY_RATIO`` times the smallest."""
    s = np.asarray(spacing, dtype=np.float64)
    return bool(s.max() > ANISOTROPY_RATIO * s.min())


def _sample_foreground(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    fg = np.flatnonzero(label.reshape(-1) > 0)
    if fg.size > VOXELS_PER_CASE:
        fg = rng.choice(fg, VOXELS_PER_CASE, replace=False)
    return image.reshape(-1)[fg].astype(np.float32)


def ct_norm(samples: np.ndarray, clip_percentiles: Sequence[float],
            window: Sequence[float] | None = None) -> ChannelNorm:
    """CT normalisation from foreground intensity samples (HU).

    Args:
        samples: 1D foreground intensities (HU).
        clip_percentiles: ``(low, high)`` percentiles giving the clip (ignored with ``window``).
        window: ``(low, high)`` HU clip replacing the percentiles.
    """
    samples = np.asarray(samples, dtype=np.float64).ravel()
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
    else:
        lo, hi = (float(v) for v in np.percentile(samples, list(clip_percentiles)))
        if hi <= lo:
            hi = lo + 1.0
    clipped = np.clip(samples, lo, hi)
    std = float(clipped.std())
    return ChannelNorm("ct", clip=(lo, hi), mean=float(clipped.mean()), std=std if std > 1e-6 else 1.0)


def _channel_norms(schemes: Sequence[str], channels: Sequence[str], samples: dict[int, list[np.ndarray]],
                   data_cfg: DataConfig) -> list[ChannelNorm]:
    """The normalisation of each channel; a CT channel's from its sampled foreground intensities."""
    norms = []
    for c, scheme in enumerate(schemes):
        if scheme != "ct":
            norms.append(ChannelNorm(scheme))
            continue
        values = np.concatenate(samples[c]) if samples[c] else np.empty(0, np.float32)
        if values.size == 0:
            raise ValueError(f"fingerprint: channel {c} ({channels[c]}) is CT but no training case has "
                             "labelled foreground voxels to measure intensities on; give labels or "
                             "set data.normalization to zscore")
        norms.append(ct_norm(values, data_cfg.clip_percentiles, data_cfg.ct_window))
        log.info("channel %d (%s): clip %s, mean %.2f, std %.2f", c, channels[c], norms[-1].clip,
                 norms[-1].mean, norms[-1].std)
    return norms


def fingerprint(cases: Sequence, channels: Sequence[str], data_cfg: DataConfig,
                spatial_dims: int, quiet: bool = False, seed: int = 0) -> Preprocessing:
    """Measure the training cases and return the :class:`Preprocessing` to train with.

    Reads each case's geometry (header only) for the spacing; cases with a CT channel
    (and a label) are read once more for foreground intensities, subsampled to
    ``VOXELS_PER_CASE`` voxels per case and channel.

    Args:
        cases: :class:`medresunet.manifest.Case` objects (``images`` one path per channel,
            ``label`` a path or None).
        channels: modality per input channel, e.g. ``("CT",)`` or ``("T1", "T2")``.
        data_cfg: target spacing, normalisation, CT window / percentiles, crop, patch size.
        spatial_dims: 2 or 3 (the model's).
        quiet: no progress bar.
        seed: seed of the voxel subsampling.

    Raises:
        ScanError: a file cannot be read (from :mod:`medresunet.io`).
        ValueError: no cases, or CT statistics requested but no labelled foreground found.
    """
    from medresunet.io import read_geometry, read_volume

    cases = list(cases)
    if not cases:
        raise ValueError("fingerprint: no training cases given")
    schemes = channel_schemes(channels, data_cfg.normalization)
    need_ct = [c for c, s in enumerate(schemes) if s == "ct"]
    need_intensity = bool(need_ct)  # the mean / std are measured even with a CT window
    rng = np.random.default_rng(seed)
    spacings: list[tuple[float, float, float]] = []
    samples: dict[int, list[np.ndarray]] = {c: [] for c in need_ct}
    for case in tqdm(cases, desc="fingerprint", unit="case", disable=quiet):
        geom = read_geometry(case.images[0])
        spacings.append(reoriented_spacing(geom.affine, data_cfg.orientation))
        if not need_intensity or case.label is None:
            continue
        label, _ = read_volume(case.label)
        for c in need_ct:
            image, _ = read_volume(case.images[c])
            if image.shape != label.shape:
                raise ScanError(f"{case.images[c]}: image shape {image.shape} differs from its label "
                                f"{case.label} shape {label.shape}")
            samples[c].append(_sample_foreground(image, label, rng))
            del image
    target = tuple(data_cfg.target_spacing) if data_cfg.target_spacing is not None else (
        target_spacing_from(np.array(spacings)))
    norms = _channel_norms(schemes, channels, samples, data_cfg)
    log.info("target spacing %s mm (%s)", target,
             "from config" if data_cfg.target_spacing is not None else "median of the training cases")
    return Preprocessing(
        orientation=data_cfg.orientation,
        target_spacing=target,
        normalization=tuple(norms),
        crop_foreground=data_cfg.crop_foreground,
        patch_size=tuple(data_cfg.patch_size),
        spatial_dims=spatial_dims,
    )
