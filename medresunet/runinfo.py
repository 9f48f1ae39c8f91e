"""``run.json``: what ran, on what, with which versions, inputs and outputs."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from medresunet.io.atomic import write_text_atomic


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", None))


def environment_info(device: Any | None = None) -> dict[str, Any]:
    """Versions, platform and device description as plain values."""
    import medresunet

    info: dict[str, Any] = {
        "medresunet": medresunet.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": {m: _version(m) for m in ("torch", "monai", "numpy", "nibabel", "SimpleITK", "pydicom")},
        "command": sys.argv,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device is not None:
        info["device"] = str(device)
        if getattr(device, "type", None) == "cuda":
            import torch

            info["device_name"] = torch.cuda.get_device_name(device)
    return info


def write_run_json(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (plus nothing else) as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(record, indent=2, default=str, sort_keys=False) + "\n")
