"""Find the scans (cases) under an input path: files and DICOM series folders.

Each NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MHA/MHD file is one case
with id = its name without extension; each folder that directly holds DICOM files is one
case (:func:`medresunet.io.dicom.iter_series_files`, the files that series reading reads: a study
folder's series subfolders are separate cases, a DICOMDIR makes none) with id = its path below the input root, ``/`` replaced by ``_`` (the root's own name
when the root itself is that folder). Hidden names (``.``, including the ``.tmp-`` files of
interrupted atomic writes) are ignored. The result is sorted by case id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medresunet.errors import UsageError
from medresunet.io.dicom import has_series_files
from medresunet.io.reading import ITK_SUFFIXES, NIFTI_SUFFIXES, scan_kind

_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


@dataclass(frozen=True)
class ScanRef:
    """One scan to process: ``kind`` is ``"nifti"``, ``"itk"`` or ``"dicom"`` (a folder)."""

    case_id: str
    path: Path
    kind: str


def case_id_from_path(path: str | os.PathLike[str]) -> str:
    """The case id of a scan path: the name without its image extension.

    ``"x.nii.gz" -> "x"``, ``"x.nrrd" -> "x"``, ``"dicom/x/" -> "x"`` (folder name). The one
    rule for every case id taken from a path (scan discovery, manifests, pairing).
    """
    name = Path(str(path).rstrip("/\\")).name
    lower = name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _hidden(name: str) -> bool:
    return name.startswith(".")


def discover_scans(root: str | os.PathLike[str]) -> list[ScanRef]:
    """All scans under ``root`` (a folder, a single scan file or a single DICOM folder).

    Returns:
        ScanRefs sorted by case id.

    Raises:
        UsageError: ``root`` missing or not a scan, or two scans with the same case id.
    """
    root = Path(root)
    if not root.exists():
        raise UsageError(f"{root}: input does not exist; expected a scan file or a folder")
    if root.is_file():
        kind = scan_kind(root)
        if kind is None:
            raise UsageError(f"{root}: not a scan file; expected .nii/.nii.gz, .nrrd/.nhdr, "
                             ".mha/.mhd, or a folder (of scans or of one DICOM series)")
        return [ScanRef(case_id_from_path(root), root, kind)]
    found: list[ScanRef] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        folder = Path(dirpath)
        other_files = False
        for name in sorted(filenames):
            if _hidden(name):
                continue
            path = folder / name
            kind = scan_kind(path)
            if kind is not None:
                found.append(ScanRef(case_id_from_path(path), path, kind))
            else:
                other_files = True
        if other_files and has_series_files(folder):
            rel = folder.relative_to(root)
            case_id = root.resolve().name if rel == Path(".") else "_".join(rel.parts)
            found.append(ScanRef(case_id, folder, "dicom"))
    by_id: dict[str, ScanRef] = {}
    for ref in found:
        if ref.case_id in by_id:
            raise UsageError(f"two scans have the case id {ref.case_id!r}: "
                             f"{by_id[ref.case_id].path} and {ref.path}; rename one of them")
        by_id[ref.case_id] = ref
    return [by_id[k] for k in sorted(by_id)]


def scans_by_id(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Case id -> scan path of every scan under ``root`` (:func:`discover_scans`)."""
    return {ref.case_id: ref.path for ref in discover_scans(root)}
