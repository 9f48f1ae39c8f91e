"""The steps of :mod:`benchmarks.gpu_check`, one function each, taking a :class:`Context`.

They run on ``ctx.device`` (CUDA in the check; the CPU smoke test runs the ones that make
sense there at toy sizes) and return plain dicts of figures with an ``ok`` verdict.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPACING = (0.8, 0.8, 1.5)  # mm: a typical abdominal CT
LABELS = {"background": 0, "liver": 1, "kidney": 2}


@dataclass
class Context:
    """What the steps share: scratch folder, sizes, the subprocess runner, the comparer."""

    work: Path
    train_minutes: float
    ct_shape: tuple[int, int, int]
    run: Callable[..., dict[str, Any]]
    agreement: Callable[[np.ndarray, np.ndarray], dict[str, Any]]
    device: str = "cuda:0"
    train_patch: int = 128
    cpu_crop: int = 160  # voxels per axis of the CPU comparison (the CPU path is the slow one)
    cache: dict[str, Any] | None = None

    def memo(self) -> dict[str, Any]:
        if self.cache is None:
            self.cache = {}
        return self.cache


def _torch_device(ctx: Context) -> Any:
    import torch

    return torch.device(ctx.device)


def _peak_gb(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 3)


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def cuda_tests(ctx: Context) -> dict[str, Any]:
    """``pytest -m cuda``: every CUDA-marked test must pass (none may be skipped on a GPU)."""
    res = ctx.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rs",
                   "tests/test_cuda.py"], timeout=150)
    return {**res, "ok": res["rc"] == 0 and "skipped" not in res["tail"].splitlines()[-1]}


def _demo(ctx: Context) -> Any:
    memo = ctx.memo()
    if "demo" not in memo:
        from medresunet.data.phantoms import make_demo_dataset

        memo["demo"] = make_demo_dataset(ctx.work / "demo", n_train=8, n_test=2, n_dicom=0)
    return memo["demo"]


def _log_figures(run_dir: Path) -> dict[str, Any]:
    rows = list(csv.DictReader(open(run_dir / "log.csv", encoding="utf-8")))
    steps = [float(r["steps_per_s"]) for r in rows if r.get("steps_per_s")]
    mem = [float(r["gpu_mem_gb"]) for r in rows if r.get("gpu_mem_gb")]
    return {"epochs": len(rows), "steps_per_s": round(float(np.median(steps)), 3) if steps else None,
            "gpu_mem_gb": max(mem) if mem else None, "last_val_dice": rows[-1].get("val_dice_mean") if rows else None}


def train_fp16(ctx: Context) -> dict[str, Any]:
    """Demo data, fp16 with the scaler for ``train_minutes``, then a resume of two epochs."""
    from medresunet.training.checkpoint import load_checkpoint

    demo, run_dir = _demo(ctx), ctx.work / "train_fp16"
    base = [sys.executable, "-m", "pipelines.train", "--manifest", str(demo.manifest), "--config", "demo",
            "--output", str(run_dir), "--device", ctx.device, "--quiet", "--set", "train.precision=fp16"]
    first = ctx.run([*base, "--max-minutes", f"{ctx.train_minutes:g}"], timeout=ctx.train_minutes * 60 + 120)
    if first["rc"] != 0:
        return {"ok": False, "first": first}
    ts1 = load_checkpoint(run_dir / "last.pt")["train_state"]
    resumed = ctx.run([*base, "--resume", "--epochs", str(int(ts1["epoch"]) + 2)], timeout=180)
    ts2 = load_checkpoint(run_dir / "last.pt")["train_state"] if resumed["rc"] == 0 else {}
    scaler_ok = bool(ts1.get("scaler")) and bool(ts2.get("scaler"))
    ctx.memo()["demo_model"] = run_dir / "last.pt"
    out = {"first": {k: first[k] for k in ("rc", "seconds")}, "resumed": {k: resumed[k] for k in ("rc", "seconds")},
           "precision": ts1.get("precision"), "scaler_saved_and_resumed": scaler_ok,
           "scale": [ts1.get("scaler", {}).get("scale"), ts2.get("scaler", {}).get("scale")],
           "epochs": [ts1.get("epoch"), ts2.get("epoch")], "log": _log_figures(run_dir)}
    out["demo_labels_gpu_vs_cpu"] = _demo_gpu_vs_cpu(ctx, demo, run_dir / "last.pt")
    out["ok"] = (resumed["rc"] == 0 and scaler_ok and ts1.get("precision") == "fp16"
                 and ts2.get("epoch") == ts1.get("epoch") + 2
                 and out["demo_labels_gpu_vs_cpu"]["agreement"] >= 0.999)
    return out


def _demo_gpu_vs_cpu(ctx: Context, demo: Any, model: Path) -> dict[str, Any]:
    """The trained demo model's labels on its test scans: GPU (fp16) against CPU."""
    from medresunet.inference.predictor import Predictor

    scans = sorted(Path(demo.images_test).glob("*.nii.gz"))
    gpu = Predictor.from_file(model, device=ctx.device)
    cpu = Predictor.from_file(model, device="cpu")
    parts = [ctx.agreement(gpu.predict([s]), cpu.predict([s])) for s in scans]
    total = sum(p["differing_voxels"] or 0 for p in parts)
    return {"scans": len(scans), "differing_voxels": total, "identical": total == 0,
            "agreement": min(p["agreement"] for p in parts) if parts else 0.0,
            "precision": [gpu.precision, cpu.precision]}


