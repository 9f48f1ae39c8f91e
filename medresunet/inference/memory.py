"""Out-of-memory fallback for whole-volume inference: what to try next, and what to remember.

A scan's inference holds three kinds of large arrays: the activations of one batch of
windows (the forward pass), the stitching buffer of ``classes x voxels`` logits, and, with
test-time flips, the accumulation of the flipped copies' probabilities (another ``classes x
voxels``). When CUDA runs out of memory the fallback changes one of them and runs the scan
again, in this order (what nnU-Net and MONAI's ``SlidingWindowInfererAdapt`` learned):

1. an OOM in the forward pass: half the window batch (down to one window);
2. then (or at once when the stitching buffer or the flip accumulation was the allocation
   that failed: a smaller window batch frees nothing there) the stitching buffer and the
   flip accumulation move to the host; the windows still run on the GPU.

The retry happens *outside* the ``except`` block: while an exception is being handled its
traceback holds every frame of the failed attempt, and with them its GPU tensors, so
``torch.cuda.empty_cache()`` inside the handler frees nothing and the retry runs out of memory
again. :func:`run_with_fallback` leaves the handler, collects, empties the cache and only
then retries.

The choice is remembered (:class:`OomFallback`): a batch loop keeps one object across scans
(the :class:`~medresunet.inference.predictor.Predictor` holds it), so the window batch that
fitted stays in use and a scan at least as large as one that needed the host starts there,
as MONAI's adaptive inferer records its ``cpu_thresh``.

The fallback reacts only to an out-of-memory error (:func:`is_out_of_memory`). On the CPU
PyTorch reports a failed allocation as a plain ``RuntimeError`` that is not caught, so the
same code runs on every device, and the CPU tests exercise it by raising the CUDA error at
the allocation points (:func:`allocate`, the forward pass).
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Stages an out-of-memory error is tagged with (:func:`mark_stage`).
FORWARD, BUFFER, ACCUMULATE = "forward pass", "stitching buffer", "flip accumulation"

#: ``classes x voxels`` from which the stitching buffer and the flip accumulation are
#: float16 on CUDA (``stitch_dtype="auto"``): 2**28 elements are 1 GiB in float32, and a scan
#: with flips holds two such arrays; half of that keeps 0.5 GiB each, and the labels equal
#: float32 stitching on >= 99.9 % of the voxels (tests/test_inference_memory.py).
HALF_STITCH_ELEMENTS = 2**28

STITCH_DTYPES = ("auto", "fp32", "fp16")

_OOM_TEXT = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")


def is_out_of_memory(err: BaseException) -> bool:
    """True for PyTorch's ``OutOfMemoryError`` and the cuDNN/cuBLAS allocation failures."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(t in str(err) for t in _OOM_TEXT)


def mark_stage(err: BaseException, stage: str) -> None:
    """Record on an out-of-memory error where it happened (the innermost mark wins)."""
    if is_out_of_memory(err) and getattr(err, "medresunet_stage", None) is None:
        err.medresunet_stage = stage  # type: ignore[attr-defined]


def _new_array(shape: tuple[int, ...], dtype: torch.dtype, device: Any, what: str) -> torch.Tensor:
    """The allocation itself (the seam where the CPU tests inject an out-of-memory error)."""
    return torch.zeros(shape, dtype=dtype, device=device)


def allocate(shape: Sequence[int], dtype: torch.dtype, device: Any, what: str) -> torch.Tensor:
    """``torch.zeros`` for one of inference's large arrays, tagging an OOM with ``what``.

    Args:
        shape: the array's shape, e.g. ``(B, K, *spatial)``.
        dtype: its dtype.
        device: where it lives.
        what: :data:`BUFFER` or :data:`ACCUMULATE` (the fallback's next step depends on it).
    """
    try:
        return _new_array(tuple(int(s) for s in shape), dtype, device, what)
    except RuntimeError as err:
        mark_stage(err, what)
        raise


