"""Parity of an exported network with the checkpoint's: logits and argmax agreement.

Two inputs, both through the runner exactly as the sliding window calls it: a random
window (noise, about half the patch plus one voxel per axis, so no axis is a multiple of the
stride: the dynamic axes and the padding are exercised) and a real-sized window (a batch of
two windows of the patch size, smooth structures plus noise: what inference feeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# max |logit difference| allowed, relative to max(1, max |logit|): fp32 graphs differ by
# ~1e-5 on a random network; a trained one's logits reach ~20 and channels-last
# convolutions (the CPU layout) move them by ~1e-3
DEFAULT_TOLERANCE = 1e-3
MIN_AGREEMENT = 0.999  # argmax agreement allowed (ties of near-equal logits may flip)


def verification_inputs(channels: int, patch_size: Sequence[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """``{"random_window": (1, C, *(patch // 2 + 1)), "real_sized": (2, C, *patch)}``."""
    gen = torch.Generator().manual_seed(seed)
    patch = [int(p) for p in patch_size]
    window = torch.randn(1, channels, *[p // 2 + 1 for p in patch], generator=gen)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in patch], indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grids))
    blobs = torch.stack([torch.cos(3.0 * radius + c) * 2.0 for c in range(channels)])
    real = blobs[None] + 0.3 * torch.randn(2, channels, *patch, generator=gen)
    return {"random_window": window, "real_sized": real}


def compare(reference: Any, runner: Any, inputs: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Max |logit difference| and argmax agreement of ``runner`` against ``reference`` per input."""
    out: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():
        for name, x in inputs.items():
            ref = torch.as_tensor(reference(x)).float()
            got = torch.as_tensor(runner(x)).float()
            if got.shape != ref.shape:
                out[name] = {"shape": list(x.shape), "error": f"output shape {tuple(got.shape)}, "
                                                               f"expected {tuple(ref.shape)}"}
                continue
            out[name] = {"shape": list(x.shape),
                         "max_abs_diff": float((ref - got).abs().max()),
                         "max_abs_logit": float(ref.abs().max()),
                         "argmax_agreement": float((ref.argmax(1) == got.argmax(1)).float().mean())}
    return out


def passed(result: dict[str, dict[str, Any]], tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """True when every input's max |difference| is within ``tolerance * max(1, max |logit|)``
    and its argmax agrees on >= :data:`MIN_AGREEMENT` of the voxels."""
    return all("error" not in r and r["argmax_agreement"] >= MIN_AGREEMENT
               and r["max_abs_diff"] <= tolerance * max(1.0, r["max_abs_logit"])
               for r in result.values())


def format_rows(backend: str, result: dict[str, dict[str, Any]]) -> list[str]:
    """Printable lines: backend, input, shape, max |diff|, argmax agreement."""
    lines = []
    for name, r in result.items():
        shape = "x".join(str(s) for s in r["shape"][2:])
        if "error" in r:
            lines.append(f"{backend:14s} {name:14s} {shape:>12s}  {r['error']}")
        else:
            lines.append(f"{backend:14s} {name:14s} {shape:>12s}  max|diff| {r['max_abs_diff']:.2e} "
                         f"(max|logit| {r['max_abs_logit']:.3g})  argmax agreement "
                         f"{100 * r['argmax_agreement']:.3f} %")
    return lines


def label_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of voxels where two label volumes agree."""
    return float(np.mean(np.asarray(a) == np.asarray(b)))
