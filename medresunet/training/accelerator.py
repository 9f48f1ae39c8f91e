"""The device-dependent decisions of training: layout, cuDNN, loading, scaler, DDP, figures.

Each decision is a plain function of the config value and the device, so the CPU tests
check the CUDA answers too:

* :func:`use_channels_last`: ``train.channels_last`` ``null`` (auto) is channels-last on the
  CPU, where oneDNN runs it 1.6x faster (benchmarks/RESULTS.md), and off on CUDA: not
  measured there, and with instance/group norm cuDNN may convert back and forth every layer;
  ``benchmarks/gpu_check.sh`` measures both layouts, and the default changes with its figures.
* :func:`use_cudnn_benchmark`: on for CUDA (training patches have one fixed size, so each
  convolution is timed once and the fastest kernel kept).
* :func:`loader_settings`: worker processes, pinned memory and prefetch that keep a GPU fed;
  on the CPU the workers would compete with the training threads, so none unless asked.
* :func:`make_scaler`: a ``GradScaler`` enabled for fp16 on CUDA only (its state goes in the
  checkpoint and comes back on resume; a disabled scaler's state is empty).
* :func:`wrap_ddp`: ``DistributedDataParallel`` with the gradients as views of its buckets,
  which fixes the "grad strides do not match bucket view strides" warning instead of hiding
  it: that warning means autograd produced a gradient whose strides differ from the bucket
  (channels-last 1x1 kernels and size-1 axes, depending on the kernel chosen), and each
  step paid a copy. With the gradients allocated as bucket views before the first step and
  zeroed in place (never set to None), autograd accumulates into the bucket directly.
* :class:`Throughput`: steps per second and peak GPU memory of an epoch, for the log.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

#: Most loader workers on CUDA (beyond ~8 the augmentation stops being the bottleneck and
#: each worker holds a copy of the dataset's cache).
MAX_WORKERS = 8


def use_channels_last(requested: bool | None, device: torch.device) -> bool:
    """``train.channels_last``: an explicit choice, or (``None``) the CPU only."""
    if requested is not None:
        return bool(requested)
    return device.type == "cpu"


def use_cudnn_benchmark(device: torch.device) -> bool:
    """cuDNN's kernel timing pays off for the fixed patch size of training (CUDA only)."""
    return device.type == "cuda"


@dataclass(frozen=True)
class LoaderSettings:
    """DataLoader arguments: ``num_workers``, ``pin_memory``, ``prefetch_factor``."""

    num_workers: int
    pin_memory: bool
    prefetch_factor: int | None

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``torch.utils.data.DataLoader``."""
        out: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            out["prefetch_factor"] = self.prefetch_factor
        return out


def loader_settings(num_workers: int | None, device: torch.device, cpu_count: int | None = None) -> LoaderSettings:
    """Loader settings for ``data.num_workers`` (``None``: auto) on ``device``.

    Args:
        num_workers: the configured worker processes, or ``None`` (auto: on CUDA one per
            CPU core but one, at most :data:`MAX_WORKERS`; on the CPU none).
        device: the training device.
        cpu_count: CPU cores available (default: this process's affinity).
    """
    cuda = device.type == "cuda"
    if num_workers is None:
        cores = cpu_count if cpu_count is not None else len(os.sched_getaffinity(0))
        num_workers = min(MAX_WORKERS, max(0, cores - 1)) if cuda else 0
    return LoaderSettings(num_workers=int(num_workers), pin_memory=cuda,
                          prefetch_factor=4 if cuda and num_workers > 0 else (2 if num_workers > 0 else None))


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler: enabled for fp16 on CUDA (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")


def wrap_ddp(core: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` over ``core`` with gradients living in its buckets.

    The gradients are allocated before wrapping (zeros, in each parameter's layout), so
    DDP turns them into bucket views at construction; the training step must then zero
    them in place (``optimizer.zero_grad(set_to_none=False)``).
    """
    from torch.nn.parallel import DistributedDataParallel

    for p in core.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(core, device_ids=device_ids, gradient_as_bucket_view=True)


class Throughput:
    """Steps per second and peak GPU memory (GB) of one epoch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = time.perf_counter()
        self.steps = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def step(self) -> None:
        self.steps += 1

    def figures(self) -> dict[str, float | None]:
        """``{"steps_per_s", "gpu_mem_gb"}`` (GPU memory ``None`` off CUDA)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = max(time.perf_counter() - self.start, 1e-9)
        mem = (torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else None)
        return {"steps_per_s": self.steps / seconds, "gpu_mem_gb": mem}
