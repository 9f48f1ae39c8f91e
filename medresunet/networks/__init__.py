"""The residual U-Net (2D and 3D) and its construction from a model config.

The network returns logits; softmax is applied by the loss and at inference. The classes
are imported on first use, so that :mod:`medresunet.networks.stride` (used by the config)
imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ResidualBlock", "ResidualUNet", "build_network", "network_kwargs", "total_stride"]

_WHERE = {"ResidualBlock": "blocks", "ResidualUNet": "resunet", "build_network": "resunet",
          "network_kwargs": "resunet", "total_stride": "stride"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"medresunet.networks.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'medresunet.networks' has no attribute {name!r}")
