"""Smoke tests of the benchmark sections: each runs a tiny configuration and reports its keys."""

from __future__ import annotations

import importlib
import mmap

import numpy as np
import pytest
import torch

from benchmarks.common import (
    PeakMemory,
    conv_flops,
    peak_gflops,
    profile_ops,
    run_command,
    time_calls,
)


def _hardware_gflops_bound() -> float:
    """No CPU core does more than ~6 GHz x 64 fp32 FLOP per cycle (two AVX-512 FMA units)."""
    import os

    return (os.cpu_count() or 1) * 6.0 * 64


def test_common_helpers():
    assert time_calls(lambda: sum(range(100)), repeats=2)["runs"] == 2
    with PeakMemory() as mem:
        # fresh anonymous pages, every one written: memory the allocator cannot hand back
        # from what earlier tests freed (np.ones could, leaving RSS where it was)
        block = mmap.mmap(-1, 20 * 2**20)
        for offset in range(0, len(block), 4096):
            block[offset] = 2
    assert mem.peak_mb >= mem.start_mb and mem.delta_mb >= 19.5, (mem.start_mb, mem.peak_mb)
    block.close()
    # a measured matmul rate: a wrong FLOP count or time unit would be off by 1000x (the
    # floor is 1 MFLOP/s: a loaded 2-core machine measured 0.095 GFLOP/s at this size)
    assert 1e-3 < peak_gflops("fp32", n=128, seconds=0.01) < _hardware_gflops_bound()
    conv = torch.nn.Conv3d(2, 4, 3, padding=1)
    assert conv_flops(conv, (1, 2, 4, 4, 4)) == 2 * 4 * 2 * 27 * 64
    prof = profile_ops(lambda: conv(torch.randn(1, 2, 4, 4, 4)))
    assert 0 < prof["conv_s"] <= prof["total_s"] and "convolution" in prof["families"]
    assert sum(prof["families"].values()) == pytest.approx(1.0, abs=0.01)
    assert [r[1] for r in prof["top"]] == sorted((r[1] for r in prof["top"]), reverse=True)
    res = run_command(["python", "-c", "print('ok')"])
    assert res["returncode"] == 0 and "ok" in res["output_tail"] and res["seconds"] > 0


def test_run_command_peak_is_the_childs_own(tmp_path):
    import sys

    script = tmp_path / "grow.py"
    script.write_text("import sys\nblock = bytearray(int(sys.argv[1]) * 2**20)\n"
                      "block[::4096] = b'x' * len(block[::4096])\nprint('argv', sys.argv[1:])\n")
    held = bytearray(600 * 2**20)  # the parent holds 600 MiB: ru_maxrss of a child would show it
    held[::4096] = b"y" * len(held[::4096])
    small, large = (run_command([sys.executable, str(script), str(mb), "b"]) for mb in (200, 400))
    assert small["returncode"] == 0 and "argv ['200', 'b']" in small["output_tail"], small
    assert small["peak_source"] == large["peak_source"] == "VmHWM"
    # the child's own pages: 200 MiB more allocated is 200 MiB more peak (the interpreter's
    # own size cancels out), and none of the parent's 600 MiB
    assert large["peak_rss_mb"] - small["peak_rss_mb"] == pytest.approx(200, abs=15)
    assert 200 <= small["peak_rss_mb"] < 600
    res = run_command([sys.executable, "-m", "json.tool", "--help"])
    assert res["returncode"] == 0 and res["peak_rss_mb"] < small["peak_rss_mb"] - 150
    del held


