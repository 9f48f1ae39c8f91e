"""medresunet: residual U-Net segmentation of CT and MR scans on MONAI.

The library does no argument parsing and no printing; the console scripts live in
the sibling package ``pipelines``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
