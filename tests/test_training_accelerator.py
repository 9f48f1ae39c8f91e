"""Training's device decisions, the gradient scaler's checkpoint round trip, DDP's gradient
buckets and the NCCL error handling: what a CPU can check of the CUDA training path."""

from __future__ import annotations

import socket
import warnings

import pytest
import torch

from medresunet import devices
from medresunet.config import load_config
from medresunet.networks import build_network, network_kwargs
from medresunet.training import accelerator as acc
from medresunet.training import distributed
from medresunet.training.checkpoint import save_checkpoint
from medresunet.training.run_state import ModelInfo, checkpoint_payload, new_state, resume_state

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_layout_and_cudnn_decisions():
    assert acc.use_channels_last(None, CPU) and not acc.use_channels_last(None, CUDA)
    assert acc.use_channels_last(True, CUDA) and not acc.use_channels_last(False, CPU)
    assert acc.use_cudnn_benchmark(CUDA) and not acc.use_cudnn_benchmark(CPU)
    assert load_config("3d").train.channels_last is None  # auto unless a config says otherwise


def test_loader_settings():
    auto_gpu = acc.loader_settings(None, CUDA, cpu_count=16)
    assert (auto_gpu.num_workers, auto_gpu.pin_memory, auto_gpu.prefetch_factor) == (8, True, 4)
    assert acc.loader_settings(None, CUDA, cpu_count=4).num_workers == 3
    one_core = acc.loader_settings(None, CUDA, cpu_count=1)
    assert one_core.num_workers == 0 and "prefetch_factor" not in one_core.kwargs()
    assert acc.loader_settings(None, CPU, cpu_count=16).kwargs() == {"num_workers": 0, "pin_memory": False}
    assert acc.loader_settings(3, CPU).kwargs() == {"num_workers": 3, "pin_memory": False, "prefetch_factor": 2}


def test_precision_on_gpus_with_and_without_bf16(monkeypatch):
    monkeypatch.setattr(devices, "cuda_supports_bf16", lambda device: False)
    assert devices.resolve_precision("bf16", CUDA) == "fp16"
    monkeypatch.setattr(devices, "cuda_supports_bf16", lambda device: True)
    assert devices.resolve_precision("bf16", CUDA) == "bf16"
    assert devices.resolve_precision("auto", CUDA) == "fp16"
    assert not acc.make_scaler("bf16", CUDA).is_enabled() and not acc.make_scaler("fp16", CPU).is_enabled()


class _Prep:
    def to_dict(self):
        return {"orientation": "RAS", "spatial_dims": 3}


def _state(tmp_path, scaler):
    cfg = load_config("3d", ["model.channels=[4,8]", "data.patch_size=[16,16,16]", "train.precision=fp32"])
    torch.manual_seed(0)
    state = new_state(cfg, build_network(cfg.model, 1, 2), CPU, n_steps=2)
    if scaler is not None:
        state.scaler = scaler
    info = ModelInfo(kwargs=network_kwargs(cfg.model, 1, 2), labels={"background": 0, "a": 1},
                     input_channels=["CT"], preprocessing=_Prep())
    return cfg, state, info


@pytest.mark.parametrize("enabled", [True, False])
def test_scaler_state_is_saved_and_resumed(tmp_path, enabled):
    # an fp16 run's scaler on CUDA; the CPU's GradScaler has the same state and checkpoint path
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3, enabled=enabled)
    cfg, state, info = _state(tmp_path, scaler)
    x = torch.randn(1, 1, 16, 16, 16)
    for _ in range(2):
        state.optimizer.zero_grad()
        state.scaler.scale(state.core(x).float().mean()).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
    if enabled:
        state.scaler.update(new_scale=1234.0)  # a scale that the default state would not have
    saved = state.scaler.state_dict()
    assert bool(saved) == enabled  # a disabled scaler saves nothing and resumes from nothing
    save_checkpoint(tmp_path / "last.pt", checkpoint_payload(state, info, cfg))
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3, enabled=enabled)
    _, again, _ = _state(tmp_path, fresh)
    resume_state(again, tmp_path / "last.pt")
    assert again.scaler.state_dict() == saved
    if enabled:
        assert again.scaler.get_scale() == 1234.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_live_in_the_buckets_without_the_strides_warning():
    import torch.distributed as dist

    from medresunet.networks import ResidualUNet

    threads = torch.get_num_threads()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        torch.set_num_threads(1)  # one thread: oneDNN returns 1x1 kernels' gradients contiguous
        torch.manual_seed(0)
        core = ResidualUNet(spatial_dims=3, in_channels=1, out_channels=2, channels=[4, 8])
        core = core.to(memory_format=torch.channels_last_3d)
        model = acc.wrap_ddp(core, CPU)
        x = torch.randn(1, 1, 16, 16, 16).contiguous(memory_format=torch.channels_last_3d)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                for p in core.parameters():
                    p.grad.zero_()  # zero_grad(set_to_none=False): the views stay
                model(x).float().mean().backward()
        assert not [w for w in caught if "Grad strides" in str(w.message)]
        storages = {p.grad.untyped_storage().data_ptr() for p in core.parameters()}
        assert len(storages) < len(list(core.parameters()))  # views of shared buckets, not copies
        assert all(p.grad.stride() == p.stride() for p in core.parameters())
    finally:
        torch.set_num_threads(threads)
        dist.destroy_process_group()


def test_nccl_errors_reach_python():
    env: dict[str, str] = {}
    assert distributed.nccl_environment(env) == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "2"
    mine = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    assert distributed.nccl_environment(mine) == {} and mine["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


def test_throughput_figures_on_the_cpu():
    t = acc.Throughput(CPU)
    for _ in range(3):
        t.step()
    figures = t.figures()
    assert figures["steps_per_s"] > 0 and figures["gpu_mem_gb"] is None
