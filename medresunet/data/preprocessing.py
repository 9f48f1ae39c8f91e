"""The preprocessing a model was trained with: plain, frozen, checkpoint-safe.

A :class:`Preprocessing` is measured once from the training cases
(:func:`medresunet.data.fingerprint.fingerprint`), stored in the checkpoint with
:meth:`Preprocessing.to_dict` and read back with :meth:`Preprocessing.from_dict`; it is
all that :mod:`medresunet.data.transforms` needs to rebuild the exact transform chain at
inference time, without a config file. Imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medresunet.errors import CheckpointError

SCHEMES = ("ct", "zscore", "none")
_AXIS_PAIRS = ("LR", "PA", "IS")


@dataclass(frozen=True)
class ChannelNorm:
    """Intensity normalisation of one input channel.

    Attributes:
        scheme: ``"ct"`` (clip to ``clip`` in HU, then ``(x - mean) / std`` with the
            training set's foreground statistics), ``"zscore"`` (per image: mean and std
            over a robust foreground mask, see :mod:`medresunet.data.normalize`) or
            ``"none"`` (identity).
        clip: ``(low, high)`` intensity bounds (HU for CT); required for ``"ct"``.
        mean: mean of the clipped training foreground; required for ``"ct"``.
        std: standard deviation of the clipped training foreground (> 0); required for ``"ct"``.
    """

    scheme: str
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"ChannelNorm.scheme: expected one of {list(SCHEMES)}, got {self.scheme!r}")
        if self.clip is not None:
            lo, hi = (float(v) for v in self.clip)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"ChannelNorm.clip: expected finite (low, high) with low < high, got {self.clip}")
            object.__setattr__(self, "clip", (lo, hi))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"ChannelNorm.{name}: expected a finite number, got {value}")
                object.__setattr__(self, name, value)
        if self.std is not None and self.std <= 0:
            raise ValueError(f"ChannelNorm.std: expected > 0, got {self.std}")
        if self.scheme == "ct" and (self.clip is None or self.mean is None or self.std is None):
            raise ValueError(f"ChannelNorm: scheme 'ct' needs clip, mean and std, got {self}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists and floats only)."""
        return {
            "scheme": self.scheme,
            "clip": None if self.clip is None else [self.clip[0], self.clip[1]],
            "mean": self.mean,
            "std": self.std,
        }


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a scan into the network's input space.

    Attributes:
        orientation: axis codes after reorientation, e.g. ``"RAS"``.
        target_spacing: voxel spacing in mm along the reoriented axes (x, y, z). A 2D
            model (``spatial_dims == 2``) resamples only the first two axes; its slices
            (the third axis) keep their own thickness.
        normalization: one :class:`ChannelNorm` per input channel.
        crop_foreground: crop each volume to its foreground bounding box (+ margin).
        patch_size: training patch (and sliding-window ROI) in voxels; 3 numbers for 3D
            models, 2 for 2D models.
        spatial_dims: 2 (slice-wise model on axial slices) or 3.
    """

    orientation: str
    target_spacing: tuple[float, float, float]
    normalization: tuple[ChannelNorm, ...]
    crop_foreground: bool
    patch_size: tuple[int, ...]
    spatial_dims: int

    def __post_init__(self) -> None:
        orient = str(self.orientation).upper()
        if len(orient) != 3 or sorted(_axis_pair(c) for c in orient) != [0, 1, 2]:
            raise ValueError(f"Preprocessing.orientation: expected three axis codes such as 'RAS', "
                             f"got {self.orientation!r}")
        object.__setattr__(self, "orientation", orient)
        spacing = tuple(float(s) for s in self.target_spacing)
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"Preprocessing.target_spacing: expected 3 positive mm values, got {self.target_spacing}")
        object.__setattr__(self, "target_spacing", spacing)
        norms = tuple(self.normalization)
        if not norms or not all(isinstance(n, ChannelNorm) for n in norms):
            raise ValueError("Preprocessing.normalization: expected one ChannelNorm per input channel, "
                             f"got {self.normalization!r}")
        object.__setattr__(self, "normalization", norms)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"Preprocessing.spatial_dims: expected 2 or 3, got {self.spatial_dims!r}")
        patch = tuple(int(p) for p in self.patch_size)
        if len(patch) != self.spatial_dims or any(p < 1 for p in patch):
            raise ValueError(f"Preprocessing.patch_size: a {self.spatial_dims}D model needs "
                             f"{self.spatial_dims} positive voxel counts, got {self.patch_size}")
        object.__setattr__(self, "patch_size", patch)
        object.__setattr__(self, "crop_foreground", bool(self.crop_foreground))

    @property
    def n_channels(self) -> int:
        """Number of input channels."""
        return len(self.normalization)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (str, bool, int, float, lists) for the checkpoint."""
        return {
            "orientation": self.orientation,
            "target_spacing": list(self.target_spacing),
            "normalization": [n.to_dict() for n in self.normalization],
            "crop_foreground": self.crop_foreground,
            "patch_size": list(self.patch_size),
            "spatial_dims": self.spatial_dims,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            CheckpointError: ``d`` is not a mapping, lacks or has unknown keys, or holds
                invalid values (the message names the key).
        """
        if not isinstance(d, Mapping):
            raise CheckpointError(f"checkpoint 'preprocessing': expected a dict, got {type(d).__name__}")
        fields = ("orientation", "target_spacing", "normalization", "crop_foreground", "patch_size",
                  "spatial_dims")
        missing = [k for k in fields if k not in d]
        unknown = sorted(str(k) for k in d if k not in fields)
        if missing or unknown:
            raise CheckpointError(f"checkpoint 'preprocessing': missing keys {missing}, unknown keys {unknown}; "
                                  "expected a dict written by Preprocessing.to_dict()")
        try:
            norms_in = d["normalization"]
            if isinstance(norms_in, (str, bytes)) or not isinstance(norms_in, (list, tuple)):
                raise ValueError(f"normalization: expected a list, got {type(norms_in).__name__}")
            norms = tuple(_norm_from_dict(n, i) for i, n in enumerate(norms_in))
            for key in ("target_spacing", "patch_size"):
                if not isinstance(d[key], (list, tuple)):
                    raise ValueError(f"{key}: expected a list, got {d[key]!r}")
            if not isinstance(d["crop_foreground"], bool):
                raise ValueError(f"crop_foreground: expected true/false, got {d['crop_foreground']!r}")
            if isinstance(d["spatial_dims"], bool) or not isinstance(d["spatial_dims"], int):
                raise ValueError(f"spatial_dims: expected 2 or 3, got {d['spatial_dims']!r}")
            if not isinstance(d["orientation"], str):
                raise ValueError(f"orientation: expected a string, got {d['orientation']!r}")
            return cls(
                orientation=d["orientation"],
                target_spacing=tuple(_number(v, "target_spacing") for v in d["target_spacing"]),
                normalization=norms,
                crop_foreground=d["crop_foreground"],
                patch_size=tuple(_integer(v, "patch_size") for v in d["patch_size"]),
                spatial_dims=d["spatial_dims"],
            )
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint 'preprocessing' is invalid: {err}") from err


def _axis_pair(code: str) -> int:
    for i, pair in enumerate(_AXIS_PAIRS):
        if code in pair:
            return i
    return -1


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key}: expected numbers, got {value!r}")
    return float(value)


def _integer(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected integers, got {value!r}")
    return value


def _norm_from_dict(d: Any, index: int) -> ChannelNorm:
    where = f"normalization[{index}]"
    if not isinstance(d, Mapping) or set(d) - {"scheme", "clip", "mean", "std"} or "scheme" not in d:
        raise ValueError(f"{where}: expected a dict with keys scheme, clip, mean, std, got {d!r}")
    clip = d.get("clip")
    if clip is not None:
        if not isinstance(clip, (list, tuple)) or len(clip) != 2:
            raise ValueError(f"{where}.clip: expected [low, high] or null, got {clip!r}")
        clip = tuple(_number(v, f"{where}.clip") for v in clip)
    mean, std = d.get("mean"), d.get("std")
    try:
        return ChannelNorm(
            scheme=d["scheme"],
            clip=clip,
            mean=None if mean is None else _number(mean, f"{where}.mean"),
            std=None if std is None else _number(std, f"{where}.std"),
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
