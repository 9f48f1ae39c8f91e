"""Pairing predictions with reference labels (and scans) by case id, and the label map to use.

References are a folder of label files or a manifest (its labelled cases and label map);
predictions a folder (``medresunet-eval``) or the outputs of a batch (``medresunet-infer
--labels``). Case ids are the scans' (:func:`medresunet.io.discover_scans`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medresunet.errors import ManifestError
from medresunet.io.discovery import scans_by_id

log = logging.getLogger(__name__)

INFER_PROG = "medresunet-infer"
MANIFEST_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class Pairing:
    """The result of pairing predictions with references by case id.

    Attributes:
        pairs: ``(case_id, pred_path, ref_path, image_path_or_None)`` sorted by case id.
        unpaired: ``(case_id, reason)`` for a prediction without reference or the reverse.
        labels: name -> value (background included) from the manifest, else from the
            ``run.json`` that ``medresunet-infer`` wrote beside the predictions, else None.
    """

    pairs: list[tuple[str, Path, Path, Path | None]] = field(default_factory=list)
    unpaired: list[tuple[str, str]] = field(default_factory=list)
    labels: dict[str, int] | None = None


@dataclass(frozen=True)
class References:
    """Reference labels by case id, read from a folder or a manifest.

    Attributes:
        source: the folder or manifest.
        labels: case id -> label file.
        label_map: the manifest's name -> value map (None for a folder).
        images: case id -> first image channel (a manifest's; empty for a folder).
    """

    source: Path
    labels: dict[str, Path]
    label_map: dict[str, int] | None = None
    images: dict[str, Path] = field(default_factory=dict)


def is_manifest_path(path: Path) -> bool:
    """True if ``path`` is a manifest file (JSON/YAML) rather than a folder of labels."""
    return path.is_file() and path.name.lower().endswith(MANIFEST_SUFFIXES)


def read_references(ref: str | os.PathLike[str]) -> References:
    """The reference labels of a folder, or of a manifest's labelled cases.

    Raises:
        UsageError: the folder does not exist. ManifestError: an invalid manifest.
    """
    ref = Path(ref)
    if not is_manifest_path(ref):
        return References(source=ref, labels=scans_by_id(ref))
    from medresunet.manifest import load_manifest

    manifest = load_manifest(ref)
    return References(source=ref, labels={c.case_id: c.label for c in manifest.cases if c.label is not None},
                      label_map=dict(manifest.labels),
                      images={c.case_id: c.images[0] for c in manifest.cases if c.images})


def labels_from_run_record(folder: str | os.PathLike[str]) -> dict[str, int] | None:
    """The label map that ``medresunet-infer`` recorded in ``folder/run.json`` (or a shard's record).

    Returns:
        name -> value (the model's, background included), or None when the folder holds no
        record of ``medresunet-infer`` with a label map. An unreadable record is logged and
        ignored: the labels are then named by value.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for path in [folder / "run.json", *sorted(folder.glob("run.shard*of*.json"))]:
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("command") != INFER_PROG:
                continue
            labels = {str(k): int(v) for k, v in dict(record["labels"]).items()}
        except (OSError, ValueError, TypeError, KeyError) as err:
            log.warning("%s: cannot read the label map of %s (%s); labels are named by value",
                        path, INFER_PROG, err)
            return None
        log.info("label names from %s: %s", path, labels)
        return labels
    return None


def pair(predictions: Mapping[str, Path], refs: References, images: Mapping[str, Path] | None = None,
         pred_source: str | os.PathLike[str] = "the predictions") -> Pairing:
    """Pair predictions (case id -> file) with references by case id.

    Args:
        predictions: case id -> predicted segmentation.
        refs: from :func:`read_references`.
        images: case id -> scan for the overlays (default: the manifest's first channels).
        pred_source: where the predictions are (for the reasons of unpaired cases).

    Returns:
        A :class:`Pairing` with ``labels`` the references' label map (or None).
    """
    images = refs.images if images is None else images
    out = Pairing(labels=refs.label_map)
    for case_id in sorted(set(predictions) | set(refs.labels)):
        if case_id not in refs.labels:
            out.unpaired.append((case_id, f"prediction {predictions[case_id]} has no reference in {refs.source}"))
        elif case_id not in predictions:
            out.unpaired.append((case_id, f"reference {refs.labels[case_id]} has no prediction in {pred_source}"))
        else:
            out.pairs.append((case_id, Path(predictions[case_id]), Path(refs.labels[case_id]),
                              images.get(case_id)))
    return out


def pair_cases(pred: str | os.PathLike[str], ref: str | os.PathLike[str],
               images: str | os.PathLike[str] | None = None) -> Pairing:
    """Pair the prediction files of a folder with reference labels (and optional scans) by case id.

    Args:
        pred: folder (or single file) of predicted segmentations.
        ref: folder of reference labels, or a manifest file (JSON/YAML/MSD ``dataset.json``);
            with a manifest the cases with a label are used, and its label map.
        images: folder of scans for the overlays (optional); with a manifest and no
            ``images``, each case's first image channel.

    Raises:
        UsageError: a folder does not exist. ManifestError: an invalid manifest, or one
        without a labelled case.
    """
    predictions = scans_by_id(Path(pred))
    refs = read_references(ref)
    if refs.label_map is not None and not refs.labels:
        raise ManifestError(f"{ref}: no case has a label; expected reference labels to compare with")
    pairing = pair(predictions, refs, None if images is None else scans_by_id(Path(images)), pred)
    if pairing.labels is None:
        pairing.labels = labels_from_run_record(pred)
    return pairing
