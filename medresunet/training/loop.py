"""The training loop: Dice+CE, AdamW, warm-up + decay, AMP, clipping, validation, resume.

:func:`train` takes explicit arguments (the resolved :class:`~medresunet.config.Config`,
the network, its :class:`~medresunet.training.run_state.TrainData` and
:class:`~medresunet.training.run_state.ModelInfo`, the run folder) and does no argument
parsing and no printing; :mod:`medresunet.training.prepare` builds those from a manifest
and ``pipelines/train.py`` wires it to the command line. It runs in pieces over a
:class:`~medresunet.training.run_state.TrainState`: build (and resume) the state, then per
epoch :func:`run_epoch` (a loader re-seeded per epoch, :func:`train_step` per batch, whose
:func:`optimizer_step` owns backward, scaling, clipping and the schedule step) and
:func:`end_epoch` (:func:`validate_epoch`, :func:`save_checkpoints`, :func:`log_epoch`).

Determinism and resume: at the start of every epoch the data pipeline (MONAI transform
random states, the DataLoader's shuffling and worker seeds) and the global RNGs are
re-seeded from ``(seed, epoch)``, so an epoch's patches and dropout masks do not depend
on earlier epochs. A run resumed from ``last.pt`` (model, optimizer, scheduler, scaler,
epoch, step and RNG states restored) therefore continues exactly as an uninterrupted
run of the same seed. A run stopped by the ``max_minutes`` budget ends its current
epoch early; its resume starts at the next epoch.

Distributed (``dist`` of more than one rank, see :mod:`medresunet.training.distributed`): the model
is wrapped in ``DistributedDataParallel``; ``train_data`` holds this rank's own share of
the cases; every step is one optimizer step over the global batch (``train.batch_size``
patches per rank, times the world size), and an epoch has the same number of steps on
every rank. The per-epoch seeds of rank ``r`` use the streams ``3r .. 3r+2`` (rank 0 those
of a single-process run), so resume stays exact per rank. Rank 0 alone validates, logs
and writes checkpoints (of the unwrapped module: the same keys as a single-process run);
it broadcasts the validation result, the best metric and the budget stop so that every
rank makes the same decisions.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medresunet.config import Config
from medresunet.devices import autocast
from medresunet.training import accelerator, budget
from medresunet.training import distributed as _dist
from medresunet.training.checkpoint import load_checkpoint, save_checkpoint
from medresunet.training.logs import TrainingLog
from medresunet.training.progress import write_progress
from medresunet.training.run_state import (
    ModelInfo,
    TrainData,
    TrainOptions,
    TrainState,
    checkpoint_payload,
    new_state,
    resume_state,
)
from medresunet.training.state import epoch_seed, seed_everything
from medresunet.training.validation import Window, validate

__all__ = ["ModelInfo", "TrainData", "TrainOptions", "TrainResult", "TrainState", "steps_per_epoch", "train"]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a call of :func:`train` did.

    ``seconds`` is the wall-clock time of the call (validations and checkpoints included);
    ``step_seconds`` the part spent in the epochs' training steps (data loading included);
    ``start_epoch`` the epoch the call started from (0, or the resumed epoch).
    """

    run_dir: Path
    epochs_done: int
    global_step: int
    best_metric: float
    best_epoch: int
    last_val: dict[str, Any] | None
    stopped_by_budget: bool
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)
    step_seconds: float = 0.0
    start_epoch: int = 0


@dataclass
class _Run:
    """The fixed inputs of one :func:`train` call, and its log and progress bar."""

    config: Config
    data: TrainData
    info: ModelInfo
    run_dir: Path
    device: torch.device
    options: TrainOptions
    dist: _dist.DistInfo
    t0: float = 0.0
    log: TrainingLog | None = None
    bar: Any = None
    start_epoch: int = 0  # the epoch this call started from (its --max-minutes counts from there)
    patch_val: list[dict[str, Any]] | None = None  # train.val_mode patch: the crops validated on
    epoch_seconds: list[float] = field(default_factory=list)
    step_seconds: float = 0.0  # in training steps (run_epoch), validations and checkpoints left out
    lr_horizon: int = 0  # train.fit_budget: the steps the LR decays over, as last re-fitted (0: as planned)

    @property
    def main(self) -> bool:
        return self.dist.is_main


