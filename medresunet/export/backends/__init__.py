"""Backends that run an exported network behind one :class:`Runner` interface.

A runner is a callable ``(B, C, *window) torch -> (B, K, *window) torch`` logits, so the
sliding window (:func:`medresunet.inference.sliding.sliding_window_logits`) takes it where
it takes a torch module. Backends: ``torch`` (the export's TorchScript), ``onnxruntime`` and
``openvino`` (``model.onnx``), ``openvino-int8`` (``model_int8.xml``, when the export has
one). ``auto`` times every backend installed for the device on one window batch and takes
the fastest (CUDA: torch). A runtime that is not installed is a one-line error naming the
extra that installs it.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medresunet.errors import CheckpointError, UsageError
from medresunet.export.backends.base import ArrayRunner, Runner, pad_window
from medresunet.export.metadata import FILES, export_folder

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
#: runtime backend -> (import name, pip extra)
RUNTIMES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}


def installed(backend: str) -> bool:
    """True when the runtime of ``backend`` can be imported (torch always)."""
    if backend == "torch":
        return True
    module, _ = RUNTIMES[backend.split("-")[0]]
    return importlib.util.find_spec(module) is not None


def require(backend: str) -> None:
    """Raise a one-line :class:`UsageError` naming the extra when ``backend`` is missing."""
    if not installed(backend):
        module, extra = RUNTIMES[backend.split("-")[0]]
        raise UsageError(f"--backend {backend}: {module} is not installed; "
                         f"pip install 'medresunet[{extra}]'")


def _artefacts(path: Path) -> dict[str, Path]:
    """The model files usable from ``path`` (a folder: all of them; a file: that one)."""
    folder = export_folder(path)
    files = {k: folder / v for k, v in FILES.items() if (folder / v).is_file()}
    if path.is_dir():
        return files
    kind = {".onnx": "onnx", ".ts": "torchscript", ".xml": "openvino_int8"}.get(path.suffix.lower())
    if kind is None or not path.is_file():
        raise CheckpointError(f"{path}: not an exported model (expected model.onnx, model.ts, "
                              "model_int8.xml or their folder)")
    return {kind: path}


def runner_factories(path: str | Path, meta: dict[str, Any], device: torch.device) -> dict[str, Callable[[], Any]]:
    """Backend name -> a function building its runner, for the files ``path`` offers.

    Backends whose runtime is not installed are left out.
    """
    from medresunet.export.backends.ort import OnnxRuntimeRunner
    from medresunet.export.backends.ov import OpenVinoRunner
    from medresunet.export.backends.torchscript import TorchScriptRunner

    files = _artefacts(Path(path))
    multiple = meta["spatial_multiple"]
    out: dict[str, Callable[[], Any]] = {}
    if "torchscript" in files:
        out["torch"] = lambda: TorchScriptRunner(files["torchscript"], multiple, device, meta["spatial_dims"])
    if "onnx" in files and installed("onnxruntime"):
        out["onnxruntime"] = lambda: OnnxRuntimeRunner(files["onnx"], multiple, device)
    if device.type == "cpu" and installed("openvino"):
        if "onnx" in files:
            out["openvino"] = lambda: OpenVinoRunner(files["onnx"], multiple)
        if "openvino_int8" in files:
            out["openvino-int8"] = lambda: OpenVinoRunner(files["openvino_int8"], multiple, "openvino-int8")
    return out


def time_runner(runner: Any, batch: torch.Tensor, repeats: int = 1) -> float:
    """Best wall seconds of ``runner(batch)`` over ``repeats`` calls after two warm-ups (the
    TorchScript executor optimises on its second call; OpenVINO compiles on its first)."""
    with torch.inference_mode():
        runner(batch)
        runner(batch)
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            runner(batch)
            best = min(best, time.perf_counter() - start)
    return best


def load_runner(path: str | Path, meta: dict[str, Any], backend: str, device: torch.device,
                window_batch: torch.Tensor | None = None) -> tuple[Any, dict[str, Any]]:
    """The runner of an export for ``backend`` (``auto`` measures and picks the fastest).

    Args:
        path: the export folder or one model file in it.
        meta: its ``model.json``.
        backend: ``auto|torch|onnxruntime|openvino``; ``openvino`` takes the int8 IR when
            ``path`` is ``model_int8.xml``.
        device: where the network runs.
        window_batch: the ``(B, C, *window)`` batch ``auto`` times (default: noise of the
            patch size, batch 2).

    Returns:
        ``(runner, info)``; ``info`` holds the backend and, for ``auto``, the seconds per
        window batch of each candidate.

    Raises:
        UsageError: an unknown backend, a missing runtime (naming the extra), or a backend
            the export has no file for.
        CheckpointError: ``path`` is not an export.
    """
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend != "auto":
        require(backend)
    factories = runner_factories(path, meta, device)
    if backend != "auto":
        names = [n for n in factories if n.split("-")[0] == backend]
        if Path(path).suffix.lower() != ".xml":
            names = [n for n in names if not n.endswith("int8")] or names
        if not names:
            raise UsageError(f"--backend {backend}: {path} has no model file for it "
                             f"(available: {', '.join(factories) or 'none'}); export with "
                             "medresunet-export --format onnx,torchscript")
        return factories[names[0]](), {"backend": names[0]}
    if not factories:
        raise UsageError(f"{path}: no installed runtime can run this export; pip install "
                         "'medresunet[onnx]' or 'medresunet[openvino]', or export --format torchscript")
    if device.type == "cuda" or len(factories) == 1:
        name = "torch" if "torch" in factories else next(iter(factories))
        return factories[name](), {"backend": name, "chosen_by": "device" if device.type == "cuda" else "only one"}
    if window_batch is None:
        window_batch = torch.randn(2, len(meta["input_channels"]), *meta["patch_size"])
    timings: dict[str, float] = {}
    runners: dict[str, Any] = {}
    for name, make in factories.items():
        runners[name] = make()
        timings[name] = round(time_runner(runners[name], window_batch), 4)
    best = min(timings, key=timings.__getitem__)
    log.info("backend auto: %s (seconds per batch of %d windows: %s)", best, window_batch.shape[0],
             ", ".join(f"{k} {v:.3f}" for k, v in timings.items()))
    return runners[best], {"backend": best, "chosen_by": "measured", "seconds_per_window_batch": timings}


__all__ = ["BACKENDS", "ArrayRunner", "Runner", "installed", "load_runner", "pad_window", "require",
           "runner_factories", "time_runner"]
