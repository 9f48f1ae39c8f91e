"""The state of one training run, and what goes in and out of :func:`~medresunet.training.loop.train`.

:class:`TrainState` holds the network, the optimizer, the learning-rate schedule, the
gradient scaler and the counters (epochs done, optimizer steps, best validation metric)
that the loop advances; :func:`new_state` builds it from the config, :func:`resume_state`
restores it from ``last.pt`` and :func:`checkpoint_payload` turns it back into the
checkpoint dict (DESIGN.md section 4). The input records (:class:`TrainData`,
:class:`ModelInfo`, :class:`TrainOptions`) group the loop's arguments by concept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import medresunet
from medresunet.config import Config, config_to_dict
from medresunet.devices import resolve_precision
from medresunet.errors import CheckpointError
from medresunet.training.accelerator import make_scaler, use_channels_last
from medresunet.training.checkpoint import FORMAT_VERSION, load_checkpoint
from medresunet.training.loss import SegmentationLoss
from medresunet.training.schedule import load_scheduler_state, make_scheduler, scheduler_state
from medresunet.training.state import capture_rng, restore_rng
from medresunet.training.validation import Background

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainData:
    """The data of a run.

    Attributes:
        train: a map-style dataset of training items ``{"image", "label"}``, each a list of
            ``data.samples_per_volume`` random patches ``(C, *patch)`` (or one dict); under
            DDP this rank's share of the training cases.
        val: preprocessed whole volumes ``{"image": (C, *spatial), "label": (1, *spatial)}``.
        background: normalised background intensity per input channel (window padding),
            or a function of a validation image giving it.
    """

    train: Any
    val: Sequence[Mapping[str, Any]]
    background: Background


@dataclass(frozen=True)
class ModelInfo:
    """What a checkpoint records beside the weights, so that inference needs nothing else.

    Attributes:
        kwargs: the network's plain hyper-parameters (``networks.network_kwargs``).
        labels: name -> value, with ``background: 0``.
        input_channels: modality per input channel.
        preprocessing: object with ``to_dict()`` (``data.preprocessing.Preprocessing``).
        plan: the planner's reasons and measurements (``Plan.to_dict()``) of a planned run.
    """

    kwargs: dict[str, Any]
    labels: Mapping[str, int]
    input_channels: Sequence[str]
    preprocessing: Any
    plan: Mapping[str, Any] | None = None

    @property
    def label_names(self) -> list[str]:
        """The foreground label names, in map order."""
        return [n for n, v in self.labels.items() if v != 0]


@dataclass(frozen=True)
class TrainOptions:
    """How one call of ``train`` runs (not part of the config: they do not change the model).

    Attributes:
        resume: continue from ``run_dir/last.pt``.
        max_minutes: wall-clock budget of this call; training stops at the end of the step
            that crosses it, validates and writes its checkpoints.
        quiet: no progress bar.
        stop_after_epoch: stop (as if interrupted) once this epoch (1-based) is done,
            without changing the planned horizon; for tests and staged runs.
        on_epoch_end: called with the epoch's log record (on rank 0).
    """

    resume: bool = False
    max_minutes: float | None = None
    quiet: bool = False
    stop_after_epoch: int | None = None
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None


@dataclass
class TrainState:
    """Everything the loop advances; ``epoch`` counts the epochs done (1-based after one).

    ``core`` is the unwrapped network (checkpoints, validation, resume); ``model`` is what
    the training step calls (``core`` or its ``DistributedDataParallel`` wrapper).
    """

    core: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    device: torch.device
    precision: str
    memory_format: torch.memory_format | None
    grad_clip: float
    steps_per_epoch: int
    total_epochs: int
    epoch: int = 0
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    last_val: dict[str, Any] | None = None
    stopped_by_budget: bool = False
    grads_in_buckets: bool = False  # DDP's bucket views: zero them in place, never drop them
    figures: dict[str, Any] | None = None  # the last epoch's steps/s and peak GPU memory

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])


def memory_format(spatial_dims: int, enabled: bool) -> torch.memory_format | None:
    """``channels_last`` (2D) or ``channels_last_3d`` (3D) when enabled, else ``None``."""
    if not enabled:
        return None
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def make_optimization(config: Config, core: torch.nn.Module, n_steps: int) -> tuple[Any, Any]:
    """AdamW and the per-step schedule over the run's planned total of optimizer steps.

    Args:
        config: the resolved config (``train.lr``, ``weight_decay``, ``epochs``,
            ``warmup_epochs``, ``schedule``).
        core: the unwrapped network.
        n_steps: optimizer steps per epoch (:func:`~medresunet.training.loop.steps_per_epoch`).

    Returns:
        ``(optimizer, scheduler)``; the schedule spans ``epochs * n_steps`` steps.
    """
    tc = config.train
    optimizer = torch.optim.AdamW(core.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = make_scheduler(optimizer, tc.epochs * n_steps, tc.warmup_epochs * n_steps, tc.schedule)
    return optimizer, scheduler


def new_state(config: Config, model: torch.nn.Module, device: torch.device, n_steps: int) -> TrainState:
    """A fresh state: the network moved to ``device``, optimizer, schedule and scaler built."""
    tc = config.train
    precision = resolve_precision(tc.precision, device)
    fmt = memory_format(config.model.spatial_dims, use_channels_last(tc.channels_last, device))
    core = model.to(device)
    if fmt is not None:
        core = core.to(memory_format=fmt)
    optimizer, scheduler = make_optimization(config, core, n_steps)
    scaler = make_scaler(precision, device)
    return TrainState(core=core, model=core, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                      loss_fn=SegmentationLoss(), device=device, precision=precision, memory_format=fmt,
                      grad_clip=float(tc.grad_clip or 0.0), steps_per_epoch=n_steps,
                      total_epochs=tc.epochs)


def resume_state(state: TrainState, path: Path) -> None:
    """Restore weights, optimizer, schedule, scaler, RNG states and counters from ``path``.

    Raises:
        CheckpointError: the file does not hold a resumable state for this network.
    """
    ckpt = load_checkpoint(path)
    ts = ckpt.get("train_state") or {}
    try:
        state.core.load_state_dict(ckpt["state_dict"], strict=True)
        state.optimizer.load_state_dict(ts["optimizer"])
        load_scheduler_state(state.scheduler, ts["scheduler"])
        if ts.get("scaler"):
            state.scaler.load_state_dict(ts["scaler"])
        restore_rng(ts["rng"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot resume from it ({err})") from err
    state.epoch, state.global_step = int(ts["epoch"]), int(ts["global_step"])
    state.best_metric = float(ts.get("best_metric", -math.inf))
    state.best_epoch = int(ts.get("best_epoch", 0))
    if ts.get("steps_per_epoch") not in (None, state.steps_per_epoch):
        logger.warning("steps per epoch changed from %s to %s since the checkpoint",
                       ts.get("steps_per_epoch"), state.steps_per_epoch)
    logger.info("resuming %s at epoch %d, step %d (run of %d epochs)", path.parent, state.epoch,
                state.global_step, state.total_epochs)


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def checkpoint_payload(state: TrainState, info: ModelInfo, config: Config) -> dict[str, Any]:
    """The checkpoint dict of the current state (DESIGN.md section 4; RNG states captured now)."""
    return {
        "format_version": FORMAT_VERSION,
        "medresunet_version": medresunet.__version__,
        "model": info.kwargs,
        "state_dict": _plain_state_dict(state.core),
        "preprocessing": info.preprocessing.to_dict(),
        "labels": dict(info.labels),
        "input_channels": list(info.input_channels),
        "infer": config_to_dict(config.infer),
        "train_state": {
            "epoch": state.epoch, "epochs": state.total_epochs, "global_step": state.global_step,
            "steps_per_epoch": state.steps_per_epoch, "optimizer": state.optimizer.state_dict(),
            "scheduler": scheduler_state(state.scheduler), "scaler": state.scaler.state_dict(),
            "rng": capture_rng(), "best_metric": state.best_metric, "best_epoch": state.best_epoch,
            "precision": state.precision,
        },
        "config": config_to_dict(config),
        **({"plan": dict(info.plan)} if info.plan else {}),
    }