def steps_per_epoch(config: Config, n_train_items: int, world_size: int = 1) -> int:
    """``train.steps_per_epoch``, or one pass over the training patches (>= 1).

    ``n_train_items`` counts the cases of all ranks; a step takes ``train.batch_size``
    patches on each of the ``world_size`` ranks.
    """
    if config.train.steps_per_epoch:
        return int(config.train.steps_per_epoch)
    patches = n_train_items * config.data.samples_per_volume
    return max(1, math.ceil(patches / (config.train.batch_size * max(1, world_size))))


def _seed_data(dataset: Any, seed: int) -> None:
    """Set the MONAI random state of a dataset's transforms (in-process loading)."""
    for obj in (dataset, getattr(dataset, "transform", None)):
        if obj is not None and hasattr(obj, "set_random_state"):
            obj.set_random_state(seed=seed)
            return


def _as_batch(batch: Mapping[str, Any], state: TrainState, spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.as_tensor(batch["image"]).as_subclass(torch.Tensor).float()
    label = torch.as_tensor(batch["label"]).as_subclass(torch.Tensor)
    if spatial_dims == 2 and image.ndim == 5 and image.shape[-1] == 1:  # 2D patches as (H, W, 1)
        image, label = image[..., 0], label[..., 0]
    image = image.to(state.device, non_blocking=True)
    label = label.to(state.device, non_blocking=True)
    if state.memory_format is not None:
        image = image.contiguous(memory_format=state.memory_format)
    return image, label


def train(config: Config, model: torch.nn.Module, data: TrainData, info: ModelInfo, run_dir: str | Path,
          device: torch.device, options: TrainOptions | None = None,
          dist: _dist.DistInfo | None = None) -> TrainResult:
    """Train ``model`` and write ``last.pt``, ``best.pt`` and ``log.csv`` in ``run_dir``.

    Args:
        config: the resolved config; ``config.train.epochs`` is the total number of epochs
            of the run (on resume it may exceed the checkpoint's: the run is extended and
            the LR schedule recomputed over the new horizon, see ``training.schedule``).
        model: a freshly built network matching ``info.kwargs`` (weights are loaded from
            ``last.pt`` on resume).
        data: training dataset, validation volumes and padding background.
        info: what the checkpoints record beside the weights (hyper-parameters, labels,
            input channels, preprocessing).
        run_dir: the run folder (created).
        device: torch device.
        options: resume, budget, progress, early stop, per-epoch callback.
        dist: the process group this rank belongs to (``None``: a single process).
            ``data.train`` is then this rank's share of the training cases, and only
            rank 0 writes files and shows progress.

    Returns:
        A :class:`TrainResult`.
    """
    run = _Run(config=config, data=data, info=info, run_dir=Path(run_dir), device=device,
               options=options or TrainOptions(), dist=dist or _dist.SINGLE)
    state = _start(run, model)
    run.t0 = time.monotonic()
    run.bar = tqdm(total=max(0, (state.total_epochs - state.epoch) * state.steps_per_epoch),
                   disable=run.options.quiet or not run.main, unit="it", desc="train",
                   dynamic_ncols=True, leave=True)
    state.model.train()
    try:
        for epoch in itertools.count(state.epoch):
            if epoch >= state.total_epochs:  # (re-fitted to the budget after each epoch with train.fit_budget)
                break
            e_start = time.monotonic()
            losses = run_epoch(run, state, epoch)
            run.step_seconds += time.monotonic() - e_start
            fit_budget(run, state, time.monotonic() - e_start)
            if end_epoch(run, state, losses, time.monotonic() - e_start):
                break
            run.epoch_seconds.append(time.monotonic() - e_start)
    finally:
        run.bar.close()
        if run.log is not None:
            run.log.close()
    return _finish(run, state)


def _start(run: _Run, model: torch.nn.Module) -> TrainState:
    """Build the state (resumed from ``last.pt`` if asked), wrap for DDP, open the log."""
    if run.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
    tc, dist = run.config.train, run.dist
    n_items = int(_dist.all_reduce_sum(dist, [len(run.data.train)])[0])
    n_steps = steps_per_epoch(run.config, n_items, dist.world_size)
    seed_everything(tc.seed)
    state = new_state(run.config, model, run.device, n_steps)
    if run.options.resume:
        resume_state(state, run.run_dir / "last.pt")
    if accelerator.use_cudnn_benchmark(run.device):
        torch.backends.cudnn.benchmark = True  # one patch size: each convolution is timed once
    if dist.enabled:
        state.model = accelerator.wrap_ddp(state.core, run.device)
        state.grads_in_buckets = True
    logger.info("batch: %d patches per rank x %d rank(s) = global batch %d; lr %g (not scaled with the "
                "world size); %d steps per epoch", tc.batch_size, dist.world_size,
                tc.batch_size * dist.world_size, tc.lr, n_steps)
    if state.epoch >= state.total_epochs:
        logger.warning("%s: already trained %d of %d epochs; nothing to do (use --epochs to extend)",
                       run.run_dir, state.epoch, state.total_epochs)
    run.start_epoch = state.epoch
    if run.main:
        run.log = TrainingLog(run.run_dir, run.info.label_names,
                              resume_epoch=state.epoch if run.options.resume else None)
    if tc.val_mode == "patch" and run.main and run.data.val is not None and len(run.data.val) > 0:
        run.patch_val = budget.patch_crops(run.data.val, run.config.data.patch_size, run.config.model.spatial_dims)
    return state


def fit_budget(run: _Run, state: TrainState, seconds: float) -> None:
    """With ``train.fit_budget`` and a budget: re-fit the steps (LR horizon) and epochs to what is left.

    ``seconds``: the epoch just run; earlier epochs count with their validations. The
    horizon may end inside the last epoch (the budget ends the run there).
    """
    if not run.config.train.fit_budget or run.options.max_minutes is None or state.stopped_by_budget:
        return
    n_steps, tc = state.steps_per_epoch, run.config.train
    step_s = budget.mean_epoch_seconds(run.epoch_seconds or [seconds]) / max(1, n_steps)
    horizon = int(_dist.broadcast_object(run.dist, budget.refit_steps(
        state.global_step, time.monotonic() - run.t0, 60.0 * float(run.options.max_minutes), step_s,
        run.lr_horizon or state.total_epochs * n_steps)))
    if horizon == run.lr_horizon:
        return
    fitted = max(state.epoch + (horizon > state.global_step), math.ceil(horizon / n_steps))
    logger.info("budget: %d steps fit (%.3f s/step), %d epochs; the LR decays over them", horizon, step_s, fitted)
    run.lr_horizon, state.total_epochs = horizon, fitted
    state.scheduler = budget.rebuild_scheduler(state.scheduler, horizon, tc.warmup_epochs * n_steps, tc.schedule)
    run.bar.total = run.bar.n + max(0, fitted - state.epoch) * n_steps


def _epoch_loader(run: _Run, epoch: int) -> Any:
    """The epoch's DataLoader, with data, shuffling and global RNGs seeded from ``(seed, epoch)``."""
    from monai.data import DataLoader

    seed, stream = run.config.train.seed, 3 * run.dist.rank  # rank 0: the streams of a single process
    seed_everything(epoch_seed(seed, epoch, stream))
    _seed_data(run.data.train, epoch_seed(seed, epoch, stream + 1))
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, stream + 2))
    items_per_batch = max(1, math.ceil(run.config.train.batch_size / run.config.data.samples_per_volume))
    loading = accelerator.loader_settings(run.config.data.num_workers, run.device)
    return DataLoader(run.data.train, batch_size=items_per_batch, shuffle=True, drop_last=False,
                      generator=gen, persistent_workers=False, **loading.kwargs())


