"""Checkpoints: one plain dict per file, readable with ``torch.load(weights_only=True)``.

The dict (DESIGN.md section 4) holds everything inference needs and, under
``train_state``, everything an exact resume needs::

    format_version      int (FORMAT_VERSION)
    medresunet_version  str
    model               dict, ResidualUNet keyword arguments (networks.network_kwargs)
    state_dict          dict[str, Tensor], the network weights
    preprocessing       dict, Preprocessing.to_dict()
    labels              dict[str, int], name -> label value (with "background": 0)
    input_channels      list[str], modality per input channel
    infer               dict, config_to_dict(InferConfig)
    train_state         dict: epoch, global_step, optimizer, scheduler, scaler, rng,
                        best_metric (and best_epoch, epochs)
    config              dict, the resolved Config as plain values

Every value is a tensor, dict, list, tuple, str, int, float, bool or None, so the
restricted unpickler of ``weights_only=True`` accepts it; a file that needs
arbitrary code to load is refused.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

from medresunet.errors import CheckpointError
from medresunet.io.atomic import atomic_path

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "state_dict", "preprocessing", "labels", "input_channels")


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        path: target file, e.g. ``RUN/last.pt``; its folder is created.
        payload: the checkpoint dict (plain values and tensors only).

    Returns:
        The target path.
    """
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    logger.debug("wrote checkpoint %s", path)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True, map_location="cpu")``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds objects the
            safe unpickler refuses, is not a medresunet checkpoint, or has another
            ``format_version``. The message names the file and the reason.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"{path}: checkpoint file {what}; give the path of a .pt written by medresunet-train")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol notes on foreign files
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights_only" in text or "Weights only" in text or "Unsupported global" in text:
            lines = [ln.strip() for ln in text.splitlines() if "Unsupported global" in ln or "GLOBAL" in ln]
            reason = lines[0] if lines else "the safe unpickler refused it"
            raise CheckpointError(
                f"{path}: refused to load: the file holds objects that need arbitrary code to unpickle "
                f"(not a plain medresunet checkpoint; {reason}). Load only checkpoints you trust "
                "and that medresunet-train wrote."
            ) from err
        reason = text.splitlines()[0] if text else type(err).__name__
        raise CheckpointError(f"{path}: cannot read the checkpoint, the file is corrupt ({reason})") from err
    except Exception as err:  # noqa: BLE001 - torch.load of a foreign file raises anything (struct.error, ...)
        first = str(err).splitlines()[0][:160] if str(err) else ""
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise CheckpointError(
            f"{path}: cannot read the checkpoint, the file is truncated or corrupt ({reason}); "
            "use another checkpoint (e.g. best.pt or last.pt of the run)"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a medresunet checkpoint (expected a dict, got {type(ckpt).__name__})")
    if "format_version" not in ckpt:
        raise CheckpointError(
            f"{path}: not a medresunet checkpoint (no format_version; keys: {sorted(map(str, ckpt))[:8]})"
        )
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {ckpt['format_version']!r} is not supported "
            f"(this medresunet reads version {FORMAT_VERSION}); use the medresunet version that wrote it"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete medresunet checkpoint, missing keys {missing}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> Any:
    """Build the ResidualUNet of a checkpoint, load its weights strictly, eval mode.

    Args:
        ckpt: a dict from :func:`load_checkpoint`.

    Returns:
        ``ResidualUNet`` on the CPU in eval mode.

    Raises:
        CheckpointError: the hyper-parameters do not build a network, or the weights do
            not fit it (the message lists missing/unexpected keys and shape mismatches).
    """
    from medresunet.networks import ResidualUNet

    try:
        model = ResidualUNet(**ckpt["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint model hyper-parameters do not build a ResidualUNet: {err}") from err
    state = ckpt["state_dict"]
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}" + (f" (+{len(missing) - 5})" if len(missing) > 5 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys {unexpected[:5]}" + (f" (+{len(unexpected) - 5})" if len(unexpected) > 5 else "")
            )
        if shapes:
            parts.append("shape mismatches " + "; ".join(shapes[:5]))
        raise CheckpointError("checkpoint weights do not fit its network (another architecture?): " + ", ".join(parts))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights do not fit its network: {err}") from err
    model.eval()
    return model
