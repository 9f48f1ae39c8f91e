"""Cross-validation over the folds of a run: the run-folder layout, the out-of-fold CV
report and summary, postprocessing chosen by the out-of-fold predictions, and the choice
between runs (DESIGN.md section 7).

Run folder with folds::

    RUN/config.yaml  RUN/fingerprint.json      one config and one fingerprint for all folds
    RUN/fold_K/{last,best}.pt, log.csv, run.json, oof.json
    RUN/cv/folds.json                           fold -> validation case ids
    RUN/cv/predictions/<case_id>.nii.gz         each case predicted by the fold that left it out
    RUN/cv/probabilities/<case_id>.nii.gz       their class probabilities (--oof-probabilities)
    RUN/cv/report/                              the medresunet-eval files of all of them
    RUN/cv/summary.json                         the CV estimate per label, missing folds named
    RUN/postprocessing.json                     the per-label postprocessing and its evidence
"""
