"""``RUN/progress.png``: training curves drawn from the run's ``log.csv`` (one line per fold).

Four panels: the training loss against the optimizer step (each epoch's mean, and an
exponential moving average of it), the validation Dice per label against the epoch, the
learning rate against the step, and the seconds per epoch with the minutes elapsed (the
``--max-minutes`` budget's end marked when there is one). With folds (``RUN/fold_K/log.csv``,
see DESIGN.md section 7) each fold is one colour and the picture sits in ``RUN``.

The picture reads only ``log.csv`` (what :mod:`medresunet.training.logs` writes), so it can
be redrawn from any run folder. Needs matplotlib (the ``report`` extra); without it,
:func:`write_progress` logs one line and returns None.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medresunet.crossval.layout import fold_dirs
from medresunet.io.atomic import write_bytes_atomic
from medresunet.metrics.figures import figure_png

logger = logging.getLogger(__name__)
_warned_no_matplotlib = False


@dataclass
class Curves:
    """The columns of one ``log.csv`` as float arrays (NaN where a cell is empty).

    Attributes:
        name: ``""`` for a single run, ``"fold K"`` for a fold.
        epoch, step, train_loss, lr, seconds: one value per epoch row.
        dice: label name -> validation Dice per row (NaN on epochs without validation).
        dice_mean: the mean over labels per row.
    """

    name: str
    epoch: np.ndarray
    step: np.ndarray
    train_loss: np.ndarray
    lr: np.ndarray
    seconds: np.ndarray
    dice_mean: np.ndarray
    dice: dict[str, np.ndarray] = field(default_factory=dict)


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_log(path: str | Path, name: str = "") -> Curves:
    """Read a ``log.csv`` (columns of :class:`medresunet.training.logs.TrainingLog`).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = list(reader)

    def col(key: str) -> np.ndarray:
        return np.array([_number(r.get(key)) for r in rows], dtype=float)

    labels = [c[len("val_dice_"):] for c in columns if c.startswith("val_dice_") and c != "val_dice_mean"]
    return Curves(name=name, epoch=col("epoch"), step=col("step"), train_loss=col("train_loss"),
                  lr=col("lr"), seconds=col("seconds"), dice_mean=col("val_dice_mean"),
                  dice={n: col(f"val_dice_{n}") for n in labels})


def run_root(run_dir: str | Path) -> Path:
    """The folder that holds ``progress.png``: ``RUN`` for ``RUN`` and for ``RUN/fold_K``."""
    run_dir = Path(run_dir)
    return run_dir.parent if any(d == run_dir for _, d in fold_dirs(run_dir.parent)) else run_dir


def find_logs(root: str | Path) -> list[tuple[str, Path]]:
    """``(name, log.csv)`` of a run folder: its own log, then its folds' in fold order."""
    root = Path(root)
    found = [("", root / "log.csv")] if (root / "log.csv").is_file() else []
    found += [(f"fold {k}", p / "log.csv") for k, p in fold_dirs(root) if (p / "log.csv").is_file()]
    return found


