"""The config's sections as typed, frozen dataclasses, each validating its values when built.

``model``, ``data`` (with ``data.augment``), ``train`` and ``infer``, and :class:`Config`
holding them; an invalid value is a :class:`~medresunet.errors.ConfigError` naming the
dotted key, what was expected and what was found. Reading YAML, presets and ``--set``
overrides is :mod:`medresunet.config`, which re-exports every name here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from medresunet.errors import ConfigError

NORMS = ("instance", "batch", "group", "none")
ACTIVATIONS = ("relu", "leakyrelu", "prelu", "gelu")
UPSAMPLES = ("transpose", "linear", "nearest")
DOWNSAMPLES = ("maxpool", "conv")
NORMALIZATIONS = ("auto", "ct", "zscore", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("poly", "cosine", "constant")
CACHES = ("memory", "disk", "none")
VAL_MODES = ("volume", "patch")
SAMPLINGS = ("posneg", "classes")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`medresunet.networks.ResidualUNet`.

    ``channels`` gives the feature maps per resolution level (the last is the
    bottleneck), so ``len(channels) - 1`` downsamplings; ``num_res_blocks`` is the
    number of residual blocks per encoder level (an int for all levels, or one per
    level). ``strides`` (one per downsampling, one value 1 or 2 per axis) and
    ``kernel_sizes`` (one per level, 1 or 3 per axis) make the network anisotropic;
    ``None`` is 2 and 3 along every axis. The network outputs logits; softmax is applied
    by the loss and at inference.
    """

    spatial_dims: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_res_blocks: int | tuple[int, ...] = 1
    norm: str = "instance"
    act: str = "relu"
    dropout: float = 0.0
    upsample: str = "transpose"
    downsample: str = "maxpool"
    bias: bool = True
    deep_supervision: bool = False
    strides: tuple[tuple[int, ...], ...] | None = None
    kernel_sizes: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        _check_choice("model.spatial_dims", self.spatial_dims, (2, 3))
        _check_per_axis("model.strides", self.strides, len(self.channels) - 1, self.spatial_dims, (1, 2))
        _check_per_axis("model.kernel_sizes", self.kernel_sizes, len(self.channels), self.spatial_dims, (1, 3))
        if len(self.channels) < 2 or any(c < 1 for c in self.channels):
            raise ConfigError(
                f"model.channels: expected at least two positive feature counts, got {list(self.channels)}"
            )
        blocks = (
            (self.num_res_blocks,) * len(self.channels)
            if isinstance(self.num_res_blocks, int)
            else tuple(self.num_res_blocks)
        )
        if len(blocks) != len(self.channels) or any(b < 1 for b in blocks):
            raise ConfigError(
                "model.num_res_blocks: expected a positive int or one positive int per level "
                f"({len(self.channels)} levels), got {self.num_res_blocks!r}"
            )
        _check_choice("model.norm", self.norm, NORMS)
        _check_choice("model.act", self.act, ACTIVATIONS)
        _check_choice("model.upsample", self.upsample, UPSAMPLES)
        _check_choice("model.downsample", self.downsample, DOWNSAMPLES)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: expected a value in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of training patches (probabilities per patch)."""

    enabled: bool = True
    flip_prob: float = 0.5
    rotate_prob: float = 0.2
    rotate_deg: float = 15.0
    scale_prob: float = 0.2
    scale_range: float = 0.15
    intensity_prob: float = 0.15
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    gamma_prob: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.15
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        for name in ("flip_prob", "rotate_prob", "scale_prob", "intensity_prob", "gamma_prob", "noise_prob"):
            _check_range(f"data.augment.{name}", getattr(self, name), 0.0, 1.0, "a probability in [0, 1]")
        _check_range("data.augment.rotate_deg", self.rotate_deg, 0.0, 180.0, "degrees in [0, 180]")
        _check_range("data.augment.scale_range", self.scale_range, 0.0, 0.99,
                     "a zoom fraction in [0, 0.99] (zoom 1 - range .. 1 + range)")
        for name in ("intensity_scale", "intensity_shift", "noise_std"):
            _check_range(f"data.augment.{name}", getattr(self, name), 0.0, math.inf, "a finite value >= 0")
        lo, hi = self.gamma_range
        if not (0.0 < lo <= hi and math.isfinite(hi)):
            raise ConfigError(f"data.augment.gamma_range: expected [low, high] with 0 < low <= high, "
                              f"got {[lo, hi]}")


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing and patch sampling.

    ``target_spacing`` is in mm in RAS axis order after reorientation; ``None`` means
    the median spacing of the training cases (measured once and stored in the
    checkpoint). ``patch_size`` is in voxels: three numbers for 3D models, two for 2D
    models (axial slices of the RAS-oriented volume). ``normalization`` ``auto`` takes
    each channel's modality from the manifest (CT -> ``ct``, anything else ->
    ``zscore``). ``ct_window`` (HU) replaces the percentile clip of CT. ``num_workers``
    ``null`` (auto) is no loader worker on the CPU and one per core but one (at most 8) on
    CUDA (``training.accelerator.loader_settings``). ``sampling`` says where the
    ``pos_fraction`` of patch centres that lie on a label go: ``posneg`` on any foreground
    voxel (a large organ gets most of them), ``classes`` spread equally over the foreground
    labels a case has (nnU-Net's foreground oversampling picks a class the same way), so a
    small organ is seen as often as a large one.
    """

    target_spacing: tuple[float, float, float] | None = None
    orientation: str = "RAS"
    normalization: str = "auto"
    ct_window: tuple[float, float] | None = None
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    crop_foreground: bool = True
    patch_size: tuple[int, ...] = (96, 96, 96)
    samples_per_volume: int = 2
    pos_fraction: float = 0.67
    sampling: str = "posneg"
    cache: str = "memory"
    cache_dir: str | None = None
    num_workers: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check_choice("data.normalization", self.normalization, NORMALIZATIONS)
        _check_choice("data.cache", self.cache, CACHES)
        _check_choice("data.sampling", self.sampling, SAMPLINGS)
        _check_orientation("data.orientation", self.orientation)
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"data.num_workers: expected >= 0, got {self.num_workers}")
        if self.target_spacing is not None and not all(0 < s < math.inf for s in self.target_spacing):
            raise ConfigError(f"data.target_spacing: expected positive mm values, got {list(self.target_spacing)}")
        if len(self.patch_size) not in (2, 3) or any(p < 1 for p in self.patch_size):
            raise ConfigError(f"data.patch_size: expected 2 or 3 positive voxel counts, got {list(self.patch_size)}")
        lo, hi = self.clip_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"data.clip_percentiles: expected 0 <= low < high <= 100, got {[lo, hi]}")
        if self.ct_window is not None and not self.ct_window[0] < self.ct_window[1]:
            raise ConfigError(f"data.ct_window: expected [low, high] with low < high, got {list(self.ct_window)}")
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise ConfigError(f"data.pos_fraction: expected a value in [0, 1], got {self.pos_fraction}")
        if self.samples_per_volume < 1:
            raise ConfigError(f"data.samples_per_volume: expected >= 1, got {self.samples_per_volume}")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop.

    ``steps_per_epoch`` ``None`` means one pass over the training cases' patches.
    ``precision`` ``auto`` is fp16 AMP on CUDA, bf16 autocast on CPUs that support it
    (checked at run time), else fp32. ``val_interval`` is in epochs. ``val_mode``
    ``patch`` validates during training on one patch-sized crop per validation case and
    label (a progress figure only), and on the whole volumes at the end (which writes
    ``best.pt``). ``fit_budget`` (with
    ``--max-minutes``): after each epoch the epochs are re-fitted to what the remaining
    budget allows at the measured epoch time, and the learning-rate decay with them.
    ``channels_last`` ``null`` (auto) is the channels-last layout on the CPU (measured faster
    there) and off on CUDA until measured (``training.accelerator.use_channels_last``).
    """

    epochs: int = 100
    steps_per_epoch: int | None = None
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_epochs: int = 1
    schedule: str = "poly"
    precision: str = "auto"
    channels_last: bool | None = None
    grad_clip: float = 12.0
    val_interval: int = 1
    val_overlap: float = 0.25
    seed: int = 0
    folds: int = 5
    fold: int = 0
    val_mode: str = "volume"
    fit_budget: bool = False

    def __post_init__(self) -> None:
        _check_choice("train.schedule", self.schedule, SCHEDULES)
        _check_choice("train.val_mode", self.val_mode, VAL_MODES)
        _check_choice("train.precision", self.precision, PRECISIONS)
        for name in ("epochs", "batch_size", "val_interval", "folds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: expected >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"train.steps_per_epoch: expected >= 1 or null, got {self.steps_per_epoch}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"train.lr: expected > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip"):
            _check_range(f"train.{name}", getattr(self, name), 0.0, math.inf,
                         "a finite value >= 0" + (" (0: no clipping)" if name == "grad_clip" else ""))
        if self.warmup_epochs < 0:
            raise ConfigError(f"train.warmup_epochs: expected >= 0, got {self.warmup_epochs}")
        if not 0 <= self.fold < self.folds:
            raise ConfigError(f"train.fold: expected 0 <= fold < folds={self.folds}, got {self.fold}")
        if not 0.0 <= self.val_overlap < 1.0:
            raise ConfigError(f"train.val_overlap: expected a value in [0, 1), got {self.val_overlap}")


@dataclass(frozen=True)
class InferConfig:
    """Defaults for sliding-window inference, stored in the checkpoint.

    ``min_component_ml`` removes connected components smaller than that volume (mL)
    per label; ``largest_component`` keeps only the largest component per label.
    """

    overlap: float = 0.5
    sw_batch_size: int = 2
    tta: bool = False
    precision: str = "auto"
    largest_component: bool = False
    min_component_ml: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("infer.precision", self.precision, PRECISIONS)
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"infer.overlap: expected a value in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ConfigError(f"infer.sw_batch_size: expected >= 1, got {self.sw_batch_size}")
        if self.min_component_ml < 0:
            raise ConfigError(f"infer.min_component_ml: expected >= 0 mL, got {self.min_component_ml}")


@dataclass(frozen=True)
class Config:
    """The whole configuration of a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def __post_init__(self) -> None:
        from medresunet.networks.stride import default_strides, patch_size_problem, total_stride

        want = self.model.spatial_dims
        if len(self.data.patch_size) != want:
            raise ConfigError(
                f"data.patch_size: a {want}D model needs {want} patch sizes, got {list(self.data.patch_size)}"
            )
        strides = self.model.strides or default_strides(len(self.model.channels) - 1, want)
        problem = patch_size_problem(self.data.patch_size, total_stride(strides, want))
        if problem:
            raise ConfigError(f"data.patch_size: {problem}")


