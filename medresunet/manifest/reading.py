"""Reading a manifest file: the project's JSON/YAML format, or an MSD ``dataset.json``.

Relative paths resolve against the manifest's folder, or against its ``root`` (itself
relative to the manifest's folder).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from medresunet.errors import ManifestError
from medresunet.manifest.msd import _parse_msd
from medresunet.manifest.schema import (
    CASE_KEYS,
    SPLITS,
    TOP_KEYS,
    Case,
    Manifest,
    _check_channels,
    _check_duplicates,
    _check_labels,
    _check_path,
    _check_unknown,
    _is_int,
    _Problems,
    _resolve,
    _type_name,
)

log = logging.getLogger(__name__)

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
