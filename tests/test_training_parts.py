"""Small pieces of training: schedule, loss, RNG state, validation helpers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from medresunet.inference.sliding import _pad_to_window, sliding_window_logits
from medresunet.metrics.overlap import dice_per_label
from medresunet.training.loss import SegmentationLoss, deep_supervision_weights
from medresunet.training.schedule import (
    load_scheduler_state,
    lr_factor,
    make_scheduler,
    scheduler_state,
)
from medresunet.training.state import capture_rng, epoch_seed, restore_rng
from medresunet.training.validation import Window, validate


@pytest.mark.parametrize("kind", ["poly", "cosine", "constant"])
def test_lr_factor_warmup_then_decay(kind):
    f = [lr_factor(s, 100, 10, kind) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10], strict=False))
    if kind == "constant":
        assert f[-1] == 1.0
    else:
        assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False)) and f[-1] < 0.1


def test_scheduler_state_roundtrip_and_extension():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_scheduler(opt, 10, 2, "poly")
    for _ in range(5):
        opt.step()
        sched.step()
    state = scheduler_state(sched)
    torch.save(state, "/dev/null")
    same = make_scheduler(torch.optim.SGD([p], lr=1.0), 10, 2, "poly")
    load_scheduler_state(same, state)
    assert same.get_last_lr()[0] == pytest.approx(lr_factor(5, 10, 2, "poly"))
    longer = make_scheduler(torch.optim.SGD([p], lr=1.0), 20, 2, "poly")
    load_scheduler_state(longer, state)
    assert longer.last_epoch == 5
    assert longer.get_last_lr()[0] == pytest.approx(lr_factor(5, 20, 2, "poly"))


def test_loss_deep_supervision():
    assert sum(deep_supervision_weights(3)) == pytest.approx(1.0)
    assert deep_supervision_weights(3)[0] == pytest.approx(4 / 7)
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    perfect = torch.cat([1 - target, target], 1) * 20 - 10
    loss = SegmentationLoss()
    assert float(loss(perfect, target)) < 0.01
    low = torch.nn.functional.max_pool2d(perfect, 2)
    assert float(loss((perfect, low), target)) < 0.05
    assert float(loss(-perfect, target)) > 1.0


def test_rng_capture_restore():
    state = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert epoch_seed(0, 1) != epoch_seed(0, 2) and epoch_seed(3, 1) == epoch_seed(3, 1)


def test_dice_and_padding():
    ref = torch.zeros(4, 4, dtype=torch.long)
    ref[:2] = 1
    pred = torch.zeros_like(ref)
    pred[:1] = 1
    d = dice_per_label(pred.numpy(), ref.numpy(), [1, 2])
    assert d[1] == pytest.approx(2 * 4 / 12) and math.isnan(d[2])
    image = torch.zeros(1, 2, 3, 5)
    padded, crop = _pad_to_window(image, (6, 4), [-1.0, -2.0])
    assert padded.shape == (1, 2, 6, 5)
    assert padded[0, 0, 0, 0] == -1.0 and padded[0, 1, 0, 0] == -2.0
    assert torch.equal(padded[(slice(None), slice(None), *crop)], image)


def test_sliding_window_2d_model_over_volume():
    net = torch.nn.Conv2d(1, 2, 1)
    vol = torch.randn(1, 1, 10, 9, 3)
    out = sliding_window_logits(vol, net, (8, 8), network_dims=2, overlap=0.25, cval=[0.0], device=torch.device("cpu"))
    assert out.shape == (1, 2, 10, 9, 3)
    with torch.no_grad():
        ref = torch.stack([net(vol[..., k]) for k in range(3)], -1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_validation_uses_the_inference_window_and_the_report_dice():
    import medresunet.inference.sliding as sliding
    import medresunet.metrics.overlap as overlap
    import medresunet.training.validation as validation

    assert validation.sliding_window_logits is sliding.sliding_window_logits  # one sliding window
    assert validation.dice_per_label is overlap.dice_per_label  # one Dice

    class Threshold(torch.nn.Module):  # logits (background, foreground) of image > 0.5
        def forward(self, x):
            return torch.cat([0.5 - x, x - 0.5], 1) * 10

    label = torch.zeros(1, 12, 10, 3, dtype=torch.long)
    label[:, 3:9, 2:7] = 1
    volumes = [{"image": label.float(), "label": label}]
    for dims, patch in ((3, (8, 8, 4)), (2, (8, 8))):
        res = validate(Threshold(), volumes, {"background": 0, "fg": 1, "absent": 2},
                       Window(patch, dims, overlap=0.25, sw_batch_size=1), [0.0], torch.device("cpu"))
        assert res["dice"]["fg"] == pytest.approx(1.0) and math.isnan(res["dice"]["absent"])
        assert res["n_cases"] == 1 and res["dice_mean"] == pytest.approx(1.0)
