"""Backends: the same network and volume through medresunet's torch path and the exported runtimes.

One checkpoint is exported (:func:`medresunet.export.exporter.export_checkpoint`), then the
same preprocessed volume goes through :func:`medresunet.inference.sliding.sliding_window_logits`
(Gaussian, the checkpoint's overlap and windows per batch) with:

* ``torch``: medresunet's own path, the checkpoint's network as the Predictor runs it
  (channels-last on the CPU, ``precision auto`` resolved for this CPU); ``torch-fp32`` the
  same module in fp32 (on a CPU where ``auto`` means bf16 the two differ);
* ``torchscript``, ``onnxruntime``, ``openvino`` (fp32), ``openvino-int8`` (NNCF) runners.

Reported per backend: seconds (best of the repeats, interleaved), Mvox/s, speedup over the
torch path and label (argmax) agreement with it; ``speedup_vs_torch`` is the fastest
backend's, ``label_agreement`` that backend's agreement; ``auto`` is the backend
``--backend auto`` picks on this machine.

Inputs: ``MEDRESUNET_BENCH_CHECKPOINT`` (a trained ``.pt``; default: the ``configs/3d.yaml``
network, ``--quick``: the demo network, with random weights, seed 0), ``MEDRESUNET_BENCH_SCAN`` (a scan preprocessed with the
checkpoint's own preprocessing; default: a CT-like phantom, normalised), and
``MEDRESUNET_BENCH_MANIFEST`` (calibration + Dice check of int8; default: calibration on
patches of the benchmark volume, no Dice check).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

QUICK = {"shape": (96, 96, 64), "repeats": 1, "preset": "demo"}
FULL = {"shape": (144, 144, 96), "repeats": 2, "preset": "3d"}
TINY = {"shape": (28, 24, 20), "repeats": 1, "preset": "tiny"}  # the smoke test's


def _random_checkpoint(path: Path, preset: str) -> Path:
    import torch

    from medresunet.config import load_config
    from medresunet.networks import ResidualUNet
    from medresunet.networks.resunet import network_kwargs
    from medresunet.training.checkpoint import save_checkpoint

    cfg = load_config("demo" if preset == "tiny" else preset)
    torch.manual_seed(0)
    kwargs = network_kwargs(cfg.model, 1, 4)
    patch = list(cfg.data.patch_size)
    if preset == "tiny":
        kwargs["channels"], patch = [4, 8, 16], [16, 16, 16]
    net = ResidualUNet(**kwargs)
    norm = {"scheme": "ct", "clip": [-200.0, 300.0], "mean": 50.0, "std": 100.0}  # make_volume's
    payload = {"format_version": 1, "medresunet_version": "bench", "model": kwargs,
               "state_dict": net.state_dict(),
               "preprocessing": {"orientation": "RAS", "target_spacing": [1.5, 1.5, 1.5],
                                 "normalization": [norm], "crop_foreground": False,
                                 "patch_size": patch, "spatial_dims": 3},
               "labels": {"background": 0, "liver": 1, "kidney": 2, "lesion": 3}, "input_channels": ["CT"],
               "infer": {"overlap": cfg.infer.overlap, "sw_batch_size": cfg.infer.sw_batch_size}}
    return save_checkpoint(path, payload)


def _volume(predictor: Any, shape: tuple[int, ...]) -> Any:
    import torch

    scan = os.environ.get("MEDRESUNET_BENCH_SCAN")
    if scan:
        return torch.as_tensor(predictor.load([scan]).data["image"]).float()[None]
    from benchmarks.bench_sliding_window import make_volume

    return torch.from_numpy(make_volume(shape))[None, None]


def _runners(folder: Path, meta: dict[str, Any], predictor: Any) -> dict[str, Any]:
    import torch

    from medresunet.export.backends import runner_factories

    out: dict[str, Any] = {"torch": predictor.model, "torch-fp32": predictor.model}
    for name, make in runner_factories(folder, meta, torch.device("cpu")).items():
        out["torchscript" if name == "torch" else name] = make()
    return out


def _int8(folder: Path, meta: dict[str, Any], checkpoint: dict[str, Any], volume: Any) -> dict[str, Any]:
    """Build model_int8.xml: the manifest's gate if given, else calibrated on the volume."""
    from medresunet.export.backends.base import pad_window
    from medresunet.export.metadata import FILES
    from medresunet.export.quantize import build_int8, quantize_openvino

    manifest = os.environ.get("MEDRESUNET_BENCH_MANIFEST")
    if manifest:
        # a refused model is measured all the same, flagged "accepted": false
        return build_int8(folder, meta, checkpoint, {"manifest": manifest, "patches": 32, "keep_refused": True})
    patch = meta["patch_size"]
    rng = np.random.default_rng(0)
    patches = []
    for _ in range(16):
        start = [int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(volume.shape[2:], patch, strict=True)]
        window = volume[(slice(None), slice(None), *(slice(a, a + p) for a, p in zip(start, patch, strict=True)))]
        patches.append(np.ascontiguousarray(pad_window(window, meta["spatial_multiple"])[0].numpy()))
    quantize_openvino(folder / FILES["onnx"], folder / FILES["openvino_int8"], patches)
    return {"calibration": "16 random windows of the benchmark volume; no Dice check"}


