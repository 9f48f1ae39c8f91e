"""ONNX Runtime backend: ``model.onnx`` on the CPU execution provider (or CUDA's)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from medresunet.export.backends.base import ArrayRunner


class OnnxRuntimeRunner(ArrayRunner):
    """Run an exported ONNX model with ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        multiple: the network's total stride per axis.
        device: ``torch.device``; CUDA uses ONNX Runtime's CUDA provider when installed.
        threads: intra-op threads (default: ONNX Runtime's, one per core).
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], multiple: Sequence[int], device: Any = None,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(multiple)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if getattr(device, "type", "cpu") == "cuda" and \
                "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()

    def run_array(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"backend": self.name, "onnxruntime": ort.__version__, "providers": self.providers}