def run_epoch(run: _Run, state: TrainState, epoch: int) -> list[float]:
    """Epoch ``epoch`` (0-based): ``state.steps_per_epoch`` steps, or fewer if the budget ends it.

    Returns:
        The loss of each step taken; ``state.epoch`` is ``epoch + 1`` afterwards.
    """
    loader = _epoch_loader(run, epoch)
    batches = iter(loader)
    losses: list[float] = []
    throughput = accelerator.Throughput(run.device)
    budget_s = None if run.options.max_minutes is None else max(0.0, float(run.options.max_minutes) * 60.0)
    for _ in range(state.steps_per_epoch):
        try:
            batch = next(batches)
        except StopIteration:  # fewer batches than steps: another pass
            batches = iter(loader)
            batch = next(batches)
        losses.append(train_step(state, *_as_batch(batch, state, run.config.model.spatial_dims)))
        throughput.step()
        run.bar.update(1)
        run.bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}", refresh=False)
        if budget_s is not None:
            over = time.monotonic() - run.t0 >= budget_s
            if _dist.broadcast_object(run.dist, over):  # rank 0's clock decides for all
                state.stopped_by_budget = True
                break
    state.epoch = epoch + 1
    state.figures = throughput.figures()
    return losses


def train_step(state: TrainState, image: torch.Tensor, label: torch.Tensor) -> float:
    """One optimizer step on a batch ``(B, C, *patch)`` / ``(B, 1, *patch)``; returns its loss."""
    state.optimizer.zero_grad(set_to_none=not state.grads_in_buckets)
    with autocast(state.device, state.precision):
        logits = state.model(image)
    loss = state.loss_fn(logits, label)
    optimizer_step(state, loss)
    state.global_step += 1
    return float(loss.detach())


