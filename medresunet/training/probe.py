"""The measured probe: seconds per training step of candidate networks on the real device.

A few forward + backward + AdamW steps on random patches, with the loss, precision and
memory layout the training loop uses; the planner (:mod:`medresunet.planning`) turns the
figures into a choice. :func:`measure_data_seconds` times the data pipeline's random part
(patch sampling and augmentation, which on a CPU can cost as much as a small network's
step); a ``fit_budget`` run re-measures whole epochs in the loop.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medresunet.devices import autocast, cpu_supports_bf16, resolve_precision
from medresunet.networks import ResidualUNet
from medresunet.training.accelerator import use_channels_last
from medresunet.training.loss import SegmentationLoss
from medresunet.training.run_state import memory_format


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step_seconds(model_kwargs: dict[str, Any], patch_size: Sequence[int], batch_size: int,
                         device: torch.device, precision: str = "auto", steps: int = 2,
                         warmup: int = 1, channels_last: bool | None = None) -> float:
    """Median seconds of one training step of ``ResidualUNet(**model_kwargs)``.

    Args:
        model_kwargs: the network's keyword arguments (``in_channels``/``out_channels`` included).
        patch_size: voxels per spatial axis.
        batch_size: patches per step.
        device: where to run.
        precision: ``auto``/``fp32``/``bf16``/``fp16``, resolved as the training loop does.
        steps: timed steps (the median is returned).
        warmup: untimed steps first (allocator, oneDNN / cuDNN kernel choice).
        channels_last: the memory layout (``train.channels_last``; None: the loop's default).
    """
    precision = resolve_precision(precision, device)
    dims = int(model_kwargs["spatial_dims"])
    fmt = memory_format(dims, use_channels_last(channels_last, device)) or torch.contiguous_format
    model = ResidualUNet(**model_kwargs).to(device).to(memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = SegmentationLoss()
    gen = torch.Generator().manual_seed(0)
    shape = (batch_size, model_kwargs["in_channels"], *patch_size)
    image = torch.randn(shape, generator=gen).to(device).contiguous(memory_format=fmt)
    label = torch.randint(0, model_kwargs["out_channels"], (batch_size, 1, *patch_size), generator=gen).to(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = model(image)
        loss_fn(logits, label).backward()
        optimizer.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    del model, optimizer, image, label
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return float(statistics.median(times))


@dataclass(frozen=True)
class StepMode:
    """How a training step runs: ``train.precision`` (resolved) and ``train.channels_last``."""

    precision: str
    channels_last: bool

    def describe(self) -> str:
        return f"{self.precision} {'channels-last' if self.channels_last else 'contiguous'}"


def step_modes(precision: str, channels_last: bool | None, device: torch.device) -> tuple[StepMode, ...]:
    """The step modes the probe times for ``train.precision`` / ``train.channels_last`` on ``device``.

    On a CPU, ``auto`` precision with native bf16 gives bf16 and fp32, and ``null`` layout
    gives channels-last and contiguous: which is fastest depends on the network (oneDNN's
    bf16 and channels-last kernels win on wide layers and lose on the narrow ones of a small
    planned network, 2-2.7x apart on this project's benchmark networks), so the probe
    measures instead of assuming. Emulated bf16 (no native support) is never tried, and on
    CUDA the loop's own defaults stay (not measured there yet). An explicit value is kept.
    """
    if device.type == "cpu" and precision == "auto":
        precisions = ("bf16", "fp32") if cpu_supports_bf16() else ("fp32",)
    else:
        precisions = (resolve_precision(precision, device),)
    layouts = (True, False) if channels_last is None and device.type == "cpu" else (
        use_channels_last(channels_last, device),)
    return tuple(StepMode(p, c) for p in precisions for c in layouts)


def fastest_mode(model_kwargs: dict[str, Any], patch_size: Sequence[int], batch_size: int,
                 device: torch.device, modes: Sequence[StepMode]) -> tuple[StepMode, dict[StepMode, float]]:
    """The fastest of ``modes`` for this network, and each mode's measured seconds per step."""
    seconds = {m: measure_step_seconds(model_kwargs, patch_size, batch_size, device, m.precision,
                                       channels_last=m.channels_last) for m in modes}
    return min(seconds, key=seconds.__getitem__), seconds


def probe_candidates(measure: Callable[[int], float], n_candidates: int,
                     enough: Callable[[float, float], bool], max_seconds: float) -> dict[int, float]:
    """Measure candidates from the smallest up until one trains too few steps or time runs out.

    Args:
        measure: candidate index -> seconds per step.
        n_candidates: how many there are (ascending cost).
        enough: ``(seconds, smallest's seconds)`` -> whether that step time is still acceptable.
        max_seconds: wall-clock cap of the whole probe (s); the smallest is always measured.

    Returns:
        Index -> measured seconds per step.
    """
    start = time.monotonic()
    measured: dict[int, float] = {}
    for i in range(n_candidates):
        measured[i] = measure(i)
        if not enough(measured[i], measured[0]) or time.monotonic() - start > max_seconds:
            break
    return measured


def measure_data_seconds(patch_size: Sequence[int], volume_shape: Sequence[int], n_channels: int,
                         samples_per_volume: int, batch_size: int, calls: int = 3) -> float:
    """Seconds of the training data pipeline's random part per step (patch sampling, augmentation).

    Runs the real random transforms of :func:`medresunet.data.transforms.train_transforms`
    (default augmentation) on a synthetic cached volume of ``volume_shape`` voxels, in this
    process (as with ``data.num_workers: 0``).
    """
    import dataclasses
    import math

    from monai.data import MetaTensor
    from monai.transforms import Compose

    from medresunet.config import DataConfig
    from medresunet.data.preprocessing import ChannelNorm, Preprocessing
    from medresunet.data.transforms import train_transforms

    dims = len(patch_size)
    patch3 = tuple(patch_size) if dims == 3 else (*patch_size, 1)
    shape = tuple(max(int(v), int(p)) for v, p in zip(volume_shape, patch3, strict=True))
    prep = Preprocessing("RAS", (1.0, 1.0, 1.0), tuple(ChannelNorm("zscore") for _ in range(n_channels)), False,
                         tuple(patch_size), dims)
    cfg = dataclasses.replace(DataConfig(), patch_size=tuple(patch_size), samples_per_volume=samples_per_volume)
    chain = Compose(train_transforms(prep, cfg)[1])
    chain.set_random_state(seed=0)
    gen = torch.Generator().manual_seed(0)
    item = {"image": MetaTensor(torch.randn((n_channels, *shape), generator=gen)),
            "label": MetaTensor((torch.rand((1, *shape), generator=gen) > 0.7).float())}
    chain(dict(item))  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
        chain(dict(item))
    per_call = (time.perf_counter() - start) / calls
    return per_call * math.ceil(batch_size / samples_per_volume)
