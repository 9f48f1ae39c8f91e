"""Smoke tests of the benchmark sections: each runs a tiny configuration and reports its keys."""

from __future__ import annotations

import importlib

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


def test_common_helpers():
    assert time_calls(lambda: sum(range(100)), repeats=2)["runs"] == 2
    with PeakMemory() as mem:
        block = np.ones(20 * 2**20, np.uint8)  # 20 MB touched
        block[::4096] = 2
    assert mem.peak_mb >= mem.start_mb and mem.delta_mb >= 10
    assert peak_gflops("fp32", n=128, seconds=0.01) > 0
    conv = torch.nn.Conv3d(2, 4, 3, padding=1)
    assert conv_flops(conv, (1, 2, 4, 4, 4)) == 2 * 4 * 2 * 27 * 64
    prof = profile_ops(lambda: conv(torch.randn(1, 2, 4, 4, 4)))
    assert prof["conv_s"] > 0 and "convolution" in prof["families"]
    res = run_command(["python", "-c", "print('ok')"])
    assert res["returncode"] == 0 and "ok" in res["output_tail"] and res["peak_rss_mb"] > 0


def test_run_command_peak_is_the_childs_own(tmp_path):
    import sys

    script = tmp_path / "grow.py"
    script.write_text("import sys\nblock = bytearray(200 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\n"
                      "print('argv', sys.argv[1:])\n")
    held = bytearray(600 * 2**20)  # the parent holds 600 MB: ru_maxrss of a child would show it
    held[::4096] = b"y" * len(held[::4096])
    res = run_command([sys.executable, str(script), "a", "b"])
    assert res["returncode"] == 0 and "argv ['a', 'b']" in res["output_tail"], res
    assert res["peak_source"] == "VmHWM"
    assert 200 <= res["peak_rss_mb"] < 500, res["peak_rss_mb"]
    res = run_command([sys.executable, "-m", "json.tool", "--help"])
    assert res["returncode"] == 0 and res["peak_rss_mb"] < 200
    del held


def test_conv_flops_counts_the_network():
    from medresunet.networks import ResidualUNet

    net = ResidualUNet(3, 1, 2, channels=[4, 8])
    assert conv_flops(net, (1, 1, 8, 8, 8)) > 0


def test_sliding_window_tiny():
    fig = importlib.import_module("benchmarks.bench_sliding_window").run(quick=True, tiny=True)
    for key in ("speedup_vs_monai", "argmax_agreement", "conv_efficiency", "medresunet_mvox_s",
                "monai_fp32_mvox_s", "peak_gflops_fp32_matmul", "conv_gflops_in_conv_kernels",
                "peak_memory_mb", "profile_one_forward", "precision"):
        assert key in fig, key
    assert fig["argmax_agreement"] >= 0.995
    assert fig["speedup_vs_monai"] > 0


def test_training_tiny():
    fig = importlib.import_module("benchmarks.bench_training").run(quick=True, tiny=True)
    for key in ("speedup_vs_fp32_baseline", "medresunet_s_per_step", "baseline_fp32_s_per_step",
                "losses", "peak_memory_mb", "precision", "channels_last"):
        assert key in fig, key
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
