"""The planned schedule: steps per epoch, epochs, validation cadence and learning rate.

An epoch is a fixed number of steps (not one pass over the cases: with four training
cases that would be three steps, each followed by a validation). With a time budget the
epochs fill :data:`~medresunet.planning.planner.TRAIN_FRACTION` of it at the measured
step time, and the patch validations (one patch-sized crop per validation case around its
foreground) take at most :data:`~medresunet.planning.planner.VAL_FRACTION`; the
whole-volume validation runs once, at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GPU_STEPS_PER_EPOCH = 250     # nnU-Net's epoch
NO_BUDGET_EPOCHS = {"cuda": 1000, "cpu": 100}
MIN_STEPS_PER_EPOCH = 10
FORWARD_SHARE = 0.5           # a validation forward of one patch vs a training step (conservative)


@dataclass(frozen=True)
class Schedule:
    """The planned numbers of a run and why."""

    epochs: int
    steps_per_epoch: int
    val_interval: int
    lr: float
    reasons: tuple[tuple[str, str], ...]


def plan_schedule(device: str, budget_s: float | None, expected: int | None, step_seconds: float | None,
                  n_val_cases: int, val_fraction: float, target_epochs: int) -> Schedule:
    """Steps per epoch, epochs, validation interval (epochs) and learning rate.

    Args:
        device: ``cpu`` or ``cuda``.
        budget_s: the wall-clock budget (s) or None.
        expected: training steps the budget allows (None without a budget).
        step_seconds: measured seconds per step (None when not measured).
        n_val_cases: validation crops (a patch validation runs one forward per crop).
        val_fraction: the share of the budget the patch validations may take.
        target_epochs: epochs of a budget run.
    """
    if expected is None or budget_s is None or step_seconds is None:
        spe, epochs = GPU_STEPS_PER_EPOCH, NO_BUDGET_EPOCHS.get(device, 100)
        how = f"no --max-minutes: {epochs} epochs of {spe} steps on {device} (nnU-Net trains 1000 on a GPU)"
        reasons = [("train.steps_per_epoch", f"{spe} steps: a fixed epoch, not one pass over the cases"),
                   ("train.epochs", how), ("train.val_interval", "a patch validation every epoch")]
        return Schedule(epochs, spe, 1, 1e-3, (*reasons, ("train.lr", "1e-3 (AdamW) for a long run")))
    expected = max(1, int(expected))
    spe = max(MIN_STEPS_PER_EPOCH, min(GPU_STEPS_PER_EPOCH, round(expected / target_epochs)))
    epochs = max(1, expected // spe)
    val_cost = n_val_cases * step_seconds * FORWARD_SHARE
    n_vals = epochs if val_cost <= 0 else max(1, int(val_fraction * budget_s / val_cost))
    interval = max(1, math.ceil(epochs / min(epochs, n_vals)))
    lr = 3e-3 if expected < 5000 else 1e-3
    reasons = (
        ("train.steps_per_epoch", f"{spe} steps: about {target_epochs} epochs in the budget"),
        ("train.epochs", f"{epochs} epochs x {spe} steps = the {expected} steps that "
                         f"{budget_s / 60:g} min allow at {step_seconds:.3f} s/step measured"),
        ("train.val_interval", f"a patch validation every {interval} epoch(s): <= {val_fraction:.0%} of the "
                               "budget; the whole-volume validation runs at the end"),
        ("train.lr", f"{lr:g} (AdamW), poly decay to the last planned step"
                     + (": a short run needs the larger rate" if lr > 1e-3 else "")),
    )
    return Schedule(epochs, spe, interval, lr, reasons)
