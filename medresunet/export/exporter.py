"""Export a checkpoint into a folder: model files, ``model.json``, self-verification.

Everything is written into a hidden staging folder beside the target first; it replaces
the target only when every exported model matched the checkpoint's logits within the
tolerance, so a failed export leaves nothing that looks usable.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medresunet.errors import UsageError
from medresunet.export.metadata import FILES, MODEL_JSON, export_metadata, write_model_json
from medresunet.export.verify import DEFAULT_TOLERANCE, compare, passed, verification_inputs

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")


def parse_formats(text: str) -> tuple[str, ...]:
    """``"onnx,torchscript"`` -> ``("onnx", "torchscript")``; unknown names are a UsageError."""
    names = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise UsageError(f"--format {text!r}: expected a comma-separated subset of {', '.join(FORMATS)}")
    return names


def _verify(folder: Path, meta: dict[str, Any], model: Any, formats: Sequence[str]) -> dict[str, Any]:
    """Compare every installed backend on the staged files with the torch model."""
    import torch

    from medresunet.export.backends import installed, runner_factories

    if "onnx" in formats and not (installed("onnxruntime") or installed("openvino")):
        raise UsageError("--format onnx: the export verifies itself with ONNX Runtime or OpenVINO, "
                         "and neither is installed; pip install 'medresunet[onnx]'")
    inputs = verification_inputs(len(meta["input_channels"]), meta["patch_size"])
    results: dict[str, Any] = {}
    for name, make in runner_factories(folder, meta, torch.device("cpu")).items():
        if name.endswith("int8"):
            continue
        results[name] = compare(model, make(), inputs)
    return results


def _stage(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))


def export_checkpoint(checkpoint_path: str | os.PathLike[str], output: str | os.PathLike[str],
                      formats: Sequence[str] = FORMATS, opset: int = 18,
                      tolerance: float = DEFAULT_TOLERANCE, overwrite: bool = False,
                      int8: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export the network of a checkpoint and verify it.

    Args:
        checkpoint_path: a ``.pt`` written by medresunet-train.
        output: the export folder (must be empty or absent unless ``overwrite``).
        formats: subset of ``("onnx", "torchscript")``.
        opset: ONNX opset (>= 17).
        tolerance: max |logit difference| allowed against the checkpoint.
        overwrite: replace an existing export folder.
        int8: ``{"manifest": path, "max_dice_drop": 0.005, ...}`` to add an int8 OpenVINO
            model (see :func:`medresunet.export.quantize.build_int8`); needs ``onnx``.

    Returns:
        ``{"folder", "files", "verification", "passed", "int8"}``; when ``passed`` is False
        nothing was written to ``output``.
    """
    import torch

    from medresunet.export.writers import export_onnx, export_torchscript, spatial_multiple
    from medresunet.training.checkpoint import load_checkpoint, model_from_checkpoint

    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise UsageError(f"--output {output}: exists and is not empty; use --overwrite to replace it")
    if int8 is not None and "onnx" not in formats:
        raise UsageError("--int8: quantisation starts from the ONNX model; add onnx to --format")
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint).float().eval()
    meta = export_metadata(checkpoint, checkpoint_path, spatial_multiple(model))
    patch = meta["patch_size"]
    stage = _stage(output)
    try:
        if "onnx" in formats:
            export_onnx(model, stage / FILES["onnx"], patch, meta, opset)
            meta["files"]["onnx"] = FILES["onnx"]
        if "torchscript" in formats:
            export_torchscript(model, stage / FILES["torchscript"], patch)
            meta["files"]["torchscript"] = FILES["torchscript"]
        with torch.no_grad():
            verification = _verify(stage, meta, model, formats)
        ok = passed_all = all(passed(r, tolerance) for r in verification.values())
        meta["verification"] = {"tolerance": tolerance, "passed": passed_all, "results": verification}
        int8_report = None
        if ok and int8 is not None:
            from medresunet.export.quantize import build_int8

            int8_report = build_int8(stage, meta, checkpoint, int8)
            meta["int8"] = int8_report
            if int8_report.get("accepted"):
                meta["files"]["openvino_int8"] = FILES["openvino_int8"]
        write_model_json(stage, meta)
        if not ok:
            shutil.rmtree(stage, ignore_errors=True)
            return {"folder": None, "files": {}, "verification": verification, "passed": False,
                    "int8": None, "tolerance": tolerance}
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        stage.rename(output)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    files = {k: str(output / v) for k, v in meta["files"].items()}
    files["model_json"] = str(output / MODEL_JSON)
    return {"folder": str(output), "files": files, "verification": verification, "passed": True,
            "int8": int8_report, "tolerance": tolerance}
