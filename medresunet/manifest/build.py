"""Building a manifest from a folder of images (or one per channel) and a folder of labels.

The library side of ``medresunet-manifest``: images and labels pair by case id
(:func:`medresunet.io.discovery.scans_by_id`); several channels come from one folder per
channel or one folder in the nnU-Net layout (``case_0000.nii.gz``, ``case_0001.nii.gz``, ...).
Images without a label become ``split: test`` cases; labels without an image are skipped;
both are warned about.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medresunet.errors import ManifestError, ScanError, UsageError
from medresunet.io.discovery import scans_by_id
from medresunet.manifest.folds import assign_folds

log = logging.getLogger(__name__)

_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class ManifestSpec:
    """What a manifest is built from.

    Attributes:
        images: folders of images, one per channel, or one folder in the nnU-Net layout.
        labels: folder of label files, or None (every case is a test case).
        output: the manifest file to be written (paths are made relative to its folder).
        channels: modality per input channel.
        label_map: name -> value, or None to name the values found in the label files.
        name: dataset name (default: the images folder's name).
        folds: assign a seeded k-fold with this many folds, or None.
        seed: seed of the fold assignment.
    """

    images: list[Path]
    labels: Path | None
    output: Path
    channels: Sequence[str] = ("CT",)
    label_map: Mapping[str, int] | None = None
    name: str | None = None
    folds: int | None = None
    seed: int = 0


def collect_images(folders: list[Path], n_channels: int) -> dict[str, list[Path]]:
    """Case id -> one image per channel, from one folder per channel or one nnU-Net folder."""
    if len(folders) == n_channels:
        per_channel = [scans_by_id(f) for f in folders]
        ids = sorted(set().union(*per_channel))
        out = {}
        for cid in ids:
            missing = [str(folders[c]) for c in range(n_channels) if cid not in per_channel[c]]
            if missing:
                log.warning("case %r: no image in %s; skipped", cid, ", ".join(missing))
                continue
            out[cid] = [per_channel[c][cid] for c in range(n_channels)]
        return out
    if len(folders) != 1:
        raise UsageError(f"--images given {len(folders)} times; expected 1 or once per channel "
                         f"({n_channels})")
    scans = scans_by_id(folders[0])
    matches = {cid: _NNUNET_CHANNEL.match(cid) for cid in scans}
    if n_channels == 1 and not all(m and m["channel"] == "0000" for m in matches.values()):
        return {cid: [p] for cid, p in scans.items()}
    if not all(matches.values()):
        odd = sorted(cid for cid, m in matches.items() if not m)[:5]
        raise UsageError(f"{folders[0]}: expected nnU-Net names <case>_0000 .. <case>_{n_channels - 1:04d} "
                         f"for {n_channels} channels, got {odd}; or give --images once per channel")
    grouped: dict[str, dict[int, Path]] = {}
    for cid, m in matches.items():
        grouped.setdefault(m["case"], {})[int(m["channel"])] = scans[cid]
    out = {}
    for cid, chans in sorted(grouped.items()):
        if sorted(chans) != list(range(n_channels)):
            log.warning("case %r: expected channels 0..%d, got %s; skipped", cid, n_channels - 1, sorted(chans))
            continue
        out[cid] = [chans[c] for c in range(n_channels)]
    return out


def labels_from_files(paths: list[Path]) -> dict[str, int]:
    """``{"background": 0, "label_<v>": v}`` for the values found in the label files."""
    from medresunet.io import read_volume

    values: set[int] = {0}
    for path in paths:
        try:
            array, _ = read_volume(path)
        except ScanError as err:
            raise ManifestError(f"label {path}: unreadable: {err}") from err
        values.update(int(v) for v in np.unique(array))
    return {("background" if v == 0 else f"label_{v}"): v for v in sorted(values)}


def _images_and_labels(spec: ManifestSpec) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """Case id -> images (one per channel) and case id -> label file, with warnings for the unpaired."""
    for folder in spec.images + ([spec.labels] if spec.labels else []):
        if not folder.is_dir():
            raise UsageError(f"{folder}: expected an existing folder")
    images = collect_images(list(spec.images), len(spec.channels))
    labels = {}
    if spec.labels is not None:
        labels = {cid: p for cid, p in scans_by_id(spec.labels).items() if p.is_file()}
    for cid in sorted(set(labels) - set(images)):
        log.warning("label %s has no image (case %r); skipped", labels[cid], cid)
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        log.warning("%d image(s) without a label, written as test cases: %s", len(unlabelled),
                    ", ".join(unlabelled[:20]) + (" ..." if len(unlabelled) > 20 else ""))
    if not images:
        raise UsageError(f"no scans found in {', '.join(map(str, spec.images))}")
    return images, labels


def _entry(cid: str, images: list[Path], label: Path | None, fold: int | None, base: Path) -> dict:
    def rel(p: Path) -> str:
        return Path(os.path.relpath(p.resolve(), base)).as_posix()

    entry: dict = {"id": cid}
    if len(images) == 1:
        entry["image"] = rel(images[0])
    else:
        entry["images"] = [rel(p) for p in images]
    if label is None:
        entry["split"] = "test"
    else:
        entry["label"] = rel(label)
        if fold is not None:
            entry["fold"] = fold
    return entry


def build_manifest(spec: ManifestSpec) -> dict:
    """The manifest dict (project format, paths relative to the output's folder).

    Raises:
        UsageError: no channels, a folder missing, no scans, bad ``folds``.
        ManifestError: an unreadable label file (when the label map is read from them).
    """
    channels = list(spec.channels)
    if not channels:
        raise UsageError("--channels: expected modality names like CT or T1,T2, got none")
    images, labels = _images_and_labels(spec)
    paired = sorted(set(images) & set(labels))
    label_map = (dict(spec.label_map) if spec.label_map is not None
                 else labels_from_files([labels[c] for c in paired]))
    folds: dict[str, int] = {}
    if spec.folds is not None:
        if spec.folds < 2 or spec.folds > max(len(paired), 2):
            raise UsageError(f"--folds: expected 2..{max(len(paired), 2)} for {len(paired)} labelled "
                             f"case(s), got {spec.folds}")
        folds = assign_folds(paired, spec.folds, spec.seed)
    base = spec.output.resolve().parent
    doc: dict = {"name": spec.name or spec.images[0].resolve().name, "channels": channels, "labels": label_map}
    if spec.folds is not None:
        doc["folds"] = spec.folds
    doc["cases"] = [_entry(cid, images[cid], labels.get(cid), folds.get(cid), base) for cid in sorted(images)]
    return doc
