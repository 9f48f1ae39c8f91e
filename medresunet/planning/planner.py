"""The planner: dataset fingerprint + compute target -> a :class:`Plan` (a config with reasons).

Pure functions, no IO. The steps, for a dataset of cases with known spacings and shapes:

1. target spacing: the per-axis median; a thick axis (> 3x the others) takes its 10th
   percentile (:func:`medresunet.data.fingerprint.target_spacing_from`);
2. 2D or 3D: 2D (axial slices) when the resampled volumes have fewer than
   :data:`MIN_3D_SLICES` slices along the last axis, else 3D;
3. candidates: patches following the median resampled shape's aspect, from small to the
   whole median volume, each with its pooling, kernels, widths and cost estimates
   (:func:`candidates`);
4. the choice: with a time budget, the largest candidate whose measured step time still
   gives :data:`MIN_STEPS` steps in the budget (the probe in
   :mod:`medresunet.training.probe` measures them); without one, the largest that fits
   the memory target (a GPU) or :data:`CPU_GFLOP_PER_STEP` (a CPU);
5. the schedule: fixed steps per epoch, epochs that fill the budget, patch validation on
   at most :data:`VAL_FRACTION` of it, the learning rate decaying over those steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medresunet.config import Config, config_from_dict
from medresunet.data.fingerprint import is_anisotropic, target_spacing_from
from medresunet.planning.topology import (
    Topology,
    forward_gflop,
    topology_for,
    training_memory_gb,
    widths,
)

MIN_3D_SLICES = 16           # fewer resampled slices than this along the last axis: 2D
MIN_STEPS = 1000             # a budget plan trains at least this many steps (when it can)
FIXED_COST_TOLERANCE = 1.3   # none can: a candidate this much slower than the smallest is still taken
TRAIN_FRACTION = 0.92        # of the budget, for training steps (>= 90%)
VAL_FRACTION = 0.05          # of the budget, at most, for the patch validations
DATA_OVERHEAD = 1.05         # a real step (batching, logging) vs a probed one (network + data)
TARGET_EPOCHS = 20           # epochs of a budget run (the steps per epoch follow)
CPU_GFLOP_PER_STEP = 40.0    # a CPU without a budget: the largest candidate under this
CPU_MEMORY_GB = 6.0          # activation memory a CPU candidate may use
GPU_MEMORY_FRACTION = 0.8    # of the GPU's memory, for a training step
POS_FRACTION = 0.67          # of the patch centres on a label, spread equally over the labels


@dataclass(frozen=True)
class DatasetFingerprint:
    """What the planner knows of a dataset (measured by :mod:`medresunet.data.fingerprint`).

    Attributes:
        spacings: per training case, voxel size (mm) along the RAS-reoriented axes.
        shapes: per training case, voxels along the same axes (a 2D scan has 1 slice).
        channels: modality per input channel, e.g. ``("CT",)``.
        n_classes: output classes, background included.
        n_val_cases: validation cases (the cost of a validation grows with them).
    """

    spacings: tuple[tuple[float, float, float], ...]
    shapes: tuple[tuple[int, int, int], ...]
    channels: tuple[str, ...]
    n_classes: int
    n_val_cases: int = 0

    def __post_init__(self) -> None:
        if not self.spacings or len(self.spacings) != len(self.shapes):
            raise ValueError(f"DatasetFingerprint: expected one spacing and one shape per case, got "
                             f"{len(self.spacings)} spacings and {len(self.shapes)} shapes")


@dataclass(frozen=True)
class Target:
    """The compute the plan is for.

    Attributes:
        device: ``cpu`` or ``cuda``.
        gpu_memory_gb: memory of the GPU (GB); None on a CPU.
        max_minutes: wall-clock training budget (minutes) or None.
    """

    device: str = "cpu"
    gpu_memory_gb: float | None = None
    max_minutes: float | None = None

    @property
    def budget_s(self) -> float | None:
        return None if self.max_minutes is None else 60.0 * float(self.max_minutes)


@dataclass(frozen=True)
class Candidate:
    """One network + patch the planner may choose; costs are estimates per training step."""

    spatial_dims: int
    topology: Topology
    channels: tuple[int, ...]
    batch_size: int
    gflop_per_step: float
    memory_gb: float

    def describe(self) -> str:
        patch = "x".join(str(p) for p in self.topology.patch_size)
        return f"patch {patch}, widths {self.channels[0]}-{self.channels[-1]}, batch {self.batch_size}"


@dataclass(frozen=True)
class Plan:
    """A planned config and why.

    Attributes:
        config: the config to train with (what ``--config`` would read).
        reasons: ``(setting, one-line reason)`` per choice.
        step_seconds: measured seconds per training step of the chosen candidate (or None).
        expected_steps: training steps the budget allows (or None without a budget).
        probe: ``(candidate, measured s/step)`` of each probed candidate.
    """

    config: Config
    reasons: tuple[tuple[str, str], ...]
    step_seconds: float | None = None
    expected_steps: int | None = None
    probe: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict:
        """Plain values (checkpoint and JSON safe): reasons and measurements, not the config."""
        return {"reasons": [list(r) for r in self.reasons], "step_seconds": self.step_seconds,
                "expected_steps": self.expected_steps, "probe": [list(p) for p in self.probe]}


# --------------------------------------------------------------------------- geometry


def _resampled_median(fp: DatasetFingerprint, spacing: Sequence[float]) -> np.ndarray:
    sizes = np.asarray(fp.shapes, np.float64) * np.asarray(fp.spacings, np.float64) / np.asarray(spacing)
    return np.maximum(1.0, np.round(np.median(sizes, axis=0)))


def _patch_with_aspect(median: Sequence[float], voxels: float) -> tuple[int, ...]:
    """A patch of about ``voxels`` voxels with the aspect of ``median``, within it per axis."""
    median = [float(m) for m in median]
    floor = [min(m, 8.0) for m in median]
    patch = list(median)
    free = list(range(len(median)))
    for _ in range(len(median)):  # clamp axes at their limits, rescale the rest
        fixed = math.prod(patch[a] for a in range(len(patch)) if a not in free)
        scale = (voxels / fixed / math.prod(median[a] for a in free)) ** (1.0 / len(free))
        for a in free:
            patch[a] = min(median[a], max(floor[a], median[a] * scale))
        clamped = [a for a in free if patch[a] in (median[a], floor[a])]
        if not clamped or len(clamped) == len(free):
            break
        free = [a for a in free if a not in clamped]
    return tuple(max(1, int(round(p))) for p in patch)


def _base_width(device: str, voxels: float, spatial_dims: int) -> int:
    if device == "cuda":
        return 32
    per_axis = voxels ** (1.0 / spatial_dims)
    if spatial_dims == 2:
        return 16 if per_axis <= 128 else 32
    return 8 if per_axis <= 64 else 16 if per_axis <= 112 else 32


def geometry(fp: DatasetFingerprint) -> tuple[tuple[float, float, float], np.ndarray, int]:
    """Target spacing (mm), median resampled shape (voxels) and the planned spatial dims."""
    spacing = target_spacing_from(np.asarray(fp.spacings))
    median = _resampled_median(fp, spacing)
    dims = 2 if median[2] < MIN_3D_SLICES else 3
    return spacing, median, dims


def candidates(fp: DatasetFingerprint, target: Target) -> list[Candidate]:
    """Candidates from small to large (patch, widths, batch), all within the memory target."""
    spacing, median, dims = geometry(fp)
    median, spacing_d = median[:dims], spacing[:dims]
    full = float(np.prod(median))
    start, grow = (96.0**2, 1.5) if dims == 2 else (40.0**3, 1.4)  # smaller: too shallow to learn much
    sizes = [start * grow**k for k in range(64) if start * grow**k < full] + [full]
    batch = 8 if dims == 2 else 2
    memory = (GPU_MEMORY_FRACTION * target.gpu_memory_gb if target.device == "cuda" and target.gpu_memory_gb
              else CPU_MEMORY_GB)
    bytes_per_value = 2 if target.device == "cuda" else 4
    out: list[Candidate] = []
    seen: set[tuple[int, ...]] = set()
    for voxels in sizes:
        topo = topology_for(_patch_with_aspect(median, voxels), spacing_d)
        if topo.patch_size in seen:
            continue
        seen.add(topo.patch_size)
        chans = widths(topo.levels, _base_width(target.device, voxels, dims), dims)
        gflop = 3.0 * batch * forward_gflop(topo, chans, len(fp.channels), fp.n_classes)
        mem = training_memory_gb(topo, chans, batch, bytes_per_value)
        if out and mem > memory:
            break
        out.append(Candidate(dims, topo, chans, batch, gflop, mem))
    return out


# --------------------------------------------------------------------------- the choice


def expected_steps(target: Target, step_seconds: float) -> int | None:
    """Training steps the budget allows at ``step_seconds`` per probed step (None: no budget)."""
    if target.budget_s is None:
        return None
    return int(target.budget_s * TRAIN_FRACTION / (max(step_seconds, 1e-6) * DATA_OVERHEAD))


def enough_steps(target: Target, step_seconds: float, smallest_seconds: float | None = None) -> bool:
    """Whether a candidate at ``step_seconds`` is acceptable for the budget.

    It is when it trains :data:`MIN_STEPS` steps in the budget, or, when the smallest
    candidate (``smallest_seconds``) does not either, when it costs at most
    :data:`FIXED_COST_TOLERANCE` times the smallest: then a fixed per-step cost (patch
    sampling, augmentation, framework overhead) dominates and the larger patch is nearly free.
    """
    steps = expected_steps(target, step_seconds)
    if steps is None or steps >= MIN_STEPS:
        return True
    return (smallest_seconds is not None and not enough_steps(target, smallest_seconds)
            and step_seconds <= FIXED_COST_TOLERANCE * smallest_seconds)


def choose(cands: Sequence[Candidate], target: Target, measured: Mapping[int, float] | None = None) -> tuple[int, str]:
    """Index of the candidate to train, and why.

    Args:
        cands: from :func:`candidates` (ascending cost).
        target: the compute target.
        measured: candidate index -> measured seconds per step (the probe's figures).
    """
    if not cands:
        raise ValueError("choose: no candidates")
    if target.budget_s is not None and measured:
        smallest = measured[min(measured)]
        fitting = [i for i, s in measured.items() if enough_steps(target, s)]
        if fitting:
            return max(fitting), (f"the largest probed candidate that trains >= {MIN_STEPS} steps in "
                                  f"{target.max_minutes:g} min")
        near = [i for i, s in measured.items() if enough_steps(target, s, smallest)]
        return max(near), (f"no candidate trains {MIN_STEPS} steps in {target.max_minutes:g} min: the largest "
                           f"within {FIXED_COST_TOLERANCE:g}x the smallest's step time (a fixed per-step cost "
                           "dominates)")
    if target.device == "cuda":
        return len(cands) - 1, "the largest candidate within the GPU memory target"
    fitting = [i for i, c in enumerate(cands) if c.gflop_per_step <= CPU_GFLOP_PER_STEP]
    return (max(fitting) if fitting else 0), f"the largest candidate under {CPU_GFLOP_PER_STEP:g} GFLOP per step on a CPU"


# --------------------------------------------------------------------------- the plan


def _axes_text(values: Sequence[Sequence[int]]) -> str:
    return " ".join("x".join(str(v) for v in level) for level in values)


def _geometry_reasons(fp: DatasetFingerprint, cand: Candidate, spacing: Sequence[float],
                      median: np.ndarray) -> list[tuple[str, str]]:
    dims = cand.spatial_dims
    shape = "x".join(str(int(m)) for m in median)
    aniso = is_anisotropic(spacing)
    thick = int(np.argmax(spacing))
    spacing_why = ("per-axis median of the training cases" if not aniso else
                   f"median in-plane; axis {thick} is thick (> 3x), it keeps the 10th percentile of its "
                   "spacings instead of being interpolated")
    dims_why = (f"3D: {int(median[2])} resampled slices along the last axis (>= {MIN_3D_SLICES})" if dims == 3
                else f"2D slices: only {int(median[2])} resampled slices along the last axis "
                     f"(< {MIN_3D_SLICES} for a useful 3D patch)")
    topo = cand.topology
    pooled = [sum(s[a] == 2 for s in topo.strides) for a in range(dims)]
    return [
        ("data.target_spacing", f"{[round(s, 3) for s in spacing]} mm: {spacing_why}"),
        ("model.spatial_dims", dims_why),
        ("data.patch_size", f"{list(topo.patch_size)} voxels: the aspect of the median resampled shape "
                            f"{shape}, rounded up to the total stride {list(topo.total_stride)}"),
        ("model.strides", f"{_axes_text(topo.strides)}: an axis is pooled while it keeps >= 8 voxels and its "
                          f"spacing is <= 2x the finest (poolings per axis {pooled})"),
        ("model.kernel_sizes", f"{_axes_text(topo.kernel_sizes)}: 1 along an axis still > 2x coarser than "
                               "the finest"),
        ("model.channels", f"{list(cand.channels)}: {cand.channels[0]} at full resolution, doubling per "
                           f"level, {topo.levels} levels"),
        ("data.sampling", f"classes: {POS_FRACTION:.0%} of the patch centres on a label, the same share for "
                          "each label (a small organ is seen as often as a large one)"),
        ("train.batch_size", f"{cand.batch_size} patches per step ({cand.gflop_per_step:.1f} GFLOP, "
                             f"~{cand.memory_gb:.2f} GB of activations estimated)"),
    ]


def make_plan(fp: DatasetFingerprint, target: Target, cands: Sequence[Candidate], index: int, why: str,
              measured: Mapping[int, float] | None = None,
              step_mode: tuple[Mapping[str, Any], str] | None = None) -> Plan:
    """The :class:`Plan` of candidate ``cands[index]`` (chosen by :func:`choose` for ``why``).

    Args:
        fp: the dataset.
        target: the compute target.
        cands: the candidates.
        index: the chosen one.
        why: the reason of the choice (from :func:`choose`).
        measured: the probe's figures, candidate index -> seconds per step.
        step_mode: ``({"precision": ..., "channels_last": ...}, reason)`` when the probe
            chose them; else the config's defaults (``auto``, ``null``) stay.
    """
    from medresunet.planning.schedule import plan_schedule

    measured = dict(measured or {})
    cand = cands[index]
    spacing, median, dims = geometry(fp)
    step_s = measured.get(index)
    steps = expected_steps(target, step_s) if step_s is not None else None
    crops = fp.n_val_cases * max(1, fp.n_classes - 1)  # a patch validation: one crop per case and label
    sched = plan_schedule(target.device, target.budget_s, steps, step_s, crops, VAL_FRACTION, TARGET_EPOCHS)
    topo = cand.topology
    raw = {
        "model": {"spatial_dims": dims, "channels": list(cand.channels), "num_res_blocks": 1,
                  "strides": [list(s) for s in topo.strides],
                  "kernel_sizes": [list(k) for k in topo.kernel_sizes], "norm": "instance",
                  "act": "leakyrelu", "upsample": "transpose", "downsample": "maxpool"},
        "data": {"target_spacing": [float(s) for s in spacing], "patch_size": list(topo.patch_size),
                 "samples_per_volume": 8 if dims == 2 else 2, "crop_foreground": True,
                 "sampling": "classes", "pos_fraction": POS_FRACTION},
        "train": {"epochs": sched.epochs, "steps_per_epoch": sched.steps_per_epoch,
                  "batch_size": cand.batch_size, "lr": sched.lr, "schedule": "poly", "warmup_epochs": 1,
                  "val_interval": sched.val_interval, "val_mode": "patch",
                  "fit_budget": target.budget_s is not None},
    }
    reasons = [("candidate", f"{cand.describe()}: {why}"), *_geometry_reasons(fp, cand, spacing, median),
               *sched.reasons]
    if step_mode is not None:
        raw["train"].update(step_mode[0])
        reasons.append(("train.precision, train.channels_last", step_mode[1]))
    probe = tuple((cands[i].describe(), round(float(s), 4)) for i, s in sorted(measured.items()))
    return Plan(config_from_dict(raw), tuple(reasons), step_s, steps, probe)


def plan_yaml(plan: Plan) -> str:
    """The plan as a config file: the YAML that ``--config`` reads, reasons as comments."""
    import yaml

    from medresunet.config import config_to_dict

    head = ["# medresunet plan: a config file (medresunet-train --config plan.yaml); edit it freely.",
            "# Why each value:"]
    head += [f"#   {key}: {why}" for key, why in plan.reasons]
    if plan.step_seconds is not None:
        head.append(f"# measured: {plan.step_seconds:.3f} s per step; expected steps: {plan.expected_steps}")
    head += [f"#   probe: {what}: {s:.3f} s/step" for what, s in plan.probe]
    return "\n".join(head) + "\n" + yaml.safe_dump(config_to_dict(plan.config), sort_keys=False, default_flow_style=None)
