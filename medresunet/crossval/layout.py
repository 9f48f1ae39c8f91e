"""Where a run with folds keeps its pieces, and which folds are done (pure paths and JSON)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medresunet.errors import UsageError
from medresunet.io.atomic import write_text_atomic

PathLike = str | os.PathLike[str]
_FOLD_DIR = re.compile(r"^fold_(\d+)$")
#: The fold checkpoint that predicts the out-of-fold cases and joins the ensemble: best.pt
#: was chosen on the very cases it would predict, so its CV estimate would be optimistic.
MEMBER_CHECKPOINT = "last.pt"


def fold_dir(run_dir: PathLike, fold: int) -> Path:
    """``RUN/fold_K``."""
    return Path(run_dir) / f"fold_{int(fold)}"


def fold_dirs(run_dir: PathLike) -> list[tuple[int, Path]]:
    """The ``(K, RUN/fold_K)`` folders present, by fold."""
    run = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run.iterdir() if p.is_dir() and (m := _FOLD_DIR.match(p.name))] \
        if run.is_dir() else []
    return sorted(found)


def cv_dir(run_dir: PathLike) -> Path:
    """``RUN/cv``."""
    return Path(run_dir) / "cv"


def predictions_dir(run_dir: PathLike) -> Path:
    """``RUN/cv/predictions``: one out-of-fold segmentation per case."""
    return cv_dir(run_dir) / "predictions"


def probabilities_dir(run_dir: PathLike) -> Path:
    """``RUN/cv/probabilities``: out-of-fold class probabilities (``--oof-probabilities``)."""
    return cv_dir(run_dir) / "probabilities"


def oof_record_path(run_dir: PathLike, fold: int) -> Path:
    """``RUN/fold_K/oof.json``: written once the fold's validation cases are predicted."""
    return fold_dir(run_dir, fold) / "oof.json"


def write_folds(run_dir: PathLike, folds: int, cases: Mapping[int, Sequence[str]]) -> Path:
    """Write ``RUN/cv/folds.json``: the number of folds and each fold's validation case ids."""
    doc = {"folds": int(folds), "validation_cases": {str(k): sorted(v) for k, v in sorted(cases.items())}}
    return write_text_atomic(cv_dir(run_dir) / "folds.json", json.dumps(doc, indent=1) + "\n")


def read_folds(run_dir: PathLike) -> tuple[int, dict[int, list[str]]]:
    """``(folds, fold -> validation case ids)`` from ``RUN/cv/folds.json``.

    Raises:
        UsageError: the file is missing or unreadable (not a run trained with ``--fold``).
    """
    path = cv_dir(run_dir) / "folds.json"
    try:
        doc = json.loads(path.read_text())
        return int(doc["folds"]), {int(k): list(v) for k, v in doc["validation_cases"].items()}
    except FileNotFoundError as err:
        raise UsageError(f"{path}: not found; expected a run folder trained with "
                         "medresunet-train --fold") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path}: unreadable fold list ({err}); expected the file medresunet-train "
                         "--fold writes") from err


def write_oof_record(run_dir: PathLike, fold: int, record: Mapping[str, Any]) -> Path:
    """Write ``RUN/fold_K/oof.json`` (the fold's out-of-fold predictions are complete)."""
    return write_text_atomic(oof_record_path(run_dir, fold), json.dumps(dict(record), indent=1) + "\n")


def read_oof_record(run_dir: PathLike, fold: int) -> dict[str, Any] | None:
    """The fold's ``oof.json``, or None when it was not written (or is unreadable)."""
    try:
        return json.loads(oof_record_path(run_dir, fold).read_text())
    except (OSError, ValueError):
        return None