def _train_speed(core: Any, device: Any, precision: str, channels_last: bool, patch: int,
                 steps: int = 12) -> dict[str, Any]:
    import torch

    from medresunet.devices import autocast
    from medresunet.training.accelerator import make_scaler
    from medresunet.training.loss import SegmentationLoss

    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = core.to(device, memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler, loss_fn = make_scaler(precision, device), SegmentationLoss()
    x = torch.randn(2, 1, patch, patch, patch, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 3, (2, 1, patch, patch, patch), device=device)
    _reset_peak(device)
    times = []
    for i in range(steps + 3):  # three warm-up steps (cuDNN benchmark)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return {"steps_per_s": round(1.0 / float(np.median(times)), 3), "peak_gpu_gb": _peak_gb(device),
            "loss_finite": bool(torch.isfinite(loss.detach()).item())}


def _network_3d(seed: int = 0, out_channels: int = 3) -> tuple[Any, dict[str, Any], Any]:
    import torch

    from medresunet.config import load_config
    from medresunet.networks import build_network, network_kwargs

    cfg = load_config("3d")
    torch.manual_seed(seed)
    return build_network(cfg.model, 1, out_channels), network_kwargs(cfg.model, 1, out_channels), cfg


def train_3d_default(ctx: Context) -> dict[str, Any]:
    """Steps/s and memory of the 3D default at ``train_patch^3 x 2`` per precision and layout."""
    import copy

    import torch

    from medresunet.devices import cuda_supports_bf16

    device = _torch_device(ctx)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    core, _, _ = _network_3d()
    variants = {"fp16": ("fp16", False), "fp16_channels_last": ("fp16", True)}
    if device.type == "cuda" and cuda_supports_bf16(device):
        variants["bf16"] = ("bf16", False)
    out: dict[str, Any] = {"patch": [ctx.train_patch] * 3, "batch": 2}
    for name, (precision, cl) in variants.items():
        out[name] = _train_speed(copy.deepcopy(core), device, precision, cl, ctx.train_patch)
    peak = max((v["peak_gpu_gb"] or 0.0) for k, v in out.items() if isinstance(v, dict) and "peak_gpu_gb" in v)
    out["fits_24_gb"] = peak < 24.0 if device.type == "cuda" else None
    out["channels_last_faster"] = out["fp16_channels_last"]["steps_per_s"] > out["fp16"]["steps_per_s"]
    out["ok"] = all(v["loss_finite"] for v in out.values() if isinstance(v, dict) and "loss_finite" in v)
    return out


