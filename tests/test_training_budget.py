"""Tests of medresunet.training.budget: re-fitted epochs, patch validation crops, the new horizon."""

from __future__ import annotations

import torch

from medresunet.training.budget import (
    mean_epoch_seconds,
    patch_crops,
    rebuild_scheduler,
    refit_steps,
)
from medresunet.training.schedule import make_scheduler


def test_refit_steps_fills_the_remaining_budget():
    assert refit_steps(20, elapsed_s=20.0, budget_s=100.0, step_s=1.0, planned=500) == 20 + int(0.98 * 80 / 1.0)
    assert refit_steps(20, elapsed_s=99.5, budget_s=100.0, step_s=1.0, planned=500) == 21  # one more at least
    assert refit_steps(20, elapsed_s=120.0, budget_s=100.0, step_s=1.0, planned=500) == 20  # spent
    assert refit_steps(20, 20.0, 100.0, 0.0, planned=70) == 70
    assert mean_epoch_seconds([30.0, 10.0, 12.0]) == 11.0 and mean_epoch_seconds([5.0]) == 5.0


def test_fit_budget_decays_the_lr_to_where_the_budget_ends(monkeypatch):
    """The horizon is in steps: it may end inside an epoch, and the LR reaches its floor there."""
    from types import SimpleNamespace

    from medresunet.config import config_from_dict
    from medresunet.training import distributed, loop
    from medresunet.training.schedule import lr_factor

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, 100, 10, "poly")
    for _ in range(20):
        opt.step()
        sched.step()
    config = config_from_dict({"train": {"fit_budget": True, "warmup_epochs": 1, "schedule": "poly"}})
    run = SimpleNamespace(config=config, options=SimpleNamespace(max_minutes=1.0), epoch_seconds=[12.0, 10.0],
                          dist=distributed.SINGLE, t0=0.0, lr_horizon=0, bar=SimpleNamespace(n=20, total=100))
    state = SimpleNamespace(steps_per_epoch=10, global_step=20, epoch=2, total_epochs=10, stopped_by_budget=False,
                            scheduler=sched)
    monkeypatch.setattr(loop.time, "monotonic", lambda: 25.0)  # 35 s of 60 left at 1 s per step
    loop.fit_budget(run, state, 10.0)
    horizon = 20 + int(0.98 * 35 / 1.0)
    assert run.lr_horizon == horizon == 54 and state.total_epochs == 6  # the horizon ends inside epoch 6
    assert state.scheduler.last_epoch == 20 and run.bar.total == 20 + 4 * 10
    assert abs(opt.param_groups[0]["lr"] - lr_factor(20, horizon, 10, "poly")) < 1e-9
    for _ in range(horizon - 20):
        opt.step()
        state.scheduler.step()
    assert opt.param_groups[0]["lr"] <= 1e-3 + 1e-12  # the floor, at the last step the budget allows


def test_rebuilt_scheduler_continues_at_its_step_with_the_new_horizon():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, 100, 0, "poly")
    for _ in range(50):
        opt.step()
        sched.step()
    assert abs(opt.param_groups[0]["lr"] - 0.5**0.9) < 1e-6
    sched = rebuild_scheduler(sched, 200, 0, "poly")
    assert sched.last_epoch == 50 and abs(opt.param_groups[0]["lr"] - 0.75**0.9) < 1e-6


def test_patch_crops_one_per_label_inside_the_volume():
    label = torch.zeros(1, 40, 30, 20, dtype=torch.uint8)
    label[0, 2:6, 2:6, 2:6] = 1      # near a corner
    label[0, 30:36, 20:26, 10:14] = 2
    image = torch.randn(1, 40, 30, 20)
    crops = patch_crops([{"image": image, "label": label, "case_id": "a"}], (16, 16, 8), 3)
    assert len(crops) == 2
    for crop, value in zip(crops, (1, 2), strict=True):
        assert crop["image"].shape == (1, 16, 16, 8) and crop["label"].shape == (1, 16, 16, 8)
        assert int((crop["label"] == value).sum()) == int((label == value).sum())  # the whole organ is in it
    small = patch_crops([{"image": image[:, :8], "label": label[:, :8]}], (16, 16), 2, max_slices=4)
    assert small[0]["image"].shape == (1, 8, 16, 4)  # never larger than the volume
