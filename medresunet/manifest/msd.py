"""The Medical Segmentation Decathlon ``dataset.json``, read as it is (``modality``, ``labels``
int -> name, ``training``, ``test``); a case's id is its first image's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medresunet.io.discovery import case_id_from_path
from medresunet.manifest.schema import (
    MSD_ENTRY_KEYS,
    MSD_KEYS,
    Case,
    Manifest,
    _check_duplicates,
    _check_labels,
    _check_path,
    _check_unknown,
    _Problems,
    _resolve,
    _type_name,
)


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
    case_id = case_id_from_path(raw[0])
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
