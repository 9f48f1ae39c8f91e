"""TorchScript backend: ``model.ts`` with ``torch.jit.load`` (channels-last on the CPU)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from medresunet.export.backends.base import pad_window


class TorchScriptRunner:
    """Run the traced network of an export; pads like the other exported graphs.

    Args:
        path: the ``model.ts`` file.
        multiple: the network's total stride per axis.
        device: ``torch.device`` to run on.
        spatial_dims: 2 or 3 (picks the channels-last layout on the CPU).
    """

    name = "torch"

    def __init__(self, path: str | os.PathLike[str], multiple: Sequence[int], device: Any,
                 spatial_dims: int) -> None:
        self.multiple = tuple(int(m) for m in multiple)
        module = torch.jit.load(str(path), map_location=device).eval()
        if getattr(device, "type", "cpu") == "cpu":
            # oneDNN's fast layout, as the .pt path uses (benchmarks/RESULTS.md)
            fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
            module = module.to(memory_format=fmt)
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        padded, spatial = pad_window(x, self.multiple)
        out = self.module(padded)
        return out[(slice(None), slice(None), *(slice(0, s) for s in spatial))]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "format": "torchscript", "torch": torch.__version__}
