"""Learning-rate schedule: linear warm-up, then poly, cosine or constant, per step.

The schedule is a function of ``(step, total_steps)``, stepped once per optimizer
step. A resumed run rebuilds it with the (possibly extended) total and restores the
scheduler's step counter: with the same number of epochs the learning rates are
identical to an uninterrupted run; with more epochs (``--epochs N`` on resume) the
decay is recomputed over the new horizon, so the learning rate continues from the
value the longer schedule has at the current step (it rises, like a warm restart,
then decays to zero at the new end).
"""

from __future__ import annotations

import math
from typing import Any

import torch

POLY_EXPONENT = 0.9


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based).

    Args:
        step: number of optimizer steps already taken.
        total_steps: planned number of optimizer steps of the run (>= 1).
        warmup_steps: linear warm-up length in steps (0 for none).
        kind: ``poly`` ((1 - t)^0.9), ``cosine`` or ``constant``.

    Returns:
        A factor in (0, 1].
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    if kind == "poly":
        factor = (1.0 - t) ** POLY_EXPONENT
    elif kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        raise ValueError(f"unknown schedule {kind!r}; expected poly, cosine or constant")
    return max(factor, 1e-3)  # never exactly zero: the last steps still learn a little


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                   kind: str) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`.

    Its ``state_dict`` holds only plain values (the lambda itself is not saved), so it
    goes into a ``weights_only`` checkpoint; rebuild with the new horizon, then
    ``load_state_dict`` to resume.
    """
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, kind)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scheduler_state(scheduler: torch.optim.lr_scheduler.LambdaLR) -> dict[str, Any]:
    """The scheduler's state without the (unpicklable) lambdas."""
    state = scheduler.state_dict()
    state.pop("lr_lambdas", None)
    return state


def load_scheduler_state(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict[str, Any]) -> None:
    """Restore a state from :func:`scheduler_state` and set the learning rates for its step."""
    state = dict(state)
    state["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(state)
    # recompute the current lr with this scheduler's (possibly new) horizon
    step = scheduler.last_epoch
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * fn(step)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