def stitch_dtype(requested: str, n_elements: int, device: Any) -> torch.dtype:
    """The dtype of the stitching buffer and the flip accumulation.

    Args:
        requested: ``auto`` (float16 on CUDA from :data:`HALF_STITCH_ELEMENTS` elements on,
            else float32), ``fp32`` or ``fp16`` (forced, on any device: the CPU tests use it).
        n_elements: ``classes x voxels`` of the buffer.
        device: the compute device.
    """
    if requested not in STITCH_DTYPES:
        raise ValueError(f"stitch_dtype: expected one of {STITCH_DTYPES}, got {requested!r}")
    if requested == "fp16" or (requested == "auto" and torch.device(device).type == "cuda"
                               and n_elements >= HALF_STITCH_ELEMENTS):
        return torch.float16
    return torch.float32


@dataclass(frozen=True)
class MemoryPlan:
    """How one attempt at a scan uses memory.

    Attributes:
        sw_batch_size: windows per forward pass.
        on_host: the stitching buffer, the softmax, the flip accumulation and the inversion
            on the CPU (the windows still run on the compute device).
    """

    sw_batch_size: int
    on_host: bool


@dataclass
class OomFallback:
    """The fallback's state, kept across the scans of a batch.

    Args:
        sw_batch_size: the window batch to start with.
        on_host: start with the stitching buffer on the host (``--stitch-device cpu``).
        enabled: react to out-of-memory errors at all (``--stitch-device same``: no).

    Attributes:
        host_from: ``classes x voxels`` from which a scan starts on the host (learned).
        events: one line per fallback taken, for the run record.
    """

    sw_batch_size: int = 2
    on_host: bool = False
    enabled: bool = True
    host_from: float = math.inf
    events: list[str] = field(default_factory=list)

    def plan(self, n_elements: int) -> MemoryPlan:
        """The plan for a scan of ``n_elements`` (``classes x voxels``)."""
        return MemoryPlan(self.sw_batch_size, self.on_host or n_elements >= self.host_from)

    def next_plan(self, plan: MemoryPlan, stage: str | None, n_elements: int) -> MemoryPlan | None:
        """The plan after ``plan`` ran out of memory at ``stage``, remembered; None: give up."""
        if not self.enabled:
            return None
        if stage == FORWARD and plan.sw_batch_size > 1:
            self.sw_batch_size = min(self.sw_batch_size, plan.sw_batch_size // 2)
            return replace(plan, sw_batch_size=self.sw_batch_size)
        if not plan.on_host:
            self.host_from = min(self.host_from, n_elements)
            return replace(plan, on_host=True)
        if plan.sw_batch_size > 1:  # the host already stitches: only the windows are left
            self.sw_batch_size = min(self.sw_batch_size, plan.sw_batch_size // 2)
            return replace(plan, sw_batch_size=self.sw_batch_size)
        return None


def free_memory(device: Any) -> None:
    """Collect the failed attempt's garbage and return the cached blocks to the driver."""
    gc.collect()  # frames in reference cycles would otherwise keep their tensors
    if torch.device(device).type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_with_fallback(attempt: Callable[[MemoryPlan], T], memory: OomFallback, n_elements: int,
                      device: Any, what: str = "scan") -> T:
    """``attempt(plan)``, retried with the next plan after each out-of-memory error.

    Args:
        attempt: runs the whole scan under a plan; it must keep no reference to its
            arrays outside its own frames (they go with the traceback).
        memory: the fallback state (updated: the choice is remembered).
        n_elements: ``classes x voxels`` of the scan's stitching buffer.
        device: the compute device (its cache is emptied between attempts).
        what: the scan's name, for the log.

    Raises:
        torch.OutOfMemoryError: when no plan is left (the last attempt's error).
    """
    plan = memory.plan(n_elements)
    while True:
        try:
            return attempt(plan)
        except RuntimeError as err:
            stage = getattr(err, "medresunet_stage", None)
            nxt = memory.next_plan(plan, stage, n_elements) if is_out_of_memory(err) else None
            if nxt is None:
                raise
            reason = str(err).split("\n", 1)[0][:200]
        # Out of the handler: the exception, its traceback and the failed attempt's frames
        # are unreachable now, so their device memory can actually be freed.
        free_memory(device)
        event = (f"{what}: out of memory in the {stage or 'inference'} ({reason}); retrying with "
                 f"{nxt.sw_batch_size} window(s) per batch, stitching on "
                 f"{'the CPU' if nxt.on_host else 'the device'}")
        memory.events.append(event)
        log.warning("%s", event)
        plan = nxt
