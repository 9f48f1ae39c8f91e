"""Dataset manifests: a JSON/YAML list of cases -> :class:`Manifest` of :class:`Case` s.

Two formats are read (schema in ``data_manifests/README.md``):

* the project's own format, JSON or YAML, with a top-level ``cases`` list;
* a Medical Segmentation Decathlon ``dataset.json``, as it is (``modality``, ``labels``
  int -> name, ``training``, ``test``).

Relative paths resolve against the manifest's folder, or against its ``root`` (itself
relative to the manifest's folder). Every problem found is collected and raised as one
:class:`~medresunet.errors.ManifestError` naming the manifest, the case and the key,
with what was expected and what was found. This module imports no torch.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medresunet.errors import ManifestError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TOP_KEYS = ("name", "root", "channels", "labels", "folds", "cases")
CASE_KEYS = ("id", "image", "images", "label", "split", "fold")
MSD_KEYS = ("name", "modality", "labels", "training", "test", "description", "reference",
            "licence", "license", "release", "tensorImageSize", "numTraining", "numTest")
MSD_ENTRY_KEYS = ("image", "label")
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gz")
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


def case_id_from_name(path: str | Path) -> str:
    """The case id of a scan path: its file name without the scan suffix
    (``"./imagesTr/liver_3.nii.gz"`` -> ``"liver_3"``; a folder keeps its name)."""
    name = Path(str(path).rstrip("/\\")).name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


# ----------------------------------------------------------------------------- reading


def _read_document(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ManifestError(
            f"manifest {path}: expected a .json, .yaml or .yml file, got suffix {suffix or '(none)'!r}"
        )
    if not path.is_file():
        raise ManifestError(f"manifest {path}: file not found; give the path of an existing manifest")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"manifest {path}: cannot read it ({err})") from err
    try:
        if suffix == ".json":
            return json.loads(text, object_pairs_hook=_no_duplicate_keys)
        return yaml.safe_load(text)
    except ValueError as err:  # json.JSONDecodeError and duplicate keys
        raise ManifestError(f"manifest {path}: invalid JSON: {err}") from err
    except yaml.YAMLError as err:
        raise ManifestError(f"manifest {path}: invalid YAML: {err}") from err


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def load_manifest(path: str | Path, check_files: bool = True) -> Manifest:
    """Read and validate a manifest (project JSON/YAML or MSD ``dataset.json``).

    Args:
        path: the manifest file (``.json``, ``.yaml`` or ``.yml``).
        check_files: check that every image (file or folder) and label exists.

    Returns:
        The :class:`Manifest`, with absolute paths.

    Raises:
        ManifestError: listing every problem found (unknown keys, wrong types, missing
            files, duplicate ids, channel count, label map, split, fold).
    """
    path = Path(path).expanduser().resolve()
    doc = _read_document(path)
    if not isinstance(doc, dict):
        raise ManifestError(f"manifest {path}: expected a mapping at the top level, got {_type_name(doc)}")
    if "cases" in doc:
        manifest = _parse_project(doc, path, check_files)
    elif "training" in doc or "modality" in doc:
        manifest = _parse_msd(doc, path, check_files)
    else:
        raise ManifestError(
            f"manifest {path}: expected a 'cases' list (medresunet format) or 'training' and "
            f"'modality' (MSD dataset.json), got keys {sorted(map(str, doc))}"
        )
    log.debug("manifest %s: %d case(s), channels %s", path, len(manifest.cases), manifest.channels)
    return manifest


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


def _parse_project(doc: dict, path: Path, check_files: bool) -> Manifest:
    probs = _Problems(path)
    _check_unknown(doc, TOP_KEYS, "top level", probs)
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name:
        probs.add("key 'name'", f"expected a non-empty string, got {name!r}")
        name = path.stem
    base = path.parent
    root = doc.get("root")
    if root is not None:
        if not isinstance(root, str) or not root:
            probs.add("key 'root'", f"expected a folder path string, got {root!r}")
        else:
            base = _resolve(path.parent, root)
            if check_files and not base.is_dir():
                probs.add("key 'root'", f"folder {base} not found; expected an existing folder")
    channels = _check_channels(doc.get("channels"), probs)
    labels = _check_labels(doc.get("labels"), probs)
    folds = doc.get("folds")
    if folds is not None and (not _is_int(folds) or folds < 2):
        probs.add("key 'folds'", f"expected an int >= 2, got {folds!r}")
        folds = None
    raw_cases = doc.get("cases")
    cases: list[Case] = []
    if not isinstance(raw_cases, list) or not raw_cases:
        probs.add("key 'cases'", f"expected a non-empty list of cases, got {_type_name(raw_cases)}")
        raw_cases = []
    for index, entry in enumerate(raw_cases):
        case = _parse_case(entry, index, base, len(channels), folds, check_files, probs)
        if case is not None:
            cases.append(case)
    _check_duplicates(cases, probs)
    probs.raise_if_any()
    return Manifest(name=name, path=path, channels=channels, labels=labels, cases=tuple(cases), folds=folds)


def _parse_case(entry: Any, index: int, base: Path, n_channels: int, folds: int | None,
                check_files: bool, probs: _Problems) -> Case | None:
    if not isinstance(entry, dict):
        probs.add(f"cases[{index}]", f"expected a mapping with 'id' and 'image', got {_type_name(entry)}")
        return None
    case_id = entry.get("id")
    if not isinstance(case_id, str) or not case_id:
        probs.add(f"cases[{index}]", f"key 'id': expected a non-empty string, got {case_id!r}")
        return None
    where = f"case {case_id!r}"
    _check_unknown(entry, CASE_KEYS, where, probs)
    ok = True
    if ("image" in entry) == ("images" in entry):
        probs.add(where, "expected exactly one of 'image' (one channel) or 'images' (list, one per channel)")
        return None
    raw = [entry["image"]] if "image" in entry else entry["images"]
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) and x for x in raw):
        key = "image" if "image" in entry else "images"
        probs.add(where, f"key {key!r}: expected {'a path string' if key == 'image' else 'a list of path strings'}, got {entry[key]!r}")
        return None
    images = tuple(_resolve(base, x) for x in raw)
    if n_channels and len(images) != n_channels:
        probs.add(where, f"expected {n_channels} image(s), one per channel, got {len(images)}")
        ok = False
    for p in images:
        _check_path(p, where, "image", probs, check_files, folder_ok=True)
    label = entry.get("label")
    if label is not None:
        if not isinstance(label, str) or not label:
            probs.add(where, f"key 'label': expected a path string or null, got {label!r}")
            ok = False
            label = None
        else:
            label = _resolve(base, label)
            _check_path(label, where, "label", probs, check_files, folder_ok=False)
    split = entry.get("split")
    if split is not None and split not in SPLITS:
        probs.add(where, f"key 'split': expected one of {', '.join(SPLITS)} or null, got {split!r}")
        ok = False
    fold = entry.get("fold")
    if fold is not None and (not _is_int(fold) or fold < 0 or (folds is not None and fold >= folds)):
        top = f"0..{folds - 1}" if folds is not None else "an int >= 0"
        probs.add(where, f"key 'fold': expected {top}, got {fold!r}")
        ok = False
    if split in ("train", "val") and label is None and ok:
        probs.add(where, f"split {split!r} needs a 'label'; give one or use split 'test'")
        ok = False
    if fold is not None and split == "test" and ok:
        probs.add(where, "has both split 'test' and a fold; expected one of them")
        ok = False
    if not ok:
        return None
    return Case(case_id=case_id, images=images, label=label, split=split, fold=fold)


def _check_duplicates(cases: Iterable[Case], probs: _Problems) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            probs.add(f"case {case.case_id!r}", "duplicate case id; expected unique ids")
        seen.add(case.case_id)


def _int_keyed(mapping: Any, key: str, probs: _Problems) -> dict[int, str]:
    if not isinstance(mapping, dict) or not mapping:
        probs.add(f"key {key!r}", f"expected a non-empty mapping \"0\" -> name, got {_type_name(mapping)}")
        return {}
    out: dict[int, str] = {}
    for k, v in mapping.items():
        try:
            idx = int(k)
        except (TypeError, ValueError):
            probs.add(f"key {key!r}", f"expected integer keys, got {k!r}")
            continue
        if not isinstance(v, str) or not v:
            probs.add(f"key {key!r}", f"entry {k!r}: expected a name string, got {v!r}")
            continue
        out[idx] = v
    return out


def _parse_msd(doc: dict, path: Path, check_files: bool) -> Manifest:
    probs = _Problems(path)
    _check_unknown(doc, MSD_KEYS, "top level (MSD dataset.json)", probs)
    name = doc.get("name", path.parent.name)
    if not isinstance(name, str) or not name:
        name = path.parent.name
    modality = _int_keyed(doc.get("modality"), "modality", probs)
    if modality and sorted(modality) != list(range(len(modality))):
        probs.add("key 'modality'", f"expected keys 0..{len(modality) - 1}, got {sorted(modality)}")
    channels = tuple(modality[i] for i in sorted(modality))
    by_value = _int_keyed(doc.get("labels"), "labels", probs)
    if 0 in by_value and by_value[0].lower() == "background":
        by_value[0] = "background"
    labels = _check_labels({n: v for v, n in sorted(by_value.items())}, probs) if by_value else {}
    if by_value and len(set(by_value.values())) != len(by_value):
        probs.add("key 'labels'", f"expected unique label names, got {list(by_value.values())}")
    base = path.parent
    cases: list[Case] = []
    training = doc.get("training", [])
    if not isinstance(training, list):
        probs.add("key 'training'", f"expected a list of {{image, label}}, got {_type_name(training)}")
        training = []
    for index, entry in enumerate(training):
        where = f"training[{index}]"
        if not isinstance(entry, dict) or "image" not in entry:
            probs.add(where, f"expected a mapping with 'image' and 'label', got {entry!r}")
            continue
        _check_unknown(entry, MSD_ENTRY_KEYS, where, probs)
        case = _msd_case(entry["image"], entry.get("label"), None, where, base, channels, check_files, probs)
        if case is not None:
            cases.append(case)
    test = doc.get("test", [])
    if not isinstance(test, list):
        probs.add("key 'test'", f"expected a list of image paths, got {_type_name(test)}")
        test = []
    for index, entry in enumerate(test):
        image = entry.get("image") if isinstance(entry, dict) else entry
        case = _msd_case(image, None, "test", f"test[{index}]", base, channels, check_files, probs)
        if case is not None:
            cases.append(case)
    if not cases:
        probs.add("key 'training'", "expected at least one case in 'training' or 'test', got none")
    _check_duplicates(cases, probs)
    probs.raise_if_any()
    return Manifest(name=name, path=path, channels=channels, labels=labels, cases=tuple(cases))


def _msd_case(image: Any, label: Any, split: str | None, where: str, base: Path,
              channels: tuple[str, ...], check_files: bool, probs: _Problems) -> Case | None:
    raw = [image] if isinstance(image, str) else image
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) and x for x in raw):
        probs.add(where, f"key 'image': expected a path string, got {image!r}")
        return None
    case_id = case_id_from_name(raw[0])
    where = f"{where} (case {case_id!r})"
    if channels and len(raw) != len(channels):
        hint = (" (MSD stores several modalities in one 4D file; split it into one file per "
                "channel and list them in a medresunet manifest)") if len(raw) == 1 else ""
        probs.add(where, f"expected {len(channels)} image(s), one per channel, got {len(raw)}{hint}")
        return None
    images = tuple(_resolve(base, x) for x in raw)
    for p in images:
        _check_path(p, where, "image", probs, check_files, folder_ok=True)
    label_path = None
    if split is None:
        if not isinstance(label, str) or not label:
            probs.add(where, f"key 'label': expected a path string, got {label!r}")
            return None
        label_path = _resolve(base, label)
        _check_path(label_path, where, "label", probs, check_files, folder_ok=False)
    return Case(case_id=case_id, images=images, label=label_path, split=split)


# ----------------------------------------------------------------------------- splits


def assign_folds(case_ids: Iterable[str], folds: int, seed: int) -> dict[str, int]:
    """A seeded, balanced k-fold assignment: case id -> fold in ``0..folds-1``.

    Deterministic for a seed and independent of the input order (ids are sorted first);
    fold sizes differ by at most one.
    """
    ids = sorted(set(case_ids))
    random.Random(seed).shuffle(ids)
    return {cid: i % folds for i, cid in enumerate(ids)}


def split_cases(manifest: Manifest, fold: int, folds: int, seed: int) -> tuple[list[Case], list[Case]]:
    """Training and validation cases for cross-validation fold ``fold`` of ``folds``.

    Rules, per case: split "test" and unlabelled cases are left out; explicit split
    "train"/"val" wins; an explicit ``fold`` goes to validation when it equals ``fold``;
    the remaining labelled cases get a seeded, balanced k-fold (:func:`assign_folds`).

    Returns:
        ``(train_cases, val_cases)``, each in the manifest's order.

    Raises:
        ManifestError: ``folds`` < 2, ``fold`` out of range, a case's fold >= ``folds``,
            or no training case.
    """
    if not _is_int(folds) or folds < 2:
        raise ManifestError(f"manifest {manifest.path}: expected folds >= 2, got {folds!r}")
    if not _is_int(fold) or not 0 <= fold < folds:
        raise ManifestError(f"manifest {manifest.path}: expected fold in 0..{folds - 1}, got {fold!r}")
    usable = [c for c in manifest.cases if c.split != "test" and c.label is not None]
    bad = [c for c in usable if c.fold is not None and c.fold >= folds]
    if bad:
        listed = ", ".join(f"{c.case_id!r} (fold {c.fold})" for c in bad)
        raise ManifestError(
            f"manifest {manifest.path}: expected case folds in 0..{folds - 1} for {folds} folds, got {listed}"
        )
    auto = assign_folds((c.case_id for c in usable if c.split is None and c.fold is None), folds, seed)
    train: list[Case] = []
    val: list[Case] = []
    for case in usable:
        if case.split is not None:
            is_val = case.split == "val"
        else:
            is_val = (case.fold if case.fold is not None else auto[case.case_id]) == fold
        (val if is_val else train).append(case)
    if not train:
        raise ManifestError(
            f"manifest {manifest.path}: fold {fold} of {folds} leaves no training case "
            f"({len(val)} validation); expected labelled cases with split 'train' or no split"
        )
    if not val:
        log.warning("manifest %s: fold %d of %d has no validation case", manifest.path, fold, folds)
    return train, val


# ----------------------------------------------------------------------------- writing


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    """The manifest in the project's format, with absolute paths (plain values)."""
    cases = []
    for c in manifest.cases:
        entry: dict[str, Any] = {"id": c.case_id}
        if len(c.images) == 1:
            entry["image"] = str(c.images[0])
        else:
            entry["images"] = [str(p) for p in c.images]
        if c.label is not None:
            entry["label"] = str(c.label)
        if c.split is not None:
            entry["split"] = c.split
        if c.fold is not None:
            entry["fold"] = c.fold
        cases.append(entry)
    out: dict[str, Any] = {"name": manifest.name, "channels": list(manifest.channels),
                           "labels": dict(manifest.labels)}
    if manifest.folds is not None:
        out["folds"] = manifest.folds
    out["cases"] = cases
    return out


def save_manifest(manifest: Mapping[str, Any] | Manifest, path: str | Path) -> Path:
    """Write a manifest (a project-format dict, or a :class:`Manifest`) atomically,
    as JSON or YAML according to ``path``'s suffix. Returns the path."""
    path = Path(path)
    doc = manifest_to_dict(manifest) if isinstance(manifest, Manifest) else dict(manifest)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(doc, indent=2) + "\n"
    elif suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    else:
        raise ManifestError(f"manifest {path}: expected a .json, .yaml or .yml output, got {suffix or '(none)'!r}")
    from medresunet.io.atomic import write_text_atomic  # lazy: medresunet.io may import monai

    return write_text_atomic(path, text)
