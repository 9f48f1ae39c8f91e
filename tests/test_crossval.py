"""Cross-validation library: postprocessing chosen by the out-of-fold Dice (nnU-Net's rule),
the CV report and summary with a missing fold named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medresunet.crossval.layout import predictions_dir, write_folds, write_oof_record
from medresunet.crossval.postprocessing import (
    LabelComponents,
    choose_postprocessing,
    decide_label,
    read_rules,
)
from medresunet.crossval.report import write_cv_report, write_postprocessing
from medresunet.inference.postprocess import LabelRule, apply_rules
from tests.synthetic import ellipsoid, make_affine, write_nifti

SHAPE = (32, 30, 28)
LABELS = {"background": 0, "organ": 1, "lesion": 2}


def case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: an organ (one ellipsoid) and two separate lesions. Prediction: the reference
    plus a planted spurious organ island (a few voxels far from the organ)."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(SHAPE, np.uint8)
    ref[ellipsoid(SHAPE, (14 + rng.integers(-2, 3), 13, 12), (7, 6, 5))] = 1
    ref[ellipsoid(SHAPE, (26, 24, 22), (2.5, 2.5, 2.5))] = 2
    ref[ellipsoid(SHAPE, (26, 5, 22), (1.8, 1.8, 1.8))] = 2
    pred = ref.copy()
    pred[1:3, 26:28, 1:3] = 1  # the spurious component
    return pred, ref


def test_spurious_component_keeps_largest_for_that_label_only():
    cases = [(f"c{i}", *case(i), (1.0, 1.0, 1.5)) for i in range(4)]
    doc = choose_postprocessing(iter(cases), LABELS)
    organ, lesion = doc["labels"]["organ"], doc["labels"]["lesion"]
    assert organ["chosen"] == "largest_component" and organ["rule"]["largest_component"]
    assert organ["mean_dice_after"] > organ["mean_dice_before"]
    assert all(v["after"] >= v["before"] for v in organ["per_case"].values())
    # largest component would drop a real lesion: refused; lesions stay as predicted
    assert lesion["candidates"]["largest_component"]["gain"] < 0
    assert not lesion["candidates"]["largest_component"]["accepted"]
    assert lesion["chosen"] == "none" and lesion["rule"] == {"largest_component": False,
                                                             "min_component_ml": 0.0}
    # V comes from the lesions' sizes: below the smaller lesion, so removing nothing real
    v = lesion["candidates"]["remove_small"]["min_component_ml"]
    assert 0 < v < (ref_small := np.count_nonzero(ellipsoid(SHAPE, (26, 5, 22), (1.8, 1.8, 1.8))) * 1.5e-3)
    assert v == pytest.approx(0.5 * ref_small, rel=0.3)
    assert doc["n_cases"] == 4


def _components(pred_voxels, overlap, ref_voxels) -> LabelComponents:
    return LabelComponents(ref_voxels, np.asarray(pred_voxels), np.asarray(overlap),
                           np.asarray([ref_voxels * 1e-3]), 1e-3)


def test_one_case_hurt_beyond_margin_refuses_the_candidate():
    # four cases gain a little from dropping a false island; one loses half of its organ
    gains = {f"g{i}": _components([1000, 30], [950, 0], 1000) for i in range(4)}
    hurt = {"hurt": _components([500, 480], [500, 480], 1000)}
    mean_up = decide_label({**gains, **{"hurt": _components([1000, 5], [1000, 5], 1005)}})
    assert mean_up["chosen"] == "largest_component"
    refused = decide_label({**gains, **hurt})
    cand = refused["candidates"]["largest_component"]
    assert cand["worst_case_change"] < -0.01
    assert refused["chosen"] == "none"
    # with a generous margin and a rising mean it would be kept: the margin decided
    assert decide_label({**{f"g{i}": _components([1000, 300], [950, 0], 1000) for i in range(9)},
                         **hurt}, margin=1.0)["chosen"] == "largest_component"


def test_apply_rules_per_label_only():
    pred, _ = case(0)
    out = apply_rules(pred, (1.0, 1.0, 1.5), {1: LabelRule(largest_component=True), 2: LabelRule()})
    assert not out[1:3, 26:28, 1:3].any()
    np.testing.assert_array_equal(out == 2, pred == 2)


def _run_with_folds(tmp_path, done_folds):
    """A run folder with 3 folds of 2 cases; ``done_folds`` wrote their out-of-fold predictions."""
    run, refs = tmp_path / "RUN", {}
    affine = make_affine("lps", (1.0, 1.0, 1.5))
    folds = {k: [f"case{2 * k}", f"case{2 * k + 1}"] for k in range(3)}
    write_folds(run, 3, folds)
    (tmp_path / "ref").mkdir()
    predictions_dir(run).mkdir(parents=True)
    for k, ids in folds.items():
        for cid in ids:
            pred, ref = case(int(cid[4:]))
            refs[cid] = write_nifti(tmp_path / "ref" / f"{cid}.nii.gz", ref, affine, dtype=np.uint8)
            if k in done_folds:
                write_nifti(predictions_dir(run) / f"{cid}.nii.gz", pred, affine, dtype=np.uint8)
        if k in done_folds:
            write_oof_record(run, k, {"fold": k, "cases": ids})
    return run, refs


def test_cv_report_covers_every_case_once(tmp_path):
    run, refs = _run_with_folds(tmp_path, {0, 1, 2})
    summary = write_cv_report(run, refs, LABELS)
    assert summary["complete"] and summary["missing_folds"] == []
    assert summary["n_cases"] == 6
    for name in ("metrics.csv", "metrics.json", "summary.json", "summary.csv", "report.html"):
        assert (run / "cv" / "report" / name).is_file()
    rows = json.loads((run / "cv" / "report" / "metrics.json").read_text())
    assert sorted({r["case_id"] for r in rows}) == sorted(refs)
    assert summary["per_label"]["lesion"]["dice_mean"] == pytest.approx(1.0)
    assert 0.9 < summary["per_label"]["organ"]["dice_mean"] < 1.0
    assert set(summary["per_fold_dice_mean"]) == {"0", "1", "2"}
    assert json.loads((run / "cv" / "summary.json").read_text()) == summary
    doc = write_postprocessing(run, refs, LABELS)
    assert doc["labels"]["organ"]["chosen"] == "largest_component"
    assert read_rules(run / "postprocessing.json") == {1: LabelRule(True, 0.0), 2: LabelRule(False, 0.0)}


def test_missing_fold_named_in_summary(tmp_path):
    run, refs = _run_with_folds(tmp_path, {0, 2})
    summary = write_cv_report(run, refs, LABELS)
    assert not summary["complete"]
    (missing,) = summary["missing_folds"]
    assert missing["fold"] == 1 and missing["cases"] == ["case2", "case3"]
    assert "fold_1 is not trained" in missing["reason"] and "--fold 1" in missing["reason"]
    assert summary["n_cases"] == 4
    assert summary["per_fold_dice_mean"]["1"] == {"organ": None, "lesion": None}
    # a fold trained but without its predictions says to resume it
    (run / "fold_1").mkdir()
    (run / "fold_1" / "last.pt").write_bytes(b"x")
    summary = write_cv_report(run, refs, LABELS)
    assert "--resume --fold 1" in summary["missing_folds"][0]["reason"]
    assert write_postprocessing(run, refs, LABELS)["missing_folds"][0]["fold"] == 1


def _selectable_run(tmp_path, name, ids, fp_slice, mean_dice, complete=True):
    """A run whose out-of-fold probabilities call the organ right plus a false island."""
    from medresunet.io import write_probabilities
    from medresunet.io.geometry import Geometry

    run = tmp_path / name
    write_folds(run, 2, {0: ids[:1], 1: ids[1:]})
    affine = make_affine("ras", (1.0, 1.0, 1.0))
    for cid in ids:
        ref = np.zeros(SHAPE, np.uint8)
        ref[ellipsoid(SHAPE, (14, 13, 12), (6, 6, 5))] = 1
        p1 = np.where(ref == 1, 0.7, 0.2).astype(np.float32)
        p1[fp_slice] = 0.6
        write_probabilities(np.stack([1 - p1, p1]), Geometry(SHAPE, affine, "nifti"),
                            run / "cv" / "probabilities" / f"{cid}.nii.gz")
    missing = [] if complete else [{"fold": 1, "reason": "fold_1 is not trained", "cases": ids[1:]}]
    summary = {"complete": complete, "missing_folds": missing, "mean_dice": mean_dice,
               "per_label": {"organ": {"dice_mean": mean_dice}}}
    (run / "cv" / "summary.json").write_text(json.dumps(summary))
    return run, affine


def test_select_prefers_the_better_run_and_judges_ensembles(tmp_path):
    from medresunet.crossval.select import select_runs

    ids = ["a", "b"]
    run_a, affine = _selectable_run(tmp_path, "A", ids, np.s_[1:4, 1:4, 1:4], 0.8)
    run_b, _ = _selectable_run(tmp_path, "B", ids, np.s_[27:30, 26:29, 1:4], 0.7)
    run_c, _ = _selectable_run(tmp_path, "C", ids, np.s_[1:2, 1:2, 1:2], 0.95, complete=False)
    refs = {}
    for cid in ids:
        ref = np.zeros(SHAPE, np.uint8)
        ref[ellipsoid(SHAPE, (14, 13, 12), (6, 6, 5))] = 1
        (tmp_path / "ref").mkdir(exist_ok=True)
        refs[cid] = write_nifti(tmp_path / "ref" / f"{cid}.nii.gz", ref, affine, dtype=np.uint8)
    labels = {"background": 0, "organ": 1}
    alone = select_runs([run_a, run_b, run_c])
    assert alone["chosen"]["runs"] == [str(run_a)]  # C scores higher but misses a fold
    c = next(x for x in alone["candidates"] if x["runs"] == [str(run_c)])
    assert not c["eligible"] and "fold 1" in c["reason"]
    doc = select_runs([run_a, run_b, run_c], refs, labels)
    # each run's island is outvoted by the other's probabilities: the ensemble is exact
    assert doc["chosen"]["runs"] == [str(run_a), str(run_b)] and doc["chosen"]["kind"] == "ensemble"
    assert doc["chosen"]["mean_dice"] == pytest.approx(1.0)
