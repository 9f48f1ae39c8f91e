"""Device and precision selection.

``auto`` picks the first CUDA GPU when one is visible, else the CPU. Precision ``auto`` is
fp16 autocast on CUDA and bf16 autocast on CPUs that support it natively (checked at run
time), else fp32.
"""

from __future__ import annotations

from typing import Any

from medresunet.errors import UsageError


def resolve_device(spec: str = "auto") -> Any:
    """Turn ``auto|cpu|cuda|cuda:N`` into a ``torch.device``, refusing unavailable GPUs."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA GPU is visible to PyTorch; use --device cpu")
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return torch.device(f"cuda:{index}")
    raise UsageError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), per oneDNN."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: Any) -> str:
    """``auto|fp32|bf16|fp16`` -> the precision actually used on ``device``.

    fp16 is CUDA-only and falls back to fp32 on the CPU; bf16 on a CPU without native
    support is honoured when asked for explicitly (slow but correct); bf16 on a GPU without
    it (before Ampere) becomes fp16. ``auto`` on CUDA stays fp16 (with the gradient scaler)
    until bf16 is measured faster there (``benchmarks/gpu_check.sh`` times both).
    """
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        return "fp32"
    if precision == "bf16" and device.type == "cuda" and not cuda_supports_bf16(device):
        return "fp16"
    return precision


def cuda_supports_bf16(device: Any) -> bool:
    """True when the GPU has native bf16 arithmetic (compute capability 8.0 and later)."""
    import torch

    try:
        return torch.cuda.get_device_capability(device)[0] >= 8
    except (AssertionError, RuntimeError):  # no CUDA build or no such device
        return False


def autocast(device: Any, precision: str) -> Any:
    """A ``torch.autocast`` context for a resolved precision (a no-op for fp32)."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
