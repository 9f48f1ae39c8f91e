"""Seeding and random-number-generator state capture/restore (checkpoint-safe).

The captured state is plain values and tensors only, so a checkpoint holding it loads
with ``torch.load(weights_only=True)``: torch's state as a uint8 tensor, numpy's
MT19937 state as a dict of ints and an int64 tensor, Python's ``random`` state as a list.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

_MASK32 = 2**32 - 1


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 32-bit seed that depends only on ``(seed, epoch, stream)``.

    The data pipeline is re-seeded from it at each epoch start, so the patches an epoch
    sees do not depend on what ran before (a resumed run sees the same patches as an
    uninterrupted one).
    """
    mixed = np.random.SeedSequence([int(seed) & _MASK32, int(epoch) & _MASK32, int(stream) & _MASK32])
    return int(mixed.generate_state(1, dtype=np.uint32)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed & _MASK32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The state of every global RNG as plain values (checkpoint-safe)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().clone(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [int(py_version), [int(v) for v in py_state], py_gauss],
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    np_state = state["numpy"]
    np.random.set_state((
        np_state["name"],
        np.asarray(np_state["keys"].numpy(), dtype=np.uint32),
        int(np_state["pos"]),
        int(np_state["has_gauss"]),
        float(np_state["cached_gaussian"]),
    ))
    version, values, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in values), gauss))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda])