def _ct_checkpoint(ctx: Context) -> dict[str, Any]:
    """The 3D default (random weights) with CT preprocessing at the scan's own spacing."""
    from medresunet.config import config_to_dict
    from medresunet.data.preprocessing import ChannelNorm, Preprocessing

    net, kwargs, cfg = _network_3d()
    prep = Preprocessing(orientation="RAS", target_spacing=SPACING,
                         normalization=(ChannelNorm("ct", clip=(-1000.0, 1000.0), mean=50.0, std=300.0),),
                         crop_foreground=True, patch_size=tuple(cfg.data.patch_size), spatial_dims=3)
    return {"format_version": 1, "model": kwargs, "state_dict": net.state_dict(), "preprocessing": prep.to_dict(),
            "labels": dict(LABELS), "input_channels": ["CT"], "infer": config_to_dict(cfg.infer)}


def _ct_scan(ctx: Context, shape: tuple[int, int, int], name: str) -> Path:
    memo = ctx.memo()
    if name not in memo:
        import nibabel as nib

        from medresunet.data.phantoms import make_phantom_case

        case = make_phantom_case(7, shape=shape, spacing=SPACING, modality="CT")
        memo[name] = ctx.work / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.rint(case.image).astype(np.int16), case.affine), str(memo[name]))
    return memo[name]


def _timed_predict(predictor: Any, path: Path, warmup: bool = True) -> tuple[Any, dict[str, Any]]:
    """One scan from loaded to labels (load excluded; warmed up first), with its figures."""
    scan = predictor.load([path])
    if warmup:
        predictor.predict_loaded(scan)  # cuDNN benchmark, allocator
    _reset_peak(predictor.device)
    t0 = time.perf_counter()
    result = predictor.predict_loaded(scan)
    seconds = time.perf_counter() - t0
    return result, {"s_per_scan": round(seconds, 2), "load_s": round(scan.seconds, 2),
                    "peak_gpu_gb": _peak_gb(predictor.device), "memory": result.memory,
                    "stages_s": {k: round(v, 2) for k, v in result.seconds.items()}}


def infer_ct(ctx: Context) -> dict[str, Any]:
    """Seconds per scan (flips off and on), peak memory, labels of a crop against the CPU."""
    from medresunet.inference.predictor import Predictor

    ckpt, path = _ct_checkpoint(ctx), _ct_scan(ctx, ctx.ct_shape, "ct")
    out: dict[str, Any] = {"shape": list(ctx.ct_shape), "spacing_mm": list(SPACING)}
    plain, out["no_flips"] = _timed_predict(Predictor(ckpt, device=ctx.device, tta=False), path)
    ctx.memo()["ct_labels"], ctx.memo()["ct_peak_gb"] = plain.labels, out["no_flips"]["peak_gpu_gb"]
    # the same windows: the first run warmed cuDNN up for them
    _, out["flips_8"] = _timed_predict(Predictor(ckpt, device=ctx.device, tta=True), path, warmup=False)
    crop = tuple(min(ctx.cpu_crop, s) for s in ctx.ct_shape)
    small = _ct_scan(ctx, crop, "ct_crop")
    gpu = Predictor(ckpt, device=ctx.device, precision="fp32").predict([small])
    cpu = Predictor(ckpt, device="cpu", precision="fp32").predict([small])
    out["crop_labels_gpu_vs_cpu_fp32"] = {"shape": list(crop), **ctx.agreement(gpu, cpu)}
    out["goals"] = {"no_flips_under_5_s": out["no_flips"]["s_per_scan"] < 5.0,
                    "flips_under_15_s": out["flips_8"]["s_per_scan"] < 15.0}
    out["ok"] = out["crop_labels_gpu_vs_cpu_fp32"]["agreement"] >= 0.999
    return out


