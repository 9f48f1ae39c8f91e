"""Distributed runs: process-group setup under ``torchrun``, rank helpers, scan sharding.

``torchrun`` (``python -m torch.distributed.run``) starts one process per GPU (or per CPU
worker) and tells each its place through environment variables: ``WORLD_SIZE``, ``RANK``
and ``LOCAL_RANK``. :func:`setup` reads them, picks the device (``cuda:LOCAL_RANK`` for
``--device auto|cuda``) and joins the process group: NCCL when the device is a GPU, gloo
on the CPU. Every collective waits at most ``MEDRESUNET_DIST_TIMEOUT_S`` seconds (default
1800, NCCL's watchdog timeout too): a rank that dies or hangs makes the others fail with
:class:`DistributedError` instead of waiting for ever; on NCCL the watchdog is told to abort
the communicator and let the error reach Python (:data:`NCCL_ENV`) rather than end the
process from C++.

Without these variables (or with ``WORLD_SIZE=1``) everything here is a no-op: rank 0 of
a world of 1. This module imports torch lazily, so the console scripts' ``--help`` stays
fast.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from medresunet.errors import DistributedError, MedresunetError, UsageError

logger = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT_ENV = "MEDRESUNET_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        """True when a process group of more than one process is active."""
        return self.world_size > 1 and self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, writes checkpoints and run.json."""
        return self.rank == 0


SINGLE = DistInfo()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise UsageError(f"environment variable {name}: expected an integer, got {raw!r}") from err


def env_info() -> DistInfo:
    """The rank, world size and local rank that ``torchrun`` set (rank 0 of 1 without it)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"torchrun environment: expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, "
                         f"got RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return DistInfo(rank=rank, world_size=world, local_rank=local, timeout_s=timeout_seconds())


def under_torchrun() -> bool:
    """True when ``torchrun`` started this process as one of several (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def timeout_seconds() -> float:
    """The collective timeout: ``MEDRESUNET_DIST_TIMEOUT_S`` seconds (default 1800)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"environment variable {TIMEOUT_ENV}: expected a positive number of seconds, got {raw!r}")
    return value


def _device(spec: str, local_rank: int) -> Any:
    import torch

    from medresunet.devices import resolve_device

    spec = (spec or "auto").strip().lower()
    if spec in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} CUDA device(s) are "
                             "visible; start at most that many processes per node (--nproc-per-node)")
        return torch.device(f"cuda:{local_rank}")
    device = resolve_device(spec)
    if device.type == "cuda":
        logger.warning("--device %s under torchrun: every rank of this node uses the same GPU; "
                       "--device auto gives each rank its own (cuda:LOCAL_RANK)", spec)
    return device


#: NCCL's watchdog, on a failed or timed-out collective: ``2`` aborts the communicator and
#: lets the waiting call raise (a Python error that :func:`session` turns into one line); the
#: default ``3`` tears the process down from C++, and no message of ours is printed.
NCCL_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


def nccl_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """Set :data:`NCCL_ENV` in ``env`` (default ``os.environ``) where the user has not.

    Returns:
        What was set (a user's own value is kept and not returned).
    """
    env = os.environ if env is None else env
    changed = {k: v for k, v in NCCL_ENV.items() if k not in env}
    env.update(changed)
    return changed


def setup(device_spec: str = "auto") -> tuple[DistInfo, Any]:
    """Join the torchrun process group (if any) and pick this rank's device.

    Returns:
        ``(info, device)``; without torchrun ``(SINGLE, resolve_device(device_spec))``.
    """
    info = env_info()
    if info.world_size == 1:
        from medresunet.devices import resolve_device

        return SINGLE, resolve_device(device_spec)
    import torch
    import torch.distributed as dist

    device = _device(device_spec, info.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        nccl_environment()  # before the process group: the watchdog reads it when it starts
    info = DistInfo(rank=info.rank, world_size=info.world_size, local_rank=info.local_rank,
                    backend=backend, timeout_s=info.timeout_s)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=info.timeout_s),
                                    **({"device_id": device} if device.type == "cuda" else {}))
        except RuntimeError as err:  # a rank that never arrived: the store's wait timed out
            raise failure(info, err) from err
    if not info.is_main:  # only rank 0 talks; the others say what goes wrong
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    logger.info("distributed: rank %d of %d (local rank %d), backend %s, device %s, collective timeout %.0f s",
                info.rank, info.world_size, info.local_rank, backend, device, info.timeout_s)
    return info, device


def cleanup(info: DistInfo) -> None:
    """Leave the process group (safe to call on errors and without one)."""
    if not info.enabled:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@contextlib.contextmanager
def session(device_spec: str = "auto") -> Iterator[tuple[DistInfo, Any]]:
    """:func:`setup` ... :func:`cleanup`, turning a failed collective into :class:`DistributedError`."""
    info, device = setup(device_spec)
    try:
        yield info, device
    except MedresunetError:
        raise
    except RuntimeError as err:
        if not info.enabled:
            raise
        raise failure(info, err) from err
    finally:
        cleanup(info)


def failure(info: DistInfo, err: BaseException) -> DistributedError:
    """One line for a failed collective on rank ``info.rank``."""
    text = " ".join(str(err).split())[:300] or type(err).__name__
    return DistributedError(
        f"rank {info.rank} of {info.world_size}: a collective operation failed or timed out "
        f"(timeout {info.timeout_s:.0f} s, {TIMEOUT_ENV}); another rank probably died or hangs, "
        f"see its output above ({type(err).__name__}: {text})")


def _collective_device(info: DistInfo) -> Any:
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else torch.device("cpu")


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op without a process group)."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(info: DistInfo, obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_collective_device(info))
    return box[0]  # type: ignore[return-value]


def all_gather_object(info: DistInfo, obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(info: DistInfo, values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64)."""
    if not info.enabled:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


# --- sharding -------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0-based: ``0 <= I < N``) -> ``(I, N)``; a bad value is a :class:`UsageError`."""
    parts = str(text).strip().split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected I/N with integers, 0-based, e.g. 0/4 ... 3/4") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {text!r}: expected 0 <= I < N (0-based), got I={index}, N={count}")
    return index, count


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Items whose position in ``items`` is ``index`` modulo ``count``: disjoint, together complete."""
    return [item for i, item in enumerate(items) if i % count == index]