def _check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}")


def _check_per_axis(key: str, value: Any, levels: int, dims: int, allowed: tuple[int, ...]) -> None:
    """``value`` None, or ``levels`` entries of ``dims`` values from ``allowed``."""
    if value is None:
        return
    ok = len(value) == levels and all(len(v) == dims and all(x in allowed for x in v) for v in value)
    if not ok:
        raise ConfigError(f"{key}: expected {levels} entries of {dims} values from {list(allowed)} "
                          f"(one per level, one per axis), got {[list(v) for v in value]}")


def _check_range(key: str, value: float, low: float, high: float, expected: str) -> None:
    if not low <= value <= high or math.isnan(value):
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


_AXIS_PAIRS = ("LR", "PA", "IS")


def _check_orientation(key: str, value: str) -> None:
    """Axis codes as MONAI's ``Orientationd`` takes them: one capital letter of L/R, P/A, I/S each."""
    pairs = sorted(next((i for i, p in enumerate(_AXIS_PAIRS) if c in p), -1) for c in value)
    if len(value) != 3 or pairs != [0, 1, 2]:
        raise ConfigError(f"{key}: expected three axis codes, one of L/R, one of P/A and one of I/S "
                          f"in capitals (e.g. 'RAS', 'LPS'), got {value!r}")
