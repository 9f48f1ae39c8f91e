"""Sliding-window inference: medresunet's path against MONAI's, same network, same volume.

Both sides run the ``configs/3d.yaml`` ResidualUNet (randomly initialised, seed 0; 1 input
channel, 3 classes) over the same CT-like phantom volume with 96^3 windows, overlap 0.5,
Gaussian weighting and 2 windows per forward pass:

* baseline: ``monai.inferers.sliding_window_inference`` in fp32 with the network as a plain
  PyTorch user runs it (contiguous NCDHW tensors);
* medresunet: :func:`medresunet.inference.sliding.sliding_window_logits` with the precision
  ``auto`` resolves to on this machine (bf16 only on CPUs with native bf16) and the network
  in the channels-last layout (``model.to(memory_format=torch.channels_last_3d)``).

Reported: throughput (Mvox/s) and its ratio, argmax agreement, convolution GFLOP/s (whole
sliding-window time, and time inside the convolution kernels from a profile of one forward)
as fractions of the peak measured in the same run (a 2048^2 matmul), peak memory, and where
the time of one forward goes.

``python benchmarks/bench_sliding_window.py [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import numpy as np

FULL = {"shape": (192, 192, 160), "patch": (96, 96, 96), "repeats": 2}
QUICK = {"shape": (144, 144, 96), "patch": (96, 96, 96), "repeats": 2}
TINY = {"shape": (28, 24, 20), "patch": (16, 16, 16), "repeats": 1}
OVERLAP = 0.5
SW_BATCH = 2
N_CLASSES = 3


def make_volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A CT-like phantom ``shape`` normalised as the CT preprocessing does (clip, z-score)."""
    from medresunet.data.phantoms import make_phantom_case

    case = make_phantom_case(seed, shape=shape, spacing=(1.5, 1.5, 1.5))
    image = np.clip(case.image, -200.0, 300.0)
    return ((image - 50.0) / 100.0).astype(np.float32)


def make_network(tiny: bool, seed: int = 0) -> Any:
    """The 3D preset network (tiny: 4-8-16 channels), weights seeded."""
    import torch

    from medresunet.config import load_config
    from medresunet.networks import ResidualUNet, build_network

    torch.manual_seed(seed)
    if tiny:
        return ResidualUNet(3, 1, N_CLASSES, channels=[4, 8, 16], act="leakyrelu").eval()
    return build_network(load_config("3d").model, 1, N_CLASSES).eval()


