"""Inference: sliding-window prediction, test-time flips, postprocessing, inversion.

:class:`~medresunet.inference.predictor.Predictor` turns a checkpoint and a scan into a
label volume on the scan's original grid. The core modules (:mod:`.sliding`, :mod:`.tta`,
:mod:`.postprocess`) do no file IO. Importing this package imports no torch; the names
below load their module on first use.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Predictor": "medresunet.inference.predictor",
    "Prediction": "medresunet.inference.predictor",
    "LoadedScan": "medresunet.inference.predictor",
    "sliding_window_logits": "medresunet.inference.sliding",
    "predict_probabilities": "medresunet.inference.tta",
    "postprocess": "medresunet.inference.postprocess",
    "keep_largest_component": "medresunet.inference.postprocess",
    "remove_small_components": "medresunet.inference.postprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medresunet.inference' has no attribute {name!r}")
