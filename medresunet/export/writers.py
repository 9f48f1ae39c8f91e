"""Write the inference network as ONNX (dynamic spatial axes) and TorchScript.

The network alone is exported (deep supervision off; sliding window, flips and inversion
stay in Python). Both graphs take ``(B, C, *spatial)`` float32 with ``C`` fixed and ``B``
and every spatial size free, as long as each spatial size is a multiple of the network's
total stride (``spatial_multiple`` in ``model.json``): ``ResidualUNet`` pads other sizes
in Python, which a graph cannot carry, so the runners pad and crop around it
(:mod:`medresunet.export.backends.base`) with the network's own rule.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medresunet.export.metadata import INPUT_NAME, OUTPUT_NAME, onnx_metadata, padded_window
from medresunet.io.atomic import atomic_path

log = logging.getLogger(__name__)

MIN_OPSET = 17


def spatial_multiple(model: Any) -> tuple[int, ...]:
    """The total stride of a ResidualUNet per spatial axis (voxels)."""
    stride = model.total_stride
    if isinstance(stride, Sequence):
        return tuple(int(s) for s in stride)
    return (int(stride),) * int(model.spatial_dims)


def example_input(model: Any, patch_size: Sequence[int]) -> torch.Tensor:
    """A ``(1, C, *padded patch)`` random window for tracing."""
    shape = padded_window(patch_size, spatial_multiple(model))
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, int(model.in_channels), *shape, generator=generator)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress lines and warnings that say nothing to a user."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(model: Any, path: str | os.PathLike[str], patch_size: Sequence[int],
                meta: dict[str, Any], opset: int = 18) -> Path:
    """Export ``model`` (eval, CPU) to ONNX with symbolic batch and spatial axes.

    Args:
        model: a ``ResidualUNet`` (eval mode, contiguous weights).
        path: target ``.onnx`` file (written atomically).
        patch_size: the training patch (voxels); the example input is it, padded.
        meta: ``model.json`` fields, stored as ``metadata_props``.
        opset: ONNX opset, >= 17.

    Returns:
        The written path.
    """
    import onnx
    from torch.export import Dim

    if opset < MIN_OPSET:
        raise ValueError(f"opset: expected >= {MIN_OPSET}, got {opset}")
    example = example_input(model, patch_size)
    multiple = spatial_multiple(model)
    axes: dict[int, Any] = {0: Dim("batch", min=1, max=1024)}
    for axis, m in enumerate(multiple):
        axes[axis + 2] = m * Dim(f"n{axis}", min=1, max=8192 // m)  # spatial_i = m * n_i
    path = Path(path)
    with atomic_path(path) as tmp, _quiet():
        torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamo=True, dynamic_shapes={"x": axes},
                          external_data=False, verbose=False)
        proto = onnx.load(str(tmp))
        for key, value in onnx_metadata(meta).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "medresunet"
        proto.doc_string = "medresunet ResidualUNet: (B, C, *spatial) preprocessed image -> (B, K, *spatial) logits"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    log.info("wrote %s (opset %d)", path, opset)
    return path


def export_torchscript(model: Any, path: str | os.PathLike[str], patch_size: Sequence[int]) -> Path:
    """Trace ``model`` (eval, CPU) to TorchScript (MONAI bundles, Triton's PyTorch backend)."""
    example = example_input(model, patch_size)
    path = Path(path)
    with torch.no_grad(), _quiet():
        traced = torch.jit.trace(model, example, check_trace=False)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    log.info("wrote %s", path)
    return path
