"""Datasets, preprocessing and MONAI transform chains (import submodules directly)."""
