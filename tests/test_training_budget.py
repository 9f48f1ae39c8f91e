"""Tests of medresunet.training.budget: re-fitted epochs, patch validation crops, the new horizon."""

from __future__ import annotations

import torch

from medresunet.training.budget import (
    mean_epoch_seconds,
    patch_crops,
    rebuild_scheduler,
    refit_epochs,
)
from medresunet.training.schedule import make_scheduler


def test_refit_epochs_fills_the_remaining_budget():
    assert refit_epochs(2, elapsed_s=20.0, budget_s=100.0, epoch_s=10.0, planned=50) == 2 + int(0.98 * 80 / 10)
    assert refit_epochs(2, elapsed_s=99.0, budget_s=100.0, epoch_s=10.0, planned=50) == 3  # one more at least
    assert refit_epochs(2, elapsed_s=120.0, budget_s=100.0, epoch_s=10.0, planned=50) == 2  # spent
    assert refit_epochs(2, 20.0, 100.0, 0.0, planned=7) == 7
    assert mean_epoch_seconds([30.0, 10.0, 12.0]) == 11.0 and mean_epoch_seconds([5.0]) == 5.0


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
