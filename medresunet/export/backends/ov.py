"""OpenVINO backend: ``model.onnx`` (fp32) or the int8 IR ``model_int8.xml`` on the CPU.

OpenVINO compiles a model for one input shape much faster than it runs a dynamic one, and a
sliding window sends one window shape (and at most one smaller last batch), so a compiled
model is kept per input shape.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from medresunet.export.backends.base import ArrayRunner


class OpenVinoRunner(ArrayRunner):
    """Run an ONNX file or an OpenVINO IR (``.xml`` + ``.bin``) with OpenVINO on the CPU.

    Args:
        path: ``model.onnx`` or ``model_int8.xml``.
        multiple: the network's total stride per axis.
        name: ``openvino`` or ``openvino-int8``.
        threads: inference threads (default: OpenVINO's, one per core).
    """

    name = "openvino"

    def __init__(self, path: str | os.PathLike[str], multiple: Sequence[int], name: str = "openvino",
                 threads: int | None = None) -> None:
        import openvino as ov

        super().__init__(multiple, name)
        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        # f32: on CPUs with AVX512-BF16/AMX OpenVINO would otherwise run bf16 (logits off by
        # ~5e-2 on a tiny network); the int8 IR keeps its int8 layers either way
        self.config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled: dict[tuple[int, ...], Any] = {}

    def _compiled_for(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._compiled:
            model = self.model.clone()
            model.reshape({model.inputs[0].any_name: list(shape)})
            self._compiled[shape] = self.core.compile_model(model, "CPU", self.config)
        return self._compiled[shape]

    def run_array(self, x: np.ndarray) -> np.ndarray:
        compiled = self._compiled_for(tuple(x.shape))
        return np.asarray(compiled(x)[compiled.outputs[0]])

    def describe(self) -> dict[str, Any]:
        import openvino as ov

        return {"backend": self.name, "openvino": ov.get_version()}
