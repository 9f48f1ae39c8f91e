"""Dataset manifests: a JSON/YAML list of cases -> :class:`Manifest` of :class:`Case` s.

Two formats are read (schema in ``data_manifests/README.md``):

* the project's own format, JSON or YAML, with a top-level ``cases`` list;
* a Medical Segmentation Decathlon ``dataset.json``, as it is (``modality``, ``labels``
  int -> name, ``training``, ``test``).

Relative paths resolve against the manifest's folder, or against its ``root`` (itself
relative to the manifest's folder). Every problem found is collected and raised as one
:class:`~medresunet.errors.ManifestError` naming the manifest, the case and the key,
with what was expected and what was found. This package imports no torch.

Modules: :mod:`.schema` (the types, keys and value checks), :mod:`.reading` (the project
format), :mod:`.msd` (MSD ``dataset.json``), :mod:`.folds` (cross-validation splits),
:mod:`.writing` (JSON/YAML out) and :mod:`.build` (a manifest from folders of files).
"""

from __future__ import annotations

from medresunet.manifest.folds import assign_folds, split_cases
from medresunet.manifest.reading import load_manifest
from medresunet.manifest.schema import (
    CASE_KEYS,
    MSD_ENTRY_KEYS,
    MSD_KEYS,
    SPLITS,
    TOP_KEYS,
    Case,
    Manifest,
)
from medresunet.manifest.writing import manifest_to_dict, save_manifest

__all__ = [
    "CASE_KEYS", "MSD_ENTRY_KEYS", "MSD_KEYS", "SPLITS", "TOP_KEYS", "Case", "Manifest", "assign_folds",
    "load_manifest", "manifest_to_dict", "save_manifest", "split_cases",
]