def smooth(values: np.ndarray, window: int | None = None) -> np.ndarray:
    """Centred moving average over the finite values (no lag, unlike an EMA); NaN stays NaN.

    Args:
        values: one value per epoch.
        window: odd number of epochs averaged; None: about a tenth of the run (1 below 20).
    """
    values = np.asarray(values, float)
    if window is None:
        window = max(1, (len(values) // 10) | 1)
    half = window // 2
    ok = np.isfinite(values)
    out = np.full(values.shape, np.nan)
    for i in np.flatnonzero(ok):
        part = values[max(0, i - half): i + half + 1]
        out[i] = float(np.nanmean(part))  # shrinks at the ends
    return out


def epoch_to_step(c: Curves, epoch: float) -> float:
    """The optimizer step at a (fractional) epoch: interpolated between the log's epoch ends,
    extrapolated with the last full epoch's steps beyond them."""
    ok = np.isfinite(c.epoch) & np.isfinite(c.step)
    e, s = np.concatenate([[0.0], c.epoch[ok]]), np.concatenate([[0.0], c.step[ok]])
    if epoch <= e[-1]:
        return float(np.interp(epoch, e, s))
    per = float(np.max(np.diff(s))) if len(s) > 1 else 0.0  # a budget-cut last epoch is shorter
    return float(s[-1] + (epoch - e[-1]) * per)


def budget_end_epoch(seconds: np.ndarray, minutes: float, from_epoch: int = 0) -> float | None:
    """The epoch (fractional, on the log's epoch axis) at which a budget of ``minutes``
    counted from the end of epoch ``from_epoch`` runs out: reached, or projected from the
    mean epoch time so far. None without a timed epoch after ``from_epoch``."""
    timed = np.nan_to_num(seconds[from_epoch:], nan=0.0)
    if timed.size == 0 or timed.sum() <= 0:
        return None
    elapsed = np.cumsum(timed)
    budget_s = minutes * 60.0
    if elapsed[-1] >= budget_s:
        k = int(np.searchsorted(elapsed, budget_s))
        before = elapsed[k - 1] if k else 0.0
        return from_epoch + k + (budget_s - before) / max(timed[k], 1e-9)
    return from_epoch + timed.size + (budget_s - elapsed[-1]) / float(timed.mean())


def _draw(ax_loss, ax_dice, ax_lr, ax_time, curves: Sequence[Curves], colours: list) -> None:
    ax_minutes = ax_time.twinx()
    ax_minutes.set_ylabel("minutes elapsed (dashed)", fontsize=11)
    folds = len(curves) > 1 or bool(curves and curves[0].name)
    for c, colour in zip(curves, colours, strict=False):  # colours: at least one
        tag = f"{c.name}: " if c.name else ""
        ax_loss.plot(c.step, c.train_loss, "o", color=colour, alpha=0.45, ms=4)
        ax_loss.plot(c.step, smooth(c.train_loss), "-", color=colour, lw=2, label=f"{tag}smoothed")
        ax_lr.plot(c.step, c.lr, "-", color=colour, lw=1.6, label=c.name or None)
        ax_time.plot(c.epoch, c.seconds, "o-", color=colour, ms=3, lw=1.2, label=c.name or None)
        ax_minutes.plot(c.epoch, np.nancumsum(c.seconds) / 60.0, "--", color=colour, lw=1.2, alpha=0.7)
        val = np.isfinite(c.dice_mean)
        if folds:  # one colour per fold: its mean Dice bold, each label thin
            ax_dice.plot(c.epoch[val], c.dice_mean[val], "o-", color=colour, lw=2.2, ms=3,
                         label=f"{c.name} mean")
            for values in c.dice.values():
                ax_dice.plot(c.epoch[val], values[val], "-", color=colour, lw=0.8, alpha=0.6)
        else:  # one colour per label, the mean in black
            for (name, values), lc in zip(c.dice.items(), _palette(len(c.dice)), strict=False):
                ax_dice.plot(c.epoch[val], values[val], "o-", color=lc, lw=1.6, ms=6, label=name)
            if len(c.dice) > 1:
                ax_dice.plot(c.epoch[val], c.dice_mean[val], "k--", lw=1.6, label="mean")
    ax_minutes.set_ylim(bottom=0)


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(max(n, 1))]


def render_progress_png(curves: Sequence[Curves], max_minutes: float | None = None,
                        budget_curve: int = -1, budget_from_epoch: int = 0) -> bytes:
    """The four-panel PNG (1300 x 900 px). Needs matplotlib.

    Args:
        curves: one per run or fold (:func:`read_log`).
        max_minutes: the ``--max-minutes`` budget of the invocation that trains
            ``curves[budget_curve]``; its end is marked on every panel.
        budget_curve: index of the curve the budget belongs to.
        budget_from_epoch: the epoch that invocation started from (0, or the resumed epoch).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 9), dpi=100)
    axes = fig.subplots(2, 2)
    (ax_loss, ax_dice), (ax_lr, ax_time) = axes
    colours = _palette(len(curves))
    _draw(ax_loss, ax_dice, ax_lr, ax_time, curves, colours)
    if max_minutes is not None and curves:
        _mark_budget(axes, curves[budget_curve], max_minutes, budget_from_epoch)
    titles = (("training loss (dots: epoch mean)", "step"), ("validation Dice", "epoch"),
              ("learning rate", "step"), ("seconds per epoch", "epoch"))
    for ax, (title, xlabel) in zip(axes.ravel(), titles, strict=True):
        ax.set_title(title, fontsize=13)
        ax.set_xlabel(xlabel, fontsize=11)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=10, loc="best")
    _share_x(axes, curves)
    ax_dice.set_ylim(-0.02, 1.02)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    # fixed margins: tight_layout and a tight box would measure every text twice (1 s a picture)
    fig.subplots_adjust(left=0.06, right=0.94, bottom=0.07, top=0.96, hspace=0.28, wspace=0.2)
    return figure_png(fig, tight=False)


def _share_x(axes, curves: Sequence[Curves]) -> None:
    """Epoch panels span every epoch (a single validation is not a zoomed-in dot), step
    panels start at step 0; both include what is already drawn (a projected budget end)."""
    epochs = [float(np.nanmax(c.epoch)) for c in curves if np.isfinite(c.epoch).any()]
    steps = [float(np.nanmax(c.step)) for c in curves if np.isfinite(c.step).any()]
    if not epochs:
        return
    for ax in (axes[0][1], axes[1][1]):
        ax.set_xlim(0.5, max(max(epochs) + 0.5, ax.get_xlim()[1]))
    for ax in (axes[0][0], axes[1][0]):
        hi = max(max(steps, default=1.0), ax.get_xlim()[1])
        ax.set_xlim(0, hi * 1.03)


def _mark_budget(axes, c: Curves, minutes: float, from_epoch: int) -> None:
    end = budget_end_epoch(c.seconds, minutes, from_epoch)
    if end is None:
        return
    step = epoch_to_step(c, end)
    for ax, x in zip(axes.ravel(), (step, end, step, end), strict=True):
        ax.axvline(x, color="#c00", ls=":", lw=1.8, label=f"budget end ({minutes:.3g} min)")


def write_progress(run_dir: str | Path, max_minutes: float | None = None,
                   resumed_from_epoch: int = 0) -> Path | None:
    """Redraw ``progress.png`` of the run (or fold) folder ``run_dir``, atomically.

    With ``run_dir`` = ``RUN/fold_K`` the picture is ``RUN/progress.png`` with every fold.

    Args:
        run_dir: the folder that training writes ``log.csv`` into.
        max_minutes: this invocation's ``--max-minutes`` (marks the budget's end), or None.
        resumed_from_epoch: the epoch this invocation started from (its budget counts from there).

    Returns:
        The path written, or None when matplotlib is missing (logged once), no log exists, or
        drawing failed (logged as a warning: a picture never stops training).
    """
    global _warned_no_matplotlib
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not _warned_no_matplotlib:
            logger.info("matplotlib is not installed: no progress.png (pip install 'medresunet[report]')")
            _warned_no_matplotlib = True
        return None
    run_dir = Path(run_dir)
    root = run_root(run_dir)
    logs = find_logs(root)
    if not logs:
        return None
    try:
        curves = [read_log(path, name) for name, path in logs]
        own = [i for i, (_, path) in enumerate(logs) if path.parent == run_dir]
        png = render_progress_png(curves, max_minutes, own[0] if own else -1, resumed_from_epoch)
        return write_bytes_atomic(root / "progress.png", png)
    except Exception as err:  # noqa: BLE001 - a picture must not stop a training run; the warning says why
        logger.warning("%s: progress.png not drawn (%s: %s)", root, type(err).__name__, err)
        return None
