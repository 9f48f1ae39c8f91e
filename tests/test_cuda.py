"""What only a GPU can show: the CUDA paths run, fall back for real, and agree with the CPU.

Every test here is marked ``cuda`` and skipped without a CUDA device;
``benchmarks/gpu_check.sh`` runs them (``pytest -m cuda``) on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from medresunet.inference import memory as mem  # noqa: E402
from medresunet.inference.sliding import sliding_window_logits  # noqa: E402
from tests.test_inference_memory import MARGIN, _network, _predictor, _scan  # noqa: E402


def _on(device: str):
    return _network(margin=MARGIN).to(device)


def test_gpu_labels_equal_cpu_labels(tmp_path):
    path = _scan(tmp_path, shape=(40, 36, 20))
    runs = {}
    for device in ("cpu", "cuda:0"):
        predictor = _predictor(_on(device), tta=True, device=device)
        runs[device] = predictor.predict_loaded(predictor.load([path]))
    gpu, cpu = runs["cuda:0"], runs["cpu"]
    assert gpu.memory["stitching"] == "device" and gpu.memory["stitch_dtype"] == "float32"
    assert float((gpu.labels == cpu.labels).mean()) >= 0.999


def test_half_stitching_on_the_gpu_agrees(tmp_path):
    path = _scan(tmp_path, shape=(40, 36, 20))
    runs = {}
    for dtype in ("fp32", "fp16"):
        predictor = _predictor(_on("cuda:0"), tta=True, device="cuda:0", stitch_dtype=dtype)
        runs[dtype] = predictor.predict_loaded(predictor.load([path]))
    assert runs["fp16"].memory["stitch_dtype"] == "float16"
    assert float((runs["fp16"].labels == runs["fp32"].labels).mean()) >= 0.999


def test_labels_cross_to_the_host_once_as_uint8(tmp_path):
    from torch.profiler import ProfilerActivity, profile

    path = _scan(tmp_path, shape=(40, 36, 20))
    predictor = _predictor(_on("cuda:0"), tta=True, device="cuda:0")
    scan = predictor.load([path])
    predictor.predict_loaded(scan)  # warm-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        result = predictor.predict_loaded(scan)
    copies = [e for e in prof.events() if "Memcpy DtoH" in e.name]
    if not copies:
        pytest.skip("the profiler recorded no device-to-host copies (no CUPTI?)")
    device_to_host = sum(getattr(e, "nbytes", 0) or 0 for e in copies)
    assert len(copies) <= 4, [e.name for e in copies]
    if device_to_host:
        assert device_to_host <= 2 * result.labels.nbytes


def test_a_memory_cap_forces_the_fallback_and_the_labels_hold():
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    image = torch.randn(1, 1, 256, 256, 256, generator=torch.Generator().manual_seed(0))
    net = _on("cuda:0")
    ref = sliding_window_logits(image, net, (32, 32, 32), network_dims=3, overlap=0.25,
                                device=torch.device("cuda:0"), stitch_device="same").argmax(1).cpu()
    torch.cuda.empty_cache()
    state = mem.OomFallback(sw_batch_size=2)
    # 3 classes x 256^3 voxels of float32 logits are 192 MiB: a 160 MiB cap leaves the windows
    # room but not the stitching buffer on the device
    torch.cuda.set_per_process_memory_fraction(160 * 2**20 / total, 0)
    try:
        out = sliding_window_logits(image, net, (32, 32, 32), network_dims=3, overlap=0.25,
                                    device=torch.device("cuda:0"), memory=state)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    assert state.events and out.device.type == "cpu"
    assert np.array_equal(out.argmax(1).numpy(), ref.numpy())
