"""``medresunet-select``: which cross-validated run (configuration), or ensemble of runs, to use.

    medresunet-select runs/3d runs/2d [--output selection.json] [--manifest M]

Each run folder was trained with ``medresunet-train --fold all`` (sibling runs of one
manifest, e.g. ``--config 3d`` and ``--config 2d``). Their CV estimates
(``RUN/cv/summary.json``) are compared, and so are their ensembles when the runs kept their
out-of-fold probabilities (``--oof-probabilities``); the choice and every candidate's numbers
go to ``--output`` (:mod:`medresunet.crossval.select`). Exit codes: 0 a choice was made,
1 no run is eligible (each one's reason printed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipelines._cli import EXIT_FAILED_CASES, EXIT_OK, make_parser, run_main

PROG = "medresunet-select"
log = logging.getLogger(PROG)


def _parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Compare cross-validated runs (and their ensembles) by CV mean Dice and "
                          "write which one to use.")
    p.add_argument("runs", nargs="+", type=Path, help="run folders trained with medresunet-train --fold")
    p.add_argument("--output", type=Path, default=Path("selection.json"),
                   help="where the choice and the numbers go (default: ./selection.json)")
    p.add_argument("--manifest", type=Path, default=None,
                   help="the runs' manifest, for the reference labels of ensembles (default: the one "
                        "recorded in the first run's fold_0/run.json)")
    return p


def _manifest_path(args: argparse.Namespace) -> Path | None:
    if args.manifest is not None:
        return args.manifest
    for record in sorted(args.runs[0].glob("fold_*/run.json")):
        try:
            return Path(json.loads(record.read_text())["inputs"]["manifest"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _run(args: argparse.Namespace) -> int:
    from medresunet.crossval.select import select_runs
    from medresunet.io.atomic import write_text_atomic
    from medresunet.manifest import load_manifest

    references = labels = None
    path = _manifest_path(args)
    if path is not None and path.is_file():
        manifest = load_manifest(path)
        references = {c.case_id: c.label for c in manifest.cases if c.label is not None}
        labels = manifest.labels
    else:
        log.warning("no manifest (give --manifest): ensembles of runs are not judged")
    doc = select_runs(args.runs, references, labels)
    write_text_atomic(args.output, json.dumps(doc, indent=1) + "\n")
    for c in doc["candidates"]:
        score = "n/a" if c["mean_dice"] is None else f"{c['mean_dice']:.4f}"
        note = "" if c["eligible"] else f"  (not eligible: {c['reason']})"
        print(f"{c['kind']:8s} {score:>7s}  {' + '.join(c['runs'])}{note}")
    for note in doc["notes"]:
        print(f"note: {note}")
    if doc["chosen"] is None:
        print(f"{PROG}: no eligible run; see the reasons above", file=sys.stderr)
        return EXIT_FAILED_CASES
    chosen = doc["chosen"]
    print(f"use: {' + '.join(chosen['runs'])} (CV mean Dice {chosen['mean_dice']:.4f} over "
          f"{doc['n_cases']} cases); written to {args.output}")
    return EXIT_OK


def main(argv=None) -> int:
    return run_main(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
