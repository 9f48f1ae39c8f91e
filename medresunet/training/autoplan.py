"""Plan a training run for a dataset and a device: measure, probe, hand it to the planner.

The IO around :mod:`medresunet.planning` (which is pure): the cases' headers give the
spacings and shapes, :mod:`medresunet.training.probe` measures candidate networks on the
device when there is a time budget, and the planner turns both into a :class:`Plan`.
``medresunet-plan`` and ``medresunet-train`` without ``--config`` both call
:func:`plan_training`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from medresunet.planning import (
    DatasetFingerprint,
    Plan,
    Target,
    candidates,
    choose,
    enough_steps,
    make_plan,
)

logger = logging.getLogger(__name__)

PROBE_FRACTION = 0.04     # of the budget, at most, spent probing candidates
PROBE_MAX_S = 90.0        # and never more than this


def gpu_memory_gb(device: Any) -> float | None:
    """Total memory of a CUDA device (GB), None for any other device."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).total_memory / 1e9


def dataset_fingerprint(train_cases: Sequence, n_val_cases: int, channels: Sequence[str],
                        labels: Mapping[str, int], orientation: str = "RAS",
                        quiet: bool = True) -> DatasetFingerprint:
    """Read the training cases' headers into a :class:`DatasetFingerprint`."""
    from medresunet.data.fingerprint import case_geometries

    spacings, shapes = case_geometries(train_cases, orientation, quiet)
    return DatasetFingerprint(tuple(spacings), tuple(shapes), tuple(channels), max(labels.values()) + 1,
                              int(n_val_cases))


def plan_training(fp: DatasetFingerprint, device: Any, max_minutes: float | None = None,
                  gpu_memory: float | None = None, precision: str = "auto") -> Plan:
    """The plan for ``fp`` on ``device`` (a ``torch.device``) within ``max_minutes``.

    With ``max_minutes`` the candidates are probed on ``device`` (at most
    :data:`PROBE_FRACTION` of the budget, :data:`PROBE_MAX_S` s), smallest first, until one
    trains too few steps; the plan takes the largest that still trains enough.

    Args:
        fp: the dataset.
        device: the training device.
        max_minutes: the training budget, or None.
        gpu_memory: GPU memory to plan for (GB); default: the device's.
        precision: the training precision (as ``train.precision``).
    """
    from medresunet.networks import ResidualUNet
    from medresunet.training.probe import measure_step_seconds, probe_candidates

    kind = "cuda" if getattr(device, "type", str(device)) == "cuda" else "cpu"
    memory = gpu_memory if gpu_memory is not None else gpu_memory_gb(device)
    target = Target(kind, memory, max_minutes)
    cands = candidates(fp, target)
    measured: dict[int, float] = {}
    if target.budget_s is not None:
        def measure(i: int) -> float:
            c = cands[i]
            kwargs = {"spatial_dims": c.spatial_dims, "in_channels": len(fp.channels),
                      "out_channels": fp.n_classes, "channels": list(c.channels), "norm": "instance",
                      "act": "leakyrelu", "strides": [list(s) for s in c.topology.strides],
                      "kernel_sizes": [list(k) for k in c.topology.kernel_sizes]}
            ResidualUNet(**kwargs)  # fail here, not in the loop, on a bad candidate
            seconds = measure_step_seconds(kwargs, c.topology.patch_size, c.batch_size, device, precision)
            logger.info("probe: %s: %.3f s/step", c.describe(), seconds)
            return seconds

        start = time.monotonic()
        cap = min(PROBE_MAX_S, PROBE_FRACTION * target.budget_s)
        measured = probe_candidates(measure, len(cands), lambda s: enough_steps(target, s), cap)
        logger.info("probed %d candidate(s) in %.1f s", len(measured), time.monotonic() - start)
    index, why = choose(cands, target, measured)
    return make_plan(fp, target, cands, index, why, measured)
