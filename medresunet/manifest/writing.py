"""Writing a manifest (JSON or YAML by the file suffix), atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from medresunet.errors import ManifestError
from medresunet.manifest.schema import Manifest


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
