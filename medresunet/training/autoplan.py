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
from medresunet.planning.planner import geometry

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


def _network_kwargs(cand: Any, fp: DatasetFingerprint) -> dict[str, Any]:
    """``ResidualUNet`` keyword arguments of a planner candidate."""
    return {"spatial_dims": cand.spatial_dims, "in_channels": len(fp.channels), "out_channels": fp.n_classes,
            "channels": list(cand.channels), "norm": "instance", "act": "leakyrelu",
            "strides": [list(s) for s in cand.topology.strides],
            "kernel_sizes": [list(k) for k in cand.topology.kernel_sizes]}


def plan_training(fp: DatasetFingerprint, device: Any, max_minutes: float | None = None,
                  gpu_memory: float | None = None, precision: str = "auto",
                  channels_last: bool | None = None) -> Plan:
    """The plan for ``fp`` on ``device`` (a ``torch.device``) within ``max_minutes``.

    With ``max_minutes`` the candidates are probed on ``device`` (:func:`probe_budget`)
    and the plan takes the largest that still trains enough steps.

    Args:
        fp: the dataset.
        device: the training device.
        max_minutes: the training budget, or None.
        gpu_memory: GPU memory to plan for (GB); default: the device's.
        precision: the training precision (as ``train.precision``).
        channels_last: the memory layout (as ``train.channels_last``; None: open).
    """
    from medresunet.training.probe import step_modes

    kind = "cuda" if getattr(device, "type", str(device)) == "cuda" else "cpu"
    memory = gpu_memory if gpu_memory is not None else gpu_memory_gb(device)
    target = Target(kind, memory, max_minutes)
    cands = candidates(fp, target)
    measured, modes = {}, {}
    if target.budget_s is not None:
        measured, modes = probe_budget(fp, cands, target, device, step_modes(precision, channels_last, device))
    index, why = choose(cands, target, measured)
    return make_plan(fp, target, cands, index, why, measured, mode_choice(modes))


def probe_budget(fp: DatasetFingerprint, cands: Sequence[Any], target: Target, device: Any,
                 open_modes: Sequence[Any]) -> tuple[dict[int, float], dict[Any, float]]:
    """Seconds per step of the candidates (network + data pipeline), smallest first.

    At most :data:`PROBE_FRACTION` of the budget and :data:`PROBE_MAX_S` s, until one trains
    too few steps. The smallest candidate is timed in each of ``open_modes``
    (:func:`~medresunet.training.probe.step_modes`); the larger ones in the fastest of them.

    Returns:
        ``(candidate index -> s/step, step mode -> the smallest network's s/step)``.
    """
    from medresunet.networks import ResidualUNet
    from medresunet.training.probe import (
        fastest_mode,
        measure_data_seconds,
        measure_step_seconds,
        probe_candidates,
    )

    modes: dict[Any, float] = {}
    median = tuple(int(m) for m in geometry(fp)[1])

    def measure(i: int) -> float:
        c, kwargs = cands[i], _network_kwargs(cands[i], fp)
        ResidualUNet(**kwargs)  # fail here, not in the loop, on a bad candidate
        if not modes:
            modes.update(fastest_mode(kwargs, c.topology.patch_size, c.batch_size, device, open_modes)[1])
        mode = min(modes, key=modes.__getitem__)
        net = modes[mode] if i == 0 else measure_step_seconds(
            kwargs, c.topology.patch_size, c.batch_size, device, mode.precision, channels_last=mode.channels_last)
        data = measure_data_seconds(c.topology.patch_size, median, len(fp.channels),
                                    8 if c.spatial_dims == 2 else 2, c.batch_size)
        logger.info("probe: %s: %.3f s/step (network %.3f in %s, data %.3f)", c.describe(), net + data, net,
                    mode.describe(), data)
        return net + data

    start = time.monotonic()
    cap = min(PROBE_MAX_S, PROBE_FRACTION * target.budget_s)
    measured = probe_candidates(measure, len(cands), lambda s, s0: enough_steps(target, s, s0), cap)
    logger.info("probed %d candidate(s) in %.1f s", len(measured), time.monotonic() - start)
    return measured, modes


def mode_choice(seconds: Mapping[Any, float]) -> tuple[dict[str, Any], str] | None:
    """``(train values, reason)`` of the fastest step mode, when the probe timed more than one.

    Args:
        seconds: :class:`~medresunet.training.probe.StepMode` -> measured seconds per step.

    Returns:
        ``({"precision": ..., "channels_last": ...}, reason)``, or None (nothing was chosen).
    """
    if len(seconds) < 2:
        return None
    fastest = min(seconds, key=seconds.__getitem__)
    others = ", ".join(f"{m.describe()} {s:.3f}" for m, s in seconds.items() if m != fastest)
    return ({"precision": fastest.precision, "channels_last": fastest.channels_last},
            f"{fastest.describe()}: the fastest training step of the smallest candidate on this device, "
            f"{seconds[fastest]:.3f} s/step measured against {others}")


def planned_config(manifest: Any, overrides: Sequence[str], epochs: int | None, device: Any,
                   max_minutes: float | None, dist: Any = None, quiet: bool = True) -> tuple[Any, Plan]:
    """The planned :class:`~medresunet.config.Config` of a new run without ``--config``, and its plan.

    Rank 0 measures and probes; every rank gets the same config. ``overrides``
    (``--set``) and ``epochs`` (``--epochs``) apply on top of the plan.

    Raises:
        ConfigError: an override that does not fit the planned config.
        ManifestError: no labelled training case.
    """
    import dataclasses

    from medresunet.config import apply_overrides, config_from_dict, config_to_dict
    from medresunet.errors import ConfigError
    from medresunet.training import distributed
    from medresunet.training.prepare import training_cases

    dist = dist or distributed.SINGLE
    base = config_from_dict(apply_overrides({}, list(overrides)))  # the split's fold, folds and seed
    plan = None
    if dist.is_main:
        train_cases, val_cases = training_cases(manifest, base, dist.world_size)
        fp = dataset_fingerprint(train_cases, len(val_cases), manifest.channels, manifest.labels, quiet=quiet)
        plan = plan_training(fp, device, max_minutes, precision=base.train.precision,
                             channels_last=base.train.channels_last)
        for key, why in plan.reasons:
            logger.info("plan: %s: %s", key, why)
    raw, info = distributed.broadcast_object(
        dist, (config_to_dict(plan.config), plan.to_dict()) if plan is not None else None)
    try:
        config = config_from_dict(apply_overrides(raw, list(overrides)))
    except ConfigError as err:
        raise ConfigError(f"--set on the planned config: {err}") from err
    if epochs is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
    if plan is None:  # another rank: the same plan, rebuilt from rank 0's values
        plan = Plan(config, tuple(tuple(r) for r in info["reasons"]), info["step_seconds"],
                    info["expected_steps"], tuple(tuple(p) for p in info["probe"]))
    return config, plan
