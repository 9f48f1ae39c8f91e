"""Training: the loop, checkpoints, loss, learning-rate schedule, RNG state, logs.

Submodules import torch; import them directly (``medresunet.training.checkpoint``) so
that importing this package stays cheap.
"""

from __future__ import annotations

__all__ = ["checkpoint", "loss", "schedule", "state", "loop", "validation", "logs"]