def optimizer_step(state: TrainState, loss: torch.Tensor) -> None:
    """Backward (through the gradient scaler), optional clipping, optimizer and schedule step."""
    state.scaler.scale(loss).backward()
    if state.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.core.parameters(), state.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()


def end_epoch(run: _Run, state: TrainState, losses: list[float], seconds: float) -> bool:
    """Validation, checkpoints and logs after an epoch; returns whether the run stops now."""
    stop_after = run.options.stop_after_epoch
    early = stop_after is not None and state.epoch >= stop_after
    last = state.epoch == state.total_epochs or state.stopped_by_budget or early
    val = validate_epoch(run, state, last=last)
    save_checkpoints(run, state)
    record = log_epoch(run, state, losses, seconds, val)
    if run.log is not None and (val is not None or last):  # RUN/progress.png, from log.csv
        write_progress(run.run_dir, run.options.max_minutes, run.start_epoch)
    if run.options.on_epoch_end is not None and run.main:
        run.options.on_epoch_end(record)
    if state.stopped_by_budget:
        logger.warning("the --max-minutes budget (%.1f min) ended the run after epoch %d, step %d",
                       run.options.max_minutes, state.epoch, state.global_step)
    return state.stopped_by_budget or early


def validate_epoch(run: _Run, state: TrainState, last: bool) -> dict[str, Any] | None:
    """Validate on rank 0 when due (every ``train.val_interval`` epochs and at the last one).

    A new best mean Dice writes ``best.pt``. Every rank returns the same result (``None``
    when no validation ran) and holds the same best metric.
    """
    tc, val = run.config.train, None
    if run.main and run.data.val is not None and len(run.data.val) > 0 and (state.epoch % tc.val_interval == 0 or last):
        window = Window(run.config.data.patch_size, run.config.model.spatial_dims, tc.val_overlap,
                        max(1, run.config.infer.sw_batch_size), state.precision)
        # train.val_mode patch: patches during training (progress only), whole volumes at the end
        whole = run.patch_val is None or last
        volumes = run.data.val if whole else run.patch_val
        val = validate(state.core, volumes, run.info.labels, window, run.data.background, run.device)
        if whole and not math.isnan(val["dice_mean"]) and val["dice_mean"] > state.best_metric:
            state.best_metric, state.best_epoch = val["dice_mean"], state.epoch
            save_checkpoint(run.run_dir / "best.pt", checkpoint_payload(state, run.info, run.config))
            logger.debug("new best mean Dice %.4f at epoch %d", state.best_metric, state.best_epoch)
        run.bar.set_postfix(epoch=state.epoch, val_dice=f"{val['dice_mean']:.3f}", refresh=True)
    # the other ranks wait here while rank 0 validates; all then agree on the result
    val, state.best_metric, state.best_epoch = _dist.broadcast_object(
        run.dist, (val, state.best_metric, state.best_epoch))
    if val is not None:
        state.last_val = val
    return val