def forced_fallback(ctx: Context) -> dict[str, Any]:
    """The CT volume under a memory cap below its unconstrained peak: labels must hold."""
    import torch

    from medresunet.inference.predictor import Predictor

    device = _torch_device(ctx)
    if device.type != "cuda":
        raise RuntimeError("forced_fallback needs a CUDA device")
    if "ct_labels" not in ctx.memo():
        infer_ct(ctx)
    ckpt, path = _ct_checkpoint(ctx), _ct_scan(ctx, ctx.ct_shape, "ct")
    predictor = Predictor(ckpt, device=ctx.device, tta=False)
    scan = predictor.load([path])
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)  # the weights
    x = torch.zeros(predictor.sw_batch_size, 1, *predictor.patch_size, device=device)
    _reset_peak(device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        predictor.model(x)
    window_peak = torch.cuda.max_memory_allocated(device) - base
    del x
    total = torch.cuda.get_device_properties(device).total_memory
    cap = base + int(1.5 * window_peak) + 512 * 2**20  # the windows fit, the whole volume not
    out = {"cap_gb": round(cap / 1e9, 3), "unconstrained_peak_gb": ctx.memo()["ct_peak_gb"],
           "window_peak_gb": round(window_peak / 1e9, 3)}
    if out["unconstrained_peak_gb"] is not None and cap >= out["unconstrained_peak_gb"] * 1e9:
        return {**out, "ok": False, "error": "the volume fits under the cap: nothing to force"}
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    try:
        t0 = time.perf_counter()
        result = predictor.predict_loaded(scan)
        out["s_per_scan"] = round(time.perf_counter() - t0, 2)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    out.update(memory=result.memory, fallbacks=predictor.memory.events,
               labels=ctx.agreement(result.labels, ctx.memo()["ct_labels"]))
    out["ok"] = bool(predictor.memory.events) and out["labels"]["agreement"] >= 0.9999
    return out


def torchrun(ctx: Context) -> dict[str, Any]:
    """``torchrun --nproc-per-node 1 medresunet-infer`` writes what the plain command writes."""
    import nibabel as nib

    demo = _demo(ctx)
    model = ctx.memo().get("demo_model")
    if model is None:  # train_fp16 did not run: a short fp32 training gives a checkpoint
        run_dir = ctx.work / "train_short"
        ctx.run([sys.executable, "-m", "pipelines.train", "--manifest", str(demo.manifest), "--config", "demo",
                 "--output", str(run_dir), "--device", ctx.device, "--quiet", "--epochs", "1"], timeout=240)
        model = run_dir / "last.pt"
    infer = ["-m", "pipelines.infer", "--model", str(model), "--input", str(demo.images_test), "--quiet",
             "--device", ctx.device, "--overwrite"]
    plain = ctx.run([sys.executable, *infer, "--output", str(ctx.work / "plain")], timeout=180)
    ranked = ctx.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--nnodes", "1",
                      *infer, "--output", str(ctx.work / "torchrun")], timeout=180)
    files = sorted(p.name for p in (ctx.work / "plain").glob("*.nii.gz"))
    same = [np.array_equal(np.asarray(nib.load(ctx.work / "plain" / f).dataobj),
                           np.asarray(nib.load(ctx.work / "torchrun" / f).dataobj))
            for f in files if (ctx.work / "torchrun" / f).exists()]
    return {"plain": {k: plain[k] for k in ("rc", "seconds")}, "torchrun": {k: ranked[k] for k in ("rc", "seconds")},
            "scans": len(files), "identical": len(same) == len(files) > 0 and all(same),
            "ok": plain["rc"] == 0 and ranked["rc"] == 0 and len(same) == len(files) > 0 and all(same)}
