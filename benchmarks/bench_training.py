"""Training step: medresunet's settings against an fp32 MONAI-style loop, same network and data.

Both sides start from the same weights (``configs/3d.yaml`` ResidualUNet, seed 0, 1 channel,
3 classes) and see the same batches (batch 2 of 96^3 CT-like phantom patches; quick: 64^3):

* baseline: fp32, contiguous tensors, the same loss (``SegmentationLoss``: MONAI's
  ``DiceCELoss`` with softmax and one-hot labels), ``torch.optim.AdamW`` -- the loop of
  MONAI's tutorials, so the two loss curves compare directly;
* medresunet: the training loop's settings (``TrainConfig`` defaults): precision ``auto``
  (bf16 autocast on CPUs with native bf16, else fp32), channels-last, ``SegmentationLoss``
  (Dice + CE), AdamW with the config's weight decay, gradient clipping at ``grad_clip``.

Reported: seconds per step (median after a warm-up step) and their ratio, peak memory, and
the loss of every step on both sides ("equal loss behaviour": same start, same trend).

``python benchmarks/bench_training.py [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

FULL = {"patch": 96, "steps": 6}
QUICK = {"patch": 64, "steps": 4}
TINY = {"patch": 16, "steps": 3}
BATCH = 2
N_CLASSES = 3


def make_batches(patch: int, n: int = 2, seed: int = 0) -> list[tuple[Any, Any]]:
    """``n`` batches of ``BATCH`` CT-like phantom patches ``(B, 1, p, p, p)`` with labels."""
    import torch

    from medresunet.data.phantoms import make_phantom_case

    out = []
    for i in range(n):
        images, labels = [], []
        for j in range(BATCH):
            case = make_phantom_case(seed + 10 * i + j, shape=(patch,) * 3, spacing=(3.0, 3.0, 3.0))
            image = (np.clip(case.image, -200.0, 300.0) - 50.0) / 100.0
            images.append(torch.from_numpy(image.astype(np.float32))[None])
            labels.append(torch.from_numpy(np.minimum(case.label, N_CLASSES - 1).astype(np.int64))[None])
        out.append((torch.stack(images), torch.stack(labels)))
    return out


def _train(model: Any, batches: list, steps: int, *, precision: str, channels_last: bool,
           loss_fn: Any, weight_decay: float, grad_clip: float | None, lr: float) -> dict[str, Any]:
    import torch

    from benchmarks.common import PeakMemory
    from medresunet.devices import autocast

    device = torch.device("cpu")
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses, times = [], []
    with PeakMemory() as mem:
        for step in range(steps + 1):  # step 0 warms up (oneDNN primitives, allocator)
            image, label = batches[step % len(batches)]
            image = image.contiguous(memory_format=fmt)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                logits = model(image)
            loss = loss_fn(logits, label)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            if step > 0:
                times.append(time.perf_counter() - start)
    return {"s_per_step": statistics.median(times), "step_times_s": [round(t, 3) for t in times],
            "losses": [round(v, 5) for v in losses], "peak_mb": mem.peak_mb, "added_mb": mem.delta_mb}


def run(quick: bool = False, tiny: bool = False) -> dict[str, Any]:
    """Measure both loops; return the figures (``speedup_vs_fp32_baseline`` first)."""
    import torch

    from benchmarks.bench_sliding_window import make_network
    from benchmarks.common import load_average
    from medresunet.config import TrainConfig
    from medresunet.devices import resolve_precision
    from medresunet.training.loss import SegmentationLoss

    cfg = TINY if tiny else QUICK if quick else FULL
    from medresunet.training.accelerator import use_channels_last

    tc = TrainConfig()
    precision = resolve_precision(tc.precision, torch.device("cpu"))
    channels_last = use_channels_last(tc.channels_last, torch.device("cpu"))
    batches = make_batches(cfg["patch"])
    model = make_network(tiny)

    base = _train(copy.deepcopy(model), batches, cfg["steps"], precision="fp32", channels_last=False,
                  loss_fn=SegmentationLoss(), weight_decay=tc.weight_decay, grad_clip=tc.grad_clip,
                  lr=tc.lr)
    fast = _train(copy.deepcopy(model), batches, cfg["steps"], precision=precision,
                  channels_last=channels_last, loss_fn=SegmentationLoss(),
                  weight_decay=tc.weight_decay, grad_clip=tc.grad_clip, lr=tc.lr)
    diffs = [abs(a - b) for a, b in zip(base["losses"], fast["losses"], strict=True)]
    return {
        "speedup_vs_fp32_baseline": round(base["s_per_step"] / fast["s_per_step"], 3),
        "medresunet_s_per_step": round(fast["s_per_step"], 3),
        "baseline_fp32_s_per_step": round(base["s_per_step"], 3),
        "medresunet_step_times_s": fast["step_times_s"],
        "baseline_step_times_s": base["step_times_s"],
        "precision": precision,
        "channels_last": channels_last,
        "batch": [BATCH, 1, cfg["patch"], cfg["patch"], cfg["patch"]],
        "losses": {"medresunet": fast["losses"], "baseline": base["losses"],
                   "max_abs_diff": round(max(diffs), 5),
                   "note": "same loss function, weights and batches; step 0 is the warm-up "
                           "step (not timed)"},
        "peak_memory_mb": {"medresunet": round(fast["peak_mb"], 1),
                           "medresunet_added": round(fast["added_mb"], 1),
                           "baseline": round(base["peak_mb"], 1),
                           "baseline_added": round(base["added_mb"], 1)},
        "load_average": load_average(),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv, tiny="--tiny" in sys.argv), indent=2))
