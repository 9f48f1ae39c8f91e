"""Build a :class:`~medresunet.inference.predictor.Predictor` from a checkpoint or an export.

``medresunet-infer --model`` takes either: a ``.pt`` checkpoint (the torch path), or an
export folder / a model file in it (``model.onnx``, ``model.ts``, ``model_int8.xml``), whose
``model.json`` gives the preprocessing, labels and defaults and whose backend runner takes
the network's place. Either way the same preprocessing, sliding window, flips, inversion
and writing run.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from medresunet.errors import UsageError

PathLike = str | os.PathLike[str]


def is_export(path: PathLike) -> bool:
    """True for an export folder (one with ``model.json``) or a model file of one."""
    from medresunet.export.metadata import MODEL_JSON

    path = Path(path)
    if path.is_dir():
        return (path / MODEL_JSON).is_file()
    return path.suffix.lower() in (".onnx", ".ts", ".xml")


@functools.lru_cache(maxsize=8)
def model_identity(paths: tuple[PathLike, ...]) -> dict[str, str]:
    """``{"name", "sha256"}`` of the checkpoint(s) behind ``paths`` (an export: its source's);
    an ensemble's names and hashes are joined by commas."""
    from medresunet.export.metadata import file_sha256, read_model_json

    names, hashes = [], []
    for path in paths:
        if is_export(path):
            meta = read_model_json(path)
            names.append(str(meta.get("checkpoint_name", "")))
            hashes.append(str(meta["checkpoint_sha256"]))
        else:
            names.append(Path(path).name)
            hashes.append(file_sha256(path))
    return {"name": ",".join(names), "sha256": ",".join(hashes)}


def open_any(models: list[PathLike], backend: str = "auto", postprocessing: bool = True,
             **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """``medresunet-infer --model``: checkpoints / run folders (torch) or one export.

    Checkpoints go to :func:`medresunet.inference.ensemble.open_models`; an export to
    :func:`load_predictor`. Returns ``(predictor, info)`` with ``info["members"]`` (the model
    paths) and ``info["backend"]``.

    Raises:
        UsageError: an export among several models, or a non-torch backend for checkpoints.
    """
    models = [Path(m) for m in models]
    if any(is_export(m) for m in models):
        if len(models) > 1:
            raise UsageError(f"--model: an export runs alone, got {len(models)} models "
                             "(ensembles run from checkpoints)")
        predictor, info = load_predictor(models[0], backend, **kwargs)
        return predictor, {"members": [str(models[0])], "postprocessing": None, "backend": info}
    if backend not in ("auto", "torch"):
        raise UsageError(f"--backend {backend}: {models[0]} is a PyTorch checkpoint; export it first "
                         f"(medresunet-export --model {models[0]} --output DIR) and pass DIR as --model")
    from medresunet.inference.ensemble import open_models

    predictor, info = open_models(models, postprocessing=postprocessing, **kwargs)
    return predictor, {**info, "backend": {"backend": "torch", "model": "checkpoint"}}


def load_predictor(path: PathLike, backend: str = "auto", device: Any = "auto",
                   **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """A Predictor for ``path`` running on ``backend``.

    Args:
        path: a ``.pt`` checkpoint, an export folder, or a model file of an export.
        backend: ``auto|torch|onnxruntime|openvino``; a ``.pt`` runs on torch only.
        device: ``auto|cpu|cuda|cuda:N`` or a ``torch.device``.
        **kwargs: the :class:`Predictor` settings (overlap, tta, precision, ...).

    Returns:
        ``(predictor, info)``: ``info`` says which backend runs (and the timings ``auto``
        measured).

    Raises:
        UsageError: a backend other than torch for a ``.pt``, or one that cannot run here.
        CheckpointError: an unreadable checkpoint or export.
    """
    import torch

    from medresunet.devices import resolve_device
    from medresunet.export.backends import load_runner
    from medresunet.export.metadata import checkpoint_view, read_model_json
    from medresunet.inference.predictor import Predictor

    device = device if isinstance(device, torch.device) else resolve_device(device)
    if not is_export(path):
        if backend not in ("auto", "torch"):
            raise UsageError(f"--backend {backend}: {path} is a PyTorch checkpoint; export it first "
                             f"(medresunet-export --model {path} --output DIR) and pass DIR as --model")
        return Predictor.from_file(path, device=device, **kwargs), {"backend": "torch", "model": "checkpoint"}
    if not Path(path).exists():
        from medresunet.errors import CheckpointError

        raise CheckpointError(f"{path}: no such exported model")
    meta = read_model_json(path)
    batch = int(kwargs.get("sw_batch_size") or (meta.get("infer") or {}).get("sw_batch_size", 2))
    window = torch.randn(batch, len(meta["input_channels"]), *meta["patch_size"])
    runner, info = load_runner(path, meta, backend, device, window)
    # exported graphs are fp32; autocast around them would only cast the inputs
    kwargs = {**kwargs, "precision": "fp32"}
    predictor = Predictor(checkpoint_view(meta), device=device, model=runner, **kwargs)
    return predictor, {**info, "model": "export", **(runner.describe() if hasattr(runner, "describe") else {})}