class _Counting:
    """Wrap a network; count the windows it sees."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.windows = 0

    def __call__(self, x: Any) -> Any:
        self.windows += int(x.shape[0])
        return self.net(x)


def run(quick: bool = False, tiny: bool = False) -> dict[str, Any]:
    """Measure both sides; return the figures (``speedup_vs_monai`` first)."""
    import torch
    from monai.inferers import sliding_window_inference

    from benchmarks.common import (
        PeakMemory,
        conv_flops,
        load_average,
        peak_gflops,
        profile_ops,
        time_calls,
    )
    from medresunet.devices import cpu_supports_bf16, resolve_precision
    from medresunet.inference.sliding import sliding_window_logits

    cfg = TINY if tiny else QUICK if quick else FULL
    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    volume = torch.from_numpy(make_volume(cfg["shape"]))[None, None]
    background = float(volume.min())
    patch = cfg["patch"]

    plain = make_network(tiny)
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last_3d)
    counted = _Counting(plain)

    def baseline() -> torch.Tensor:
        with torch.inference_mode():
            return sliding_window_inference(volume, patch, SW_BATCH, counted, overlap=OVERLAP,
                                            mode="gaussian", padding_mode="constant", cval=background)

    def medresunet() -> torch.Tensor:
        return sliding_window_logits(volume, fast, patch, network_dims=3, overlap=OVERLAP,
                                     sw_batch_size=SW_BATCH, cval=background, device=device,
                                     precision=precision)

    with torch.inference_mode():  # warm up both layouts (oneDNN primitive caches)
        window = volume[..., : patch[0], : patch[1], : patch[2]]
        plain(window)
        fast(window)

    with PeakMemory() as mem_base:
        ref = torch.as_tensor(baseline())
    n_windows = counted.windows
    with PeakMemory() as mem_fast:
        out = medresunet()
    agreement = float((ref.argmax(1) == out.argmax(1)).float().mean())
    max_abs_logit_diff = float((ref - out).abs().max())
    del ref, out

    t_base: list[float] = []
    t_fast: list[float] = []
    for _ in range(cfg["repeats"]):  # interleaved so that load drift hits both sides alike
        t_base.append(time_calls(baseline, repeats=1, warmup=0)["best_s"])
        t_fast.append(time_calls(medresunet, repeats=1, warmup=0)["best_s"])
    base_s, fast_s = min(t_base), min(t_fast)
    voxels = float(volume.numel())

    flops_window = conv_flops(plain, (1, 1, *patch))
    flops_total = flops_window * n_windows
    n_mm = 512 if tiny else 2048
    peak32 = peak_gflops("fp32", n=n_mm)
    peak16 = peak_gflops("bf16", n=n_mm) if cpu_supports_bf16() else None
    peak = peak16 if precision == "bf16" and peak16 else peak32
    batch = volume[..., : patch[0], : patch[1], : patch[2]].repeat(SW_BATCH, 1, 1, 1, 1)

    def fwd(net: Any, prec: str) -> Any:
        from medresunet.devices import autocast

        def call() -> None:
            with torch.inference_mode(), autocast(device, prec):
                net(batch)
        return call

    fwd(fast, precision)()  # oneDNN primitives for the batch shape, outside the profile
    fwd(plain, "fp32")()
    prof_fast = profile_ops(fwd(fast, precision))
    prof_base = profile_ops(fwd(plain, "fp32"))
    batch_flops = flops_window * SW_BATCH
    in_conv_gflops = batch_flops / max(prof_fast["conv_s"], 1e-9) / 1e9
    in_conv_gflops_base = batch_flops / max(prof_base["conv_s"], 1e-9) / 1e9

    result = {
        "speedup_vs_monai": round(base_s / fast_s, 3),
        "argmax_agreement": round(agreement, 5),
        "conv_efficiency": round(in_conv_gflops / peak, 3),
        "conv_efficiency_whole_pipeline": round(flops_total / fast_s / 1e9 / peak, 3),
        "medresunet_mvox_s": round(voxels / fast_s / 1e6, 3),
        "monai_fp32_mvox_s": round(voxels / base_s / 1e6, 3),
        "medresunet_s": round(fast_s, 3),
        "monai_fp32_s": round(base_s, 3),
        "medresunet_runs_s": [round(t, 3) for t in t_fast],
        "monai_runs_s": [round(t, 3) for t in t_base],
        "precision": precision,
        "memory_format": "channels_last_3d",
        "max_abs_logit_diff": round(max_abs_logit_diff, 6),
        "volume_shape": list(cfg["shape"]),
        "window": list(patch),
        "overlap": OVERLAP,
        "sw_batch_size": SW_BATCH,
        "windows": n_windows,
        "conv_gflop_per_window": round(flops_window / 1e9, 3),
        "peak_gflops_fp32_matmul": round(peak32, 1),
        "peak_gflops_bf16_matmul": None if peak16 is None else round(peak16, 1),
        "conv_gflops_in_conv_kernels": round(in_conv_gflops, 1),
        "conv_gflops_in_conv_kernels_monai_side": round(in_conv_gflops_base, 1),
        "conv_gflops_whole_pipeline": round(flops_total / fast_s / 1e9, 1),
        "conv_gflops_whole_pipeline_monai_side": round(flops_total / base_s / 1e9, 1),
        "peak_memory_mb": {"medresunet": round(mem_fast.peak_mb, 1),
                           "medresunet_added": round(mem_fast.delta_mb, 1),
                           "monai": round(mem_base.peak_mb, 1),
                           "monai_added": round(mem_base.delta_mb, 1)},
        "profile_one_forward": {"medresunet": prof_fast, "monai_side": prof_base},
        "load_average": load_average(),
    }
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv, tiny="--tiny" in sys.argv), indent=2))
