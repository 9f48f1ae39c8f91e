"""The residual U-Net (2D and 3D) and its construction from a model config.

The network returns logits; softmax is applied by the loss and at inference.
"""

from __future__ import annotations

from medresunet.networks.blocks import ResidualBlock
from medresunet.networks.resunet import ResidualUNet, build_network, network_kwargs

__all__ = ["ResidualBlock", "ResidualUNet", "build_network", "network_kwargs"]
