"""The training loop: Dice+CE, AdamW, warm-up + decay, AMP, clipping, validation, resume.

:func:`train` takes explicit arguments (the resolved :class:`~medresunet.config.Config`,
datasets, the preprocessing, the run folder) and does no argument parsing and no
printing; ``pipelines/train.py`` wires it to the command line.

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

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import medresunet
from medresunet.config import Config, config_to_dict
from medresunet.devices import autocast, resolve_precision
from medresunet.errors import CheckpointError
from medresunet.training import distributed as _dist
from medresunet.training.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from medresunet.training.logs import TrainingLog
from medresunet.training.loss import SegmentationLoss
from medresunet.training.schedule import load_scheduler_state, make_scheduler, scheduler_state
from medresunet.training.state import capture_rng, epoch_seed, restore_rng, seed_everything
from medresunet.training.validation import Background, validate

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a call of :func:`train` did."""

    run_dir: Path
    epochs_done: int
    global_step: int
    best_metric: float
    best_epoch: int
    last_val: dict[str, Any] | None
    stopped_by_budget: bool
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)


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


def _memory_format(spatial_dims: int, enabled: bool) -> torch.memory_format | None:
    if not enabled:
        return None
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def _as_batch(batch: Mapping[str, Any], spatial_dims: int, device: torch.device,
              fmt: torch.memory_format | None) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.as_tensor(batch["image"]).as_subclass(torch.Tensor).float()
    label = torch.as_tensor(batch["label"]).as_subclass(torch.Tensor)
    if spatial_dims == 2 and image.ndim == 5 and image.shape[-1] == 1:  # 2D patches as (H, W, 1)
        image, label = image[..., 0], label[..., 0]
    image = image.to(device, non_blocking=True)
    label = label.to(device, non_blocking=True)
    if fmt is not None:
        image = image.contiguous(memory_format=fmt)
    return image, label


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def train(
    *,
    config: Config,
    model: torch.nn.Module,
    model_kwargs: dict[str, Any],
    train_data: Any,
    val_data: Sequence[Mapping[str, Any]],
    labels: Mapping[str, int],
    input_channels: Sequence[str],
    preprocessing: Any,
    background: Background,
    run_dir: str | Path,
    device: torch.device,
    resume: bool = False,
    max_minutes: float | None = None,
    quiet: bool = False,
    stop_after_epoch: int | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    dist: _dist.DistInfo | None = None,
) -> TrainResult:
    """Train ``model`` and write ``last.pt``, ``best.pt`` and ``log.csv`` in ``run_dir``.

    Args:
        config: the resolved config; ``config.train.epochs`` is the total number of epochs
            of the run (on resume it may exceed the checkpoint's: the run is extended and
            the LR schedule recomputed over the new horizon, see ``training.schedule``).
        model: a freshly built network matching ``model_kwargs`` (weights are loaded from
            ``last.pt`` on resume).
        model_kwargs: the network's plain hyper-parameters (``networks.network_kwargs``).
        train_data: a map-style dataset of training items ``{"image", "label"}``, each a
            list of ``data.samples_per_volume`` random patches ``(C, *patch)`` (or one dict).
        val_data: preprocessed whole volumes ``{"image": (C, *spatial), "label": (1, *spatial)}``.
        labels: name -> value, with ``background: 0``.
        input_channels: modality per input channel.
        preprocessing: object with ``to_dict()`` (stored in the checkpoint).
        background: normalised background intensity per input channel (window padding),
            or a function of a validation image giving it.
        run_dir: the run folder (created).
        device: torch device.
        resume: continue from ``run_dir/last.pt``.
        max_minutes: wall-clock budget of this call; training stops at the end of the step
            that crosses it, validates and writes its checkpoints.
        quiet: no progress bar.
        stop_after_epoch: stop (as if interrupted) once this epoch (1-based) is done,
            without changing the planned horizon; for tests and staged runs.
        on_epoch_end: called with the epoch's log record (on rank 0).
        dist: the process group this rank belongs to (``None``: a single process).
            ``train_data`` is then this rank's share of the training cases, and only
            rank 0 writes files and shows progress.

    Returns:
        A :class:`TrainResult`.
    """
    from monai.data import DataLoader

    run_dir = Path(run_dir)
    dist = dist or _dist.SINGLE
    main = dist.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    tc = config.train
    spatial_dims = config.model.spatial_dims
    precision = resolve_precision(tc.precision, device)
    fmt = _memory_format(spatial_dims, tc.channels_last)
    n_items = int(_dist.all_reduce_sum(dist, [len(train_data)])[0])
    n_steps = steps_per_epoch(config, n_items, dist.world_size)
    total_epochs = tc.epochs
    items_per_batch = max(1, math.ceil(tc.batch_size / config.data.samples_per_volume))

    seed_everything(tc.seed)
    model = model.to(device)
    if fmt is not None:
        model = model.to(memory_format=fmt)
    core = model  # the unwrapped module: checkpoints, validation, resume
    optimizer = torch.optim.AdamW(core.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = make_scheduler(optimizer, total_epochs * n_steps, tc.warmup_epochs * n_steps, tc.schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16" and device.type == "cuda"))
    loss_fn = SegmentationLoss()
    label_names = [n for n, v in labels.items() if v != 0]

    start_epoch, global_step = 0, 0
    best_metric, best_epoch = -math.inf, 0
    if resume:
        ckpt = load_checkpoint(run_dir / "last.pt")
        ts = ckpt.get("train_state") or {}
        try:
            model.load_state_dict(ckpt["state_dict"], strict=True)
            optimizer.load_state_dict(ts["optimizer"])
            load_scheduler_state(scheduler, ts["scheduler"])
            if ts.get("scaler"):
                scaler.load_state_dict(ts["scaler"])
            restore_rng(ts["rng"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{run_dir / 'last.pt'}: cannot resume from it ({err})") from err
        start_epoch, global_step = int(ts["epoch"]), int(ts["global_step"])
        best_metric = float(ts.get("best_metric", -math.inf))
        best_epoch = int(ts.get("best_epoch", 0))
        if ts.get("steps_per_epoch") not in (None, n_steps):
            logger.warning("steps per epoch changed from %s to %s since the checkpoint",
                           ts.get("steps_per_epoch"), n_steps)
        logger.info("resuming %s at epoch %d, step %d (run of %d epochs)", run_dir, start_epoch,
                    global_step, total_epochs)
    if dist.enabled:
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # channels-last 1x1 kernels: strides of size-1 axes differ, harmlessly
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

        model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
    logger.info("batch: %d patches per rank x %d rank(s) = global batch %d; lr %g (not scaled with the "
                "world size); %d steps per epoch", tc.batch_size, dist.world_size,
                tc.batch_size * dist.world_size, tc.lr, n_steps)
    if start_epoch >= total_epochs:
        logger.warning("%s: already trained %d of %d epochs; nothing to do (use --epochs to extend)",
                       run_dir, start_epoch, total_epochs)

    log = TrainingLog(run_dir, label_names, resume_epoch=start_epoch if resume else None) if main else None

    def payload(epoch: int) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "medresunet_version": medresunet.__version__,
            "model": model_kwargs,
            "state_dict": _plain_state_dict(core),
            "preprocessing": preprocessing.to_dict(),
            "labels": dict(labels),
            "input_channels": list(input_channels),
            "infer": config_to_dict(config.infer),
            "train_state": {
                "epoch": epoch, "epochs": total_epochs, "global_step": global_step,
                "steps_per_epoch": n_steps, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler_state(scheduler), "scaler": scaler.state_dict(),
                "rng": capture_rng(), "best_metric": best_metric, "best_epoch": best_epoch,
                "precision": precision,
            },
            "config": config_to_dict(config),
        }

    t0 = time.monotonic()
    budget_s = None if max_minutes is None else max(0.0, float(max_minutes) * 60.0)
    stopped_by_budget = False
    last_val: dict[str, Any] | None = None
    epochs_done = start_epoch
    bar = tqdm(total=max(0, (total_epochs - start_epoch) * n_steps), disable=quiet or not main, unit="it",
               desc="train", dynamic_ncols=True, leave=True)
    model.train()
    try:
        for epoch in range(start_epoch, total_epochs):
            e_start = time.monotonic()
            stream = 3 * dist.rank  # rank 0: the streams of a single-process run
            seed_everything(epoch_seed(tc.seed, epoch, stream))
            _seed_data(train_data, epoch_seed(tc.seed, epoch, stream + 1))
            gen = torch.Generator().manual_seed(epoch_seed(tc.seed, epoch, stream + 2))
            loader = DataLoader(train_data, batch_size=items_per_batch, shuffle=True, drop_last=False,
                                num_workers=config.data.num_workers, generator=gen,
                                pin_memory=device.type == "cuda",
                                persistent_workers=False)
            batches = iter(loader)
            losses: list[float] = []
            for _ in range(n_steps):
                try:
                    batch = next(batches)
                except StopIteration:
                    batches = iter(loader)
                    batch = next(batches)
                image, label = _as_batch(batch, spatial_dims, device, fmt)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, precision):
                    logits = model(image)
                loss = loss_fn(logits, label)
                scaler.scale(loss).backward()
                if tc.grad_clip and tc.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(core.parameters(), tc.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                global_step += 1
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}", refresh=False)
                if budget_s is not None:
                    over = time.monotonic() - t0 >= budget_s
                    if _dist.broadcast_object(dist, over):  # rank 0's clock decides for all
                        stopped_by_budget = True
                        break
            epochs_done = epoch + 1
            last_epoch = (epochs_done == total_epochs or stopped_by_budget
                          or (stop_after_epoch is not None and epochs_done >= stop_after_epoch))
            val = None
            if (main and val_data is not None and len(val_data) > 0
                    and (epochs_done % tc.val_interval == 0 or last_epoch)):
                val = validate(core, val_data, labels, config.data.patch_size, spatial_dims,
                               tc.val_overlap, background, device, precision,
                               sw_batch_size=max(1, config.infer.sw_batch_size))
                if not math.isnan(val["dice_mean"]) and val["dice_mean"] > best_metric:
                    best_metric, best_epoch = val["dice_mean"], epochs_done
                    save_checkpoint(run_dir / "best.pt", payload(epochs_done))
                    logger.debug("new best mean Dice %.4f at epoch %d", best_metric, best_epoch)
                bar.set_postfix(epoch=epochs_done, loss=f"{losses[-1]:.4f}",
                                val_dice=f"{val['dice_mean']:.3f}", refresh=True)
            # the other ranks wait here while rank 0 validates; all then agree on the result
            val, best_metric, best_epoch = _dist.broadcast_object(dist, (val, best_metric, best_epoch))
            if val is not None:
                last_val = val
            if main:
                save_checkpoint(run_dir / "last.pt", payload(epochs_done))
            loss_sum, loss_n = _dist.all_reduce_sum(dist, [sum(losses), len(losses)])
            train_loss = float(loss_sum / loss_n) if loss_n else float("nan")  # mean over all ranks
            lr = float(optimizer.param_groups[0]["lr"])
            if log is not None:
                log.add(epochs_done, global_step, train_loss, lr, time.monotonic() - e_start, val)
            record = {"epoch": epochs_done, "step": global_step, "train_loss": train_loss, "lr": lr, "val": val}
            if val is not None:
                logger.info("epoch %d/%d: loss %.4f, val mean Dice %.4f %s", epochs_done, total_epochs,
                            train_loss, val["dice_mean"],
                            " ".join(f"{k}={v:.3f}" for k, v in val["dice"].items()))
            else:
                logger.debug("epoch %d/%d: loss %.4f", epochs_done, total_epochs, train_loss)
            if on_epoch_end is not None and main:
                on_epoch_end(record)
            if stopped_by_budget:
                logger.warning("the --max-minutes budget (%.1f min) ended the run after epoch %d, step %d",
                               max_minutes, epochs_done, global_step)
                break
            if stop_after_epoch is not None and epochs_done >= stop_after_epoch:
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
    if main and not (run_dir / "best.pt").exists() and (run_dir / "last.pt").exists():
        # no validation ran (no validation cases): best.pt is the last state
        save_checkpoint(run_dir / "best.pt", load_checkpoint(run_dir / "last.pt"))
    _dist.barrier(dist)  # rank 0's files are complete before any rank returns
    outputs = {n: str(run_dir / n) for n in ("last.pt", "best.pt", "log.csv") if (run_dir / n).exists()}
    return TrainResult(run_dir=run_dir, epochs_done=epochs_done, global_step=global_step,
                       best_metric=best_metric, best_epoch=best_epoch, last_val=last_val,
                       stopped_by_budget=stopped_by_budget, seconds=time.monotonic() - t0,
                       outputs=outputs)