def save_checkpoints(run: _Run, state: TrainState) -> None:
    """Write ``last.pt`` of the epoch just done (rank 0)."""
    if run.main:
        save_checkpoint(run.run_dir / "last.pt", checkpoint_payload(state, run.info, run.config))


def log_epoch(run: _Run, state: TrainState, losses: list[float], seconds: float,
              val: dict[str, Any] | None) -> dict[str, Any]:
    """Append the epoch to ``log.csv`` (rank 0) and return its record (the same on every rank)."""
    loss_sum, loss_n = _dist.all_reduce_sum(run.dist, [sum(losses), len(losses)])
    train_loss = float(loss_sum / loss_n) if loss_n else float("nan")  # mean over all ranks
    figures = state.figures or {}
    if run.log is not None:
        run.log.add(state.epoch, state.global_step, train_loss, state.lr, seconds, val, figures)
    gpu = figures.get("gpu_mem_gb")
    logger.info("epoch %d: %.2f steps/s%s", state.epoch, figures.get("steps_per_s", float("nan")),
                "" if gpu is None else f", peak GPU memory {gpu:.2f} GB")
    if val is not None:
        logger.info("epoch %d/%d: loss %.4f, val mean Dice %.4f %s", state.epoch, state.total_epochs,
                    train_loss, val["dice_mean"], " ".join(f"{k}={v:.3f}" for k, v in val["dice"].items()))
    else:
        logger.debug("epoch %d/%d: loss %.4f", state.epoch, state.total_epochs, train_loss)
    return {"epoch": state.epoch, "step": state.global_step, "train_loss": train_loss, "lr": state.lr, "val": val}


def _finish(run: _Run, state: TrainState) -> TrainResult:
    run_dir = run.run_dir
    if run.main and not (run_dir / "best.pt").exists() and (run_dir / "last.pt").exists():
        # no validation ran (no validation cases): best.pt is the last state
        save_checkpoint(run_dir / "best.pt", load_checkpoint(run_dir / "last.pt"))
    _dist.barrier(run.dist)  # rank 0's files are complete before any rank returns
    outputs = {n: str(run_dir / n) for n in ("last.pt", "best.pt", "log.csv") if (run_dir / n).exists()}
    return TrainResult(run_dir=run_dir, epochs_done=state.epoch, global_step=state.global_step,
                       best_metric=state.best_metric, best_epoch=state.best_epoch, last_val=state.last_val,
                       stopped_by_budget=state.stopped_by_budget, seconds=time.monotonic() - run.t0,
                       outputs=outputs, step_seconds=run.step_seconds,
                       start_epoch=run.start_epoch)
