"""The manifest's types (:class:`Case`, :class:`Manifest`), its keys and the checks of its values.

Every problem found is collected (:class:`_Problems`) and raised as one
:class:`~medresunet.errors.ManifestError` naming the manifest, the case and the key, with
what was expected and what was found.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medresunet.errors import ManifestError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TOP_KEYS = ("name", "root", "channels", "labels", "folds", "cases")
CASE_KEYS = ("id", "image", "images", "label", "split", "fold")
MSD_KEYS = ("name", "modality", "labels", "training", "test", "description", "reference",
            "licence", "license", "release", "tensorImageSize", "numTraining", "numTest")
MSD_ENTRY_KEYS = ("image", "label")
_MAX_LISTED = 30



@dataclass(frozen=True)
class Case:
    """One case of a dataset.

    Attributes:
        case_id: unique id within the manifest.
        images: absolute paths, one per input channel (a file or a DICOM series folder).
        label: absolute path of the label volume, or None (unlabelled / test case).
        split: "train", "val", "test" or None (then ``fold`` or the seeded k-fold decides).
        fold: explicit cross-validation fold (0-based) or None.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    split: str | None = None
    fold: int | None = None


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest.

    Attributes:
        name: dataset name.
        path: absolute path of the manifest file.
        channels: modality per input channel, e.g. ``("CT",)`` or ``("T1", "T2")``.
        labels: label name -> integer value, with ``"background": 0``.
        cases: the cases, in the manifest's order.
        folds: number of folds declared by the manifest (``folds`` key), or None.
    """

    name: str
    path: Path
    channels: tuple[str, ...]
    labels: dict[str, int]
    cases: tuple[Case, ...]
    folds: int | None = None


class _Problems:
    """Collects the problems of one manifest and raises them together."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}" if where else message)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1:  # one problem: one line naming the manifest and the problem
            raise ManifestError(f"manifest {self.path}: {self.items[0]}; fix the manifest "
                                "(schema: data_manifests/README.md)")
        shown = self.items[:_MAX_LISTED]
        more = len(self.items) - len(shown)
        lines = "\n  ".join(shown + ([f"... and {more} more"] if more else []))
        raise ManifestError(
            f"manifest {self.path}: {len(self.items)} problem(s); fix the manifest "
            f"(schema: data_manifests/README.md):\n  {lines}"
        )


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _check_unknown(doc: Mapping, allowed: Sequence[str], where: str, probs: _Problems) -> None:
    for key in doc:
        if key not in allowed:
            probs.add(where, f"unknown key {key!r}; expected one of {', '.join(allowed)}")


def _check_labels(labels: Any, probs: _Problems) -> dict[str, int]:
    if not isinstance(labels, dict) or not labels:
        probs.add("key 'labels'", f"expected a non-empty mapping name -> int, got {_type_name(labels)}")
        return {}
    out: dict[str, int] = {}
    seen: dict[int, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not name:
            probs.add("key 'labels'", f"expected label names as non-empty strings, got {name!r}")
            continue
        if not _is_int(value) or value < 0:
            probs.add(f"label {name!r}", f"expected a non-negative int, got {value!r}")
            continue
        if value in seen:
            probs.add(f"label {name!r}", f"duplicate value {value} (also {seen[value]!r}); expected one name per value")
            continue
        seen[value] = name
        out[name] = value
    if out.get("background") != 0:
        got = f"'background': {out['background']}" if "background" in out else f"names {sorted(out)}"
        probs.add("key 'labels'", f"expected 'background': 0 in the label map, got {got}")
    return out


def _check_channels(channels: Any, probs: _Problems) -> tuple[str, ...]:
    if (not isinstance(channels, list) or not channels
            or not all(isinstance(c, str) and c for c in channels)):
        probs.add("key 'channels'", f"expected a non-empty list of modality names, e.g. ['CT'], got {channels!r}")
        return ()
    return tuple(channels)


def _check_path(p: Path, where: str, key: str, probs: _Problems, check: bool, folder_ok: bool) -> None:
    if not check:
        return
    if not p.exists():
        probs.add(where, f"{key} {p} not found; expected an existing {'file or DICOM folder' if folder_ok else 'file'}")
    elif p.is_dir() and not folder_ok:
        probs.add(where, f"{key} {p} is a folder; expected a label file")


def _check_duplicates(cases: Iterable[Case], probs: _Problems) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            probs.add(f"case {case.case_id!r}", "duplicate case id; expected unique ids")
        seen.add(case.case_id)
