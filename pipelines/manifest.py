"""medresunet-manifest: write a dataset manifest from a folder of images and one of labels.

Images and labels pair by case id (file name without extension; a DICOM series folder's
id is its path below the images folder with ``/`` -> ``_``). Several channels: give
``--images`` once per channel (in the order of ``--channels``), or one folder in the
nnU-Net layout (``case_0000.nii.gz``, ``case_0001.nii.gz``, ...). Images without a label
become ``split: test`` cases; labels without an image are skipped; both are warned about.
The building is :func:`medresunet.manifest.build.build_manifest`; this module parses the
arguments and writes the file.

    medresunet-manifest --images imagesTr --labels labelsTr --output dataset.yaml \
        --channels CT --label-names background=0,liver=1 --folds 5 --seed 0
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipelines._cli import EXIT_OK, make_parser, parse_label_names, run_main

log = logging.getLogger(__name__)

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


def _run(args: argparse.Namespace) -> int:
    from medresunet.errors import UsageError
    from medresunet.manifest import load_manifest, save_manifest

    if args.output.exists() and not args.overwrite:
        raise UsageError(f"{args.output}: exists; give --overwrite to replace it")
    from medresunet.manifest.build import ManifestSpec, build_manifest

    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    if not channels:
        raise UsageError(f"--channels: expected modality names like CT or T1,T2, got {args.channels!r}")
    label_map = parse_label_names(args.label_names) if args.label_names else None
    doc = build_manifest(ManifestSpec(images=list(args.images), labels=args.labels, output=args.output,
                                      channels=channels, label_map=label_map, name=args.name,
                                      folds=args.folds, seed=args.seed))
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
