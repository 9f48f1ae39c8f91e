"""Deployment: the network exported to ONNX / TorchScript, and backends that run it.

* :mod:`~medresunet.export.metadata`: ``model.json`` (and ONNX metadata) of an export;
* :mod:`~medresunet.export.writers`: the ONNX and TorchScript writers;
* :mod:`~medresunet.export.verify`: parity of an export with its checkpoint;
* :mod:`~medresunet.export.exporter`: checkpoint -> verified export folder;
* :mod:`~medresunet.export.quantize`: optional int8 (NNCF) with a validation-Dice gate;
* :mod:`~medresunet.export.backends`: the ``Runner`` interface (torch, onnxruntime, openvino);
* :mod:`~medresunet.export.loading`: ``--model`` (checkpoint or export) -> Predictor.

Importing this package imports no runtime (onnx, onnxruntime, openvino are optional extras).
"""

from __future__ import annotations