def test_conv_flops_counts_the_network():
    """Every convolution of a forward, counted by hooks: 2 FLOPs per multiply-add."""
    from medresunet.networks import ResidualUNet

    net = ResidualUNet(3, 1, 2, channels=[4, 8]).eval()
    want = []

    def hook(module, inputs, output):
        k = int(np.prod(module.kernel_size))
        if isinstance(module, torch.nn.ConvTranspose3d):  # each input voxel scatters a kernel
            positions = inputs[0].shape[0] * int(np.prod(inputs[0].shape[2:]))
            want.append(2 * module.in_channels * module.out_channels // module.groups * k * positions)
        else:  # each output voxel gathers a kernel
            positions = output.shape[0] * int(np.prod(output.shape[2:]))
            want.append(2 * module.in_channels // module.groups * module.out_channels * k * positions)

    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    handles = [m.register_forward_hook(hook) for m in convs]
    with torch.no_grad():
        net(torch.zeros(1, 1, 8, 8, 8))
    for h in handles:
        h.remove()
    assert len(want) == len(convs) > 4
    assert conv_flops(net, (1, 1, 8, 8, 8)) == sum(want)


def test_sliding_window_tiny():
    fig = importlib.import_module("benchmarks.bench_sliding_window").run(quick=True, tiny=True)
    for key in ("speedup_vs_monai", "argmax_agreement", "conv_efficiency", "medresunet_mvox_s",
                "monai_fp32_mvox_s", "peak_gflops_fp32_matmul", "conv_gflops_in_conv_kernels",
                "peak_memory_mb", "profile_one_forward", "precision"):
        assert key in fig, key
    # fp32 on both sides: the same argmax up to summation order; bf16 (chosen where the CPU
    # has it natively) flips voxels whose untrained-network logits nearly tie (0.991 measured)
    assert fig["argmax_agreement"] >= (0.999 if fig["precision"] == "fp32" else 0.98), fig["precision"]
    # the ratio of the two measured times (each the best of interleaved runs), not a constant
    assert fig["medresunet_s"] == min(fig["medresunet_runs_s"]) and fig["monai_fp32_s"] == min(fig["monai_runs_s"])
    assert fig["speedup_vs_monai"] == pytest.approx(fig["monai_fp32_s"] / fig["medresunet_s"], rel=0.1)
    assert 0 < fig["peak_gflops_fp32_matmul"] < _hardware_gflops_bound()


def test_training_tiny():
    fig = importlib.import_module("benchmarks.bench_training").run(quick=True, tiny=True)
    for key in ("speedup_vs_fp32_baseline", "medresunet_s_per_step", "baseline_fp32_s_per_step",
                "losses", "peak_memory_mb", "precision", "channels_last"):
        assert key in fig, key
    assert fig["speedup_vs_fp32_baseline"] == pytest.approx(
        fig["baseline_fp32_s_per_step"] / fig["medresunet_s_per_step"], rel=0.1)
    losses = fig["losses"]
    assert len(losses["medresunet"]) == len(losses["baseline"]) >= 2
    assert np.isfinite(losses["medresunet"]).all()
    if fig["precision"] == "fp32":  # same loss, weights and data: equal up to layout rounding
        assert losses["max_abs_diff"] < 1e-2


def test_infer_end_to_end_inputs(tmp_path):
    from benchmarks.bench_infer_end_to_end import write_checkpoint, write_ct
    from medresunet.io import read_geometry
    from medresunet.training.checkpoint import load_checkpoint, model_from_checkpoint

    scan = write_ct(tmp_path / "ct.nii.gz", (20, 18, 6), (0.8, 0.8, 2.5))
    assert read_geometry(scan).shape == (20, 18, 6)
    ckpt = load_checkpoint(write_checkpoint(tmp_path / "m.pt", (2.0, 2.0, 2.5), tiny=True))
    model = model_from_checkpoint(ckpt)
    assert model(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


@pytest.mark.slow
def test_infer_end_to_end_tiny():
    fig = importlib.import_module("benchmarks.bench_infer_end_to_end").run(quick=True, tiny=True)
    for key in ("speedup_vs_monai", "medresunet_s", "monai_s", "peak_memory_mb", "label_agreement"):
        assert key in fig, key
    assert fig["label_agreement"] is not None and fig["label_agreement"] > 0.99


def test_backends_tiny():
    pytest.importorskip("onnxruntime")
    fig = importlib.import_module("benchmarks.bench_backends").run(quick=True, tiny=True)
    assert fig["speedup_vs_torch"] > 0 and 0.9 <= fig["label_agreement"] <= 1.0
    assert {"torch", "torchscript", "onnxruntime"} <= set(fig["backends"])
    assert fig["auto_backend"] in fig["backends"]

