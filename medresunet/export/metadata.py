"""What an exported model carries besides its weights: ``model.json`` and ONNX metadata.

An export folder holds the network alone (``model.onnx``, ``model.ts``, optionally the int8
OpenVINO IR ``model_int8.xml``/``.bin``) and ``model.json``: everything inference needs
from the checkpoint (preprocessing, labels, input channels, infer defaults, patch size),
the medresunet version, the SHA-256 of the source checkpoint, and the padding rule of the
network (a spatial size that is a multiple of ``spatial_multiple``; see
:func:`padded_window`). The same fields go into the ONNX ``metadata_props`` (one key per
field, JSON values), so a lone ``model.onnx`` still says how to use it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medresunet.errors import CheckpointError
from medresunet.io.atomic import write_text_atomic

EXPORT_FORMAT = "medresunet-export"
EXPORT_VERSION = 1
MODEL_JSON = "model.json"
FILES = {"onnx": "model.onnx", "torchscript": "model.ts", "openvino_int8": "model_int8.xml"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"
_REQUIRED = ("format", "export_version", "model", "preprocessing", "labels", "input_channels",
             "spatial_multiple", "checkpoint_sha256")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_metadata(checkpoint: dict[str, Any], checkpoint_path: str | os.PathLike[str],
                    spatial_multiple: Sequence[int]) -> dict[str, Any]:
    """The ``model.json`` fields of a checkpoint (plain values).

    Args:
        checkpoint: the dict from :func:`medresunet.training.checkpoint.load_checkpoint`.
        checkpoint_path: its file (hashed).
        spatial_multiple: the network's total downsampling per spatial axis (voxels).
    """
    import medresunet

    model = dict(checkpoint["model"])
    model["deep_supervision"] = False  # the export is the inference network alone
    labels = {str(k): int(v) for k, v in dict(checkpoint["labels"]).items()}
    prep = dict(checkpoint["preprocessing"])
    return {
        "format": EXPORT_FORMAT, "export_version": EXPORT_VERSION,
        "medresunet_version": medresunet.__version__,
        "checkpoint_medresunet_version": str(checkpoint.get("medresunet_version", "")),
        "checkpoint_name": Path(checkpoint_path).name,
        "checkpoint_sha256": file_sha256(checkpoint_path),
        "model": model, "preprocessing": prep, "labels": labels,
        "input_channels": [str(c) for c in checkpoint["input_channels"]],
        "infer": dict(checkpoint.get("infer") or {}),
        "patch_size": [int(p) for p in prep["patch_size"]],
        "spatial_dims": int(model["spatial_dims"]),
        "n_classes": int(model["out_channels"]),
        "spatial_multiple": [int(s) for s in spatial_multiple],
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "layout": "(B, C, *spatial) float32 preprocessed image -> (B, K, *spatial) float32 logits",
        "files": {},
    }


def write_model_json(folder: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Write ``folder/model.json`` atomically."""
    return write_text_atomic(Path(folder) / MODEL_JSON, json.dumps(meta, indent=2) + "\n")


def export_folder(path: str | os.PathLike[str]) -> Path:
    """The export folder of ``path``: the folder itself, or the folder of a model file in it."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def read_model_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the ``model.json`` of an export (``path``: the folder or a model file in it).

    Raises:
        CheckpointError: no ``model.json`` beside the model, unreadable, or not an export.
    """
    file = export_folder(path) / MODEL_JSON
    if not file.is_file():
        raise CheckpointError(f"{path}: no {MODEL_JSON} beside the exported model; an export folder "
                              "written by medresunet-export holds it (copy the whole folder)")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: cannot read the export metadata ({err})") from err
    missing = [k for k in _REQUIRED if not isinstance(meta, dict) or k not in meta]
    if missing or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{file}: not a medresunet export (format {meta.get('format')!r}, "
                              f"missing {missing}); re-export with medresunet-export")
    if int(meta["export_version"]) != EXPORT_VERSION:
        raise CheckpointError(f"{file}: export_version {meta['export_version']} is not supported "
                              f"(this medresunet reads {EXPORT_VERSION})")
    return meta


def checkpoint_view(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint-like dict a :class:`~medresunet.inference.predictor.Predictor` takes."""
    return {"format_version": 1, "medresunet_version": meta.get("checkpoint_medresunet_version", ""),
            "model": meta["model"], "preprocessing": meta["preprocessing"], "labels": meta["labels"],
            "input_channels": meta["input_channels"], "infer": meta.get("infer") or {}}


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """``model.json`` as ONNX ``metadata_props``: one key per field, JSON-encoded values."""
    return {f"medresunet.{k}": json.dumps(v) for k, v in meta.items() if k != "files"}


def padded_window(spatial: Sequence[int], multiple: Sequence[int]) -> tuple[int, ...]:
    """The size the network pads ``spatial`` to, as ``ResidualUNet.padded_shape`` does.

    Each axis rounds up to a multiple of ``multiple``; when every axis would then be one
    multiple, the last doubles (the bottleneck keeps two voxels). The exported graphs take
    multiples only (their spatial axes are symbolic multiples); runners pad and crop.
    """
    shape = [max(1, math.ceil(int(s) / int(m))) * int(m) for s, m in zip(spatial, multiple, strict=True)]
    if all(s == int(m) for s, m in zip(shape, multiple, strict=True)):
        shape[-1] *= 2
    return tuple(shape)
