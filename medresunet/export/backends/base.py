"""The ``Runner`` contract and the padding every exported graph needs around it.

A runner is what the sliding window calls instead of a torch module: a callable mapping a
window batch ``(B, C, *window)`` (torch, float32, any device) to logits ``(B, K, *window)``
(torch, float32, on the input's device). :class:`ArrayRunner` does the part every exported
backend shares: the exported graphs take spatial sizes that are multiples of the network's
total stride, so the window is zero-padded at the end of each axis exactly as
``ResidualUNet.forward`` pads (same rule, :func:`~medresunet.export.metadata.padded_window`)
and the logits are cropped back; a subclass only maps a NumPy array to a NumPy array.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from medresunet.export.metadata import padded_window


@runtime_checkable
class Runner(Protocol):
    """A network backend: ``runner(x (B, C, *window)) -> logits (B, K, *window)``."""

    name: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def pad_window(x: torch.Tensor, multiple: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad ``x (B, C, *spatial)`` at the end of each axis to :func:`padded_window`.

    With the network's own padding (``ResidualUNet._pad``: each sample's and channel's
    minimum), so an exported graph sees exactly what the network would have padded to.
    """
    from medresunet.networks.resunet import ResidualUNet

    spatial = tuple(int(s) for s in x.shape[2:])
    target = padded_window(spatial, multiple)
    if target == spatial:
        return x, spatial
    return ResidualUNet._pad(x, target), spatial


class ArrayRunner:
    """Base of the exported-model runners: padding, cropping, torch <-> NumPy.

    Args:
        multiple: the network's total stride per spatial axis (``model.json``
            ``spatial_multiple``).
        name: the backend name shown in logs and run records.
    """

    name = "array"

    def __init__(self, multiple: Sequence[int], name: str | None = None) -> None:
        self.multiple = tuple(int(m) for m in multiple)
        if name:
            self.name = name

    def run_array(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Logits ``(B, K, *spatial)`` of a padded float32 C-contiguous batch."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        padded, spatial = pad_window(torch.as_tensor(x).float(), self.multiple)
        array = np.ascontiguousarray(padded.detach().cpu().numpy(), dtype=np.float32)
        out = torch.from_numpy(np.asarray(self.run_array(array), dtype=np.float32))
        out = out[(slice(None), slice(None), *(slice(0, s) for s in spatial))]
        return out.to(x.device)

    def describe(self) -> dict[str, Any]:
        """Plain-value description for run records."""
        return {"backend": self.name}
