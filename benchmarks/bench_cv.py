"""Cross-validation on the demo phantoms: ``--fold all`` with 3 folds, then the test Dice of
each fold alone, of the folds' ensemble, and of the ensemble with the postprocessing that CV
chose (``python -m benchmarks --only cv``).

The demo dataset (8 training, 3 test phantoms; ``--quick``: 3 and 2 at 2.5x the voxel
size), the demo config (32^3 patches at 2 mm) cut to 20 epochs of 25 steps per fold, a third of
the demo's training (about 3.5 min in all on an idle 2-core CPU). Figures: the CV estimate per label, the CV report's
case count, the postprocessing decision, and the mean test Dice per label of every model;
``ensemble_minus_mean_fold`` > 0 says the ensemble beats the average single fold.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

FULL = {"data": {"n_train": 8, "n_test": 3},
        "set": ["train.epochs=20", "train.val_interval=100"]}
QUICK = {"data": {"n_train": 3, "n_test": 2, "spacing_scale": 2.5},
         "set": ["model.channels=[4,8,16]", "data.target_spacing=[4.0,4.0,4.0]", "data.patch_size=[16,16,16]",
                 "train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=1", "data.samples_per_volume=1"]}


def _test_dice(model: list[str], images: Path, labels: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """Mean test Dice per label of ``medresunet-infer --model ...`` on the test scans."""
    from medresunet.metrics import summarize
    from medresunet.metrics.evaluate import evaluate_pairs
    from medresunet.metrics.pairing import pair_cases
    from pipelines import infer

    argv = [a for m in model for a in ("--model", m)]
    code = infer.main([*argv, "--input", str(images), "--output", str(out), "--quiet", "--device", "cpu", *extra])
    if code != 0:
        raise RuntimeError(f"medresunet-infer exited {code} for {model}")
    pairing = pair_cases(out, labels)
    names = json.loads((out / "run.json").read_text())["labels"]
    rows, failures = evaluate_pairs(pairing.pairs, names, quiet=True)
    if failures:
        raise RuntimeError(f"evaluation failed: {failures}")
    return {name: round(v["dice"]["mean"], 4) for name, v in summarize(rows)["per_label"].items()}


def run(quick: bool = False) -> dict:
    from medresunet.data.phantoms import make_demo_dataset
    from pipelines import train

    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench_cv_") as tmp:
        root = Path(tmp)
        data = make_demo_dataset(root / "data", seed=0, **sizes["data"])
        run_dir = root / "RUN"
        argv = ["--manifest", str(data.manifest), "--config", "demo", "--output", str(run_dir), "--fold", "all",
                "--quiet", "--device", "cpu", "--set", "train.folds=3"]
        for item in sizes["set"]:
            argv += ["--set", item]
        start = time.perf_counter()
        if train.main(argv) != 0:
            raise RuntimeError("medresunet-train --fold all failed")
        train_s = time.perf_counter() - start
        summary = json.loads((run_dir / "cv" / "summary.json").read_text())
        post = json.loads((run_dir / "postprocessing.json").read_text())
        rows = json.loads((run_dir / "cv" / "report" / "metrics.json").read_text())
        folds = {k: _test_dice([str(run_dir / f"fold_{k}" / "last.pt")], data.images_test, data.labels_test,
                               root / f"pred_fold{k}", []) for k in range(3)}
        ensemble = _test_dice([str(run_dir)], data.images_test, data.labels_test, root / "pred_ens",
                              ["--no-postprocessing"])
        ensemble_post = _test_dice([str(run_dir)], data.images_test, data.labels_test, root / "pred_ens_post", [])
    mean_fold = {name: round(sum(f[name] for f in folds.values()) / 3, 4) for name in ensemble}
    return {
        "cases": {"train": len(data.train_ids) + len(data.val_ids), "test": len(data.test_ids)},
        "train_fold_all_s": round(train_s, 1),
        "cv_report_cases": len({r["case_id"] for r in rows}), "cv_complete": summary["complete"],
        "cv_estimate_dice": {n: round(v["dice_mean"], 4) for n, v in summary["per_label"].items()},
        "postprocessing": {n: d["chosen"] for n, d in post["labels"].items()},
        "test_dice_folds": {str(k): v for k, v in folds.items()}, "test_dice_mean_fold": mean_fold,
        "test_dice_ensemble": ensemble, "test_dice_ensemble_postprocessed": ensemble_post,
        "ensemble_minus_mean_fold": {n: round(ensemble[n] - mean_fold[n], 4) for n in ensemble},
    }
