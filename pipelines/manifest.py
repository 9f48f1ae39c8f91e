"""medresunet-manifest: write a dataset manifest from a folder of images and one of labels.

Images and labels pair by case id (file name without extension; a DICOM series folder's
id is its path below the images folder with ``/`` -> ``_``). Several channels: give
``--images`` once per channel (in the order of ``--channels``), or one folder in the
nnU-Net layout (``case_0000.nii.gz``, ``case_0001.nii.gz``, ...). Images without a label
become ``split: test`` cases; labels without an image are skipped; both are warned about.

    medresunet-manifest --images imagesTr --labels labelsTr --output dataset.yaml \
        --channels CT --label-names background=0,liver=1 --folds 5 --seed 0
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from pipelines._cli import EXIT_OK, make_parser, parse_label_names, run_main

log = logging.getLogger(__name__)

_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _parser() -> argparse.ArgumentParser:
    parser = make_parser("medresunet-manifest", "Write a dataset manifest (JSON or YAML by the "
                         "output suffix) pairing image and label files by case id.")
    parser.add_argument("--images", required=True, action="append", type=Path, metavar="DIR",
                        help="folder of images (files or DICOM series folders); repeat once per "
                             "channel, or give one folder in the nnU-Net _0000 layout")
    parser.add_argument("--labels", type=Path, metavar="DIR",
                        help="folder of label files (without it every case is a test case)")
    parser.add_argument("--output", required=True, type=Path, metavar="FILE",
                        help="manifest to write: .json, .yaml or .yml")
    parser.add_argument("--channels", default="CT",
                        help="comma-separated modality per input channel (default: CT)")
    parser.add_argument("--label-names", metavar="NAME=V,...",
                        help="label map, e.g. background=0,liver=1 (default: label_<v> for the "
                             "values found in the label files)")
    parser.add_argument("--name", help="dataset name (default: the images folder's name)")
    parser.add_argument("--folds", type=int, help="assign a seeded k-fold (write 'fold' per case)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default: 0)")
    parser.add_argument("--check", action="store_true",
                        help="also read every file and check grids and label values")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def _scan_ids(folder: Path) -> dict[str, Path]:
    from medresunet.io import discover_scans

    return {ref.case_id: ref.path for ref in discover_scans(folder)}


def collect_images(folders: list[Path], n_channels: int) -> dict[str, list[Path]]:
    """Case id -> one image per channel, from one folder per channel or one nnU-Net folder."""
    from medresunet.errors import UsageError

    if len(folders) == n_channels:
        per_channel = [_scan_ids(f) for f in folders]
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
    scans = _scan_ids(folders[0])
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
    import numpy as np

    from medresunet.errors import ManifestError, ScanError
    from medresunet.io import read_volume

    values: set[int] = {0}
    for path in paths:
        try:
            array, _ = read_volume(path)
        except ScanError as err:
            raise ManifestError(f"label {path}: unreadable: {err}") from err
        values.update(int(v) for v in np.unique(array))
    return {("background" if v == 0 else f"label_{v}"): v for v in sorted(values)}


def build_manifest(args: argparse.Namespace) -> dict:
    """The manifest dict (project format, paths relative to the output's folder)."""
    from medresunet.errors import UsageError
    from medresunet.manifest import assign_folds

    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    if not channels:
        raise UsageError(f"--channels: expected modality names like CT or T1,T2, got {args.channels!r}")
    for folder in args.images + ([args.labels] if args.labels else []):
        if not folder.is_dir():
            raise UsageError(f"{folder}: expected an existing folder")
    images = collect_images(list(args.images), len(channels))
    labels = {}
    if args.labels is not None:
        labels = {cid: p for cid, p in _scan_ids(args.labels).items() if p.is_file()}
    for cid in sorted(set(labels) - set(images)):
        log.warning("label %s has no image (case %r); skipped", labels[cid], cid)
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        log.warning("%d image(s) without a label, written as test cases: %s", len(unlabelled),
                    ", ".join(unlabelled[:20]) + (" ..." if len(unlabelled) > 20 else ""))
    if not images:
        raise UsageError(f"no scans found in {', '.join(map(str, args.images))}")
    paired = sorted(set(images) & set(labels))
    label_map = (parse_label_names(args.label_names) if args.label_names
                 else labels_from_files([labels[c] for c in paired]))
    folds = {}
    if args.folds is not None:
        if args.folds < 2 or args.folds > max(len(paired), 2):
            raise UsageError(f"--folds: expected 2..{max(len(paired), 2)} for {len(paired)} labelled "
                             f"case(s), got {args.folds}")
        folds = assign_folds(paired, args.folds, args.seed)
    base = args.output.resolve().parent

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p.resolve(), base)).as_posix()

    cases = []
    for cid in sorted(images):
        paths = [rel(p) for p in images[cid]]
        entry: dict = {"id": cid}
        if len(paths) == 1:
            entry["image"] = paths[0]
        else:
            entry["images"] = paths
        if cid in labels:
            entry["label"] = rel(labels[cid])
            if cid in folds:
                entry["fold"] = folds[cid]
        else:
            entry["split"] = "test"
        cases.append(entry)
    doc: dict = {"name": args.name or args.images[0].resolve().name, "channels": channels,
                 "labels": label_map}
    if args.folds is not None:
        doc["folds"] = args.folds
    doc["cases"] = cases
    return doc


def _run(args: argparse.Namespace) -> int:
    from medresunet.errors import UsageError
    from medresunet.manifest import load_manifest, save_manifest

    if args.output.exists() and not args.overwrite:
        raise UsageError(f"{args.output}: exists; give --overwrite to replace it")
    doc = build_manifest(args)
    save_manifest(doc, args.output)
    manifest = load_manifest(args.output)
    if args.check:
        from medresunet.data.checks import check_cases
        from medresunet.errors import ManifestError

        try:
            check_cases(manifest.cases, manifest.labels, len(manifest.channels), progress=not args.quiet)
        except ManifestError:
            args.output.unlink(missing_ok=True)  # a manifest that fails its checks is not left behind
            raise
    n_test = sum(c.split == "test" for c in manifest.cases)
    log.info("wrote %s: %d case(s) (%d labelled, %d test), labels %s", args.output,
             len(manifest.cases), len(manifest.cases) - n_test, n_test, manifest.labels)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``medresunet-manifest``."""
    return run_main(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
