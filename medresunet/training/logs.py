"""Per-epoch training log: ``log.csv`` in the run folder, TensorBoard scalars when available.

``log.csv`` columns: ``epoch, step, train_loss, val_dice_mean, val_dice_<label>..., lr,
seconds, steps_per_s, gpu_mem_gb`` (validation columns empty on epochs without validation;
``gpu_mem_gb``, the epoch's peak allocated GPU memory, empty off CUDA). On resume the rows
of epochs after the checkpoint's epoch are dropped, so the log matches the weights.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medresunet.io.atomic import write_text_atomic

logger = logging.getLogger(__name__)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class TrainingLog:
    """Collects one row per epoch and rewrites ``log.csv`` atomically after each."""

    def __init__(self, run_dir: str | Path, label_names: Sequence[str], resume_epoch: int | None = None,
                 tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "log.csv"
        self.columns = ["epoch", "step", "train_loss", "val_dice_mean",
                        *[f"val_dice_{n}" for n in label_names], "lr", "seconds", "steps_per_s",
                        "gpu_mem_gb"]
        self.rows: list[dict[str, str]] = []
        if resume_epoch is not None and self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as fh:
                self.rows = [r for r in csv.DictReader(fh) if r.get("epoch", "").isdigit()
                             and int(r["epoch"]) <= resume_epoch]
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                logger.debug("tensorboard not installed; no TensorBoard events")
            else:
                purge = None
                if resume_epoch is not None and self.rows:
                    purge = int(self.rows[-1]["step"]) + 1
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge)

    def add(self, epoch: int, step: int, train_loss: float, lr: float, seconds: float,
            val: dict[str, Any] | None = None, figures: dict[str, Any] | None = None) -> None:
        """Record epoch ``epoch`` (1-based) ending at optimizer step ``step``.

        ``figures``: ``steps_per_s`` and ``gpu_mem_gb`` of the epoch (either may be missing).
        """
        row: dict[str, Any] = {"epoch": epoch, "step": step, "train_loss": train_loss, "lr": lr,
                               "seconds": round(seconds, 2), **(figures or {})}
        if val is not None:
            row["val_dice_mean"] = val["dice_mean"]
            for name, value in val["dice"].items():
                row[f"val_dice_{name}"] = value
        self.rows.append({c: _fmt(row.get(c)) for c in self.columns})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())
        if self.tb is not None:
            self.tb.add_scalar("train/loss", train_loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            if val is not None and not math.isnan(val["dice_mean"]):
                self.tb.add_scalar("val/dice_mean", val["dice_mean"], step)
                for name, value in val["dice"].items():
                    if not math.isnan(value):
                        self.tb.add_scalar(f"val/dice_{name}", value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