def run(quick: bool = False, tiny: bool = False) -> dict[str, Any]:
    """Time every installed backend on one volume; ``speedup_vs_torch`` and ``label_agreement`` first."""
    import importlib.util

    import torch

    from benchmarks.common import load_average, time_calls
    from medresunet.export.backends import load_runner
    from medresunet.export.exporter import export_checkpoint
    from medresunet.export.metadata import read_model_json
    from medresunet.inference.predictor import Predictor
    from medresunet.inference.sliding import sliding_window_logits
    from medresunet.training.checkpoint import load_checkpoint

    cfg = TINY if tiny else QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        tmp_path = Path(tmp)
        ckpt_path = Path(os.environ.get("MEDRESUNET_BENCH_CHECKPOINT")
                         or _random_checkpoint(tmp_path / "m.pt", cfg["preset"]))
        checkpoint = load_checkpoint(ckpt_path)
        predictor = Predictor(checkpoint, device="cpu")
        report = export_checkpoint(ckpt_path, tmp_path / "exp", ("onnx", "torchscript"))
        if not report["passed"]:
            raise RuntimeError(f"the export failed its verification: {json.dumps(report['verification'])}")
        folder = tmp_path / "exp"
        meta = read_model_json(folder)
        volume = _volume(predictor, cfg["shape"])
        int8 = None
        if importlib.util.find_spec("nncf") and importlib.util.find_spec("openvino"):
            int8 = _int8(folder, meta, checkpoint, volume)
        runners = _runners(folder, meta, predictor)
        cval = predictor.background(volume[0])
        dev = torch.device("cpu")

        def call(name: str):
            precision = predictor.precision if name == "torch" else "fp32"  # torch-fp32: same module
            return lambda: sliding_window_logits(
                volume, runners[name], predictor.patch_size, network_dims=predictor.network_dims,
                overlap=predictor.overlap, sw_batch_size=predictor.sw_batch_size, cval=cval, device=dev,
                precision=precision)

        labels = {name: call(name)().argmax(1) for name in runners}  # also the warm-up
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(cfg["repeats"]):  # interleaved: load drift hits every backend alike
            for name in runners:
                times[name].append(time_calls(call(name), repeats=1, warmup=0)["best_s"])
        best = {name: min(t) for name, t in times.items()}
        batch = torch.randn(predictor.sw_batch_size, len(meta["input_channels"]), *meta["patch_size"])
        _, auto = load_runner(folder, meta, "auto", dev, batch)
    voxels = float(volume.numel())
    per = {name: {"seconds": round(best[name], 3), "runs_s": [round(t, 3) for t in times[name]],
                  "mvox_s": round(voxels / best[name] / 1e6, 3),
                  "speedup_vs_torch": round(best["torch"] / best[name], 3),
                  "label_agreement": round(float((labels[name] == labels["torch"]).float().mean()), 5)}
           for name in runners}
    fastest = min((n for n in per if n not in ("torch", "torch-fp32")), key=lambda n: best[n], default="torch")
    fp32 = [n for n in per if n not in ("torch", "torch-fp32", "openvino-int8")]
    fastest_fp32 = min(fp32, key=lambda n: best[n], default="torch")
    auto_name = {"torch": "torchscript"}.get(auto["backend"], auto["backend"])
    return {
        "speedup_vs_torch": per[fastest]["speedup_vs_torch"],
        "label_agreement": per[fastest]["label_agreement"],
        "fastest_backend": fastest,
        "speedup_vs_torch_fp32": per[fastest_fp32]["speedup_vs_torch"],
        "fastest_fp32_backend": fastest_fp32,
        "auto_backend": auto_name,
        "auto_speedup_vs_torch": per.get(auto_name, {}).get("speedup_vs_torch"),
        "auto_timings_s": auto.get("seconds_per_window_batch"),
        "speedup_vs_torch_fp32_path": round(best["torch-fp32"] / best[fastest], 3),
        "backends": per,
        "torch_precision": predictor.precision,
        "int8": int8,
        "checkpoint": str(ckpt_path) if os.environ.get("MEDRESUNET_BENCH_CHECKPOINT")
        else f"configs/{cfg['preset']}.yaml network, random weights (seed 0)",
        "volume_shape": list(volume.shape[2:]),
        "window": list(predictor.patch_size),
        "overlap": predictor.overlap,
        "sw_batch_size": predictor.sw_batch_size,
        "load_average": load_average(),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
