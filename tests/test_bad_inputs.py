"""The bad-input catalogue (issue 7): every broken input, fed to the command that reads it.

Each case states what the user sees: a fragment of the one-line message (which also names
the file), and the exit code: 2 for usage, config, manifest and checkpoint errors, 1 for a
case of a batch that failed (the others go on). No traceback unless ``--debug``, and no
output file (nor a ``.tmp-`` leftover) for the failed input.

The commands run in-process through their ``main(argv)``; the inputs are tiny.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipelines.evaluate import main as evaluate
from pipelines.infer import main as infer
from pipelines.manifest import main as manifest_cli
from pipelines.train import main as train
from tests import bad_inputs as B

TINY = ["model.channels=[4,8]", "train.steps_per_epoch=1", "train.epochs=1", "train.batch_size=1",
        "data.samples_per_volume=1", "train.precision=fp32", "data.patch_size=[16,16,8]",
        "infer.sw_batch_size=1", "train.warmup_epochs=0", "data.num_workers=0", "data.cache=none"]
SETS = [a for s in TINY for a in ("--set", s)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return B.checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def _no_leftovers(folder: Path) -> None:
    if folder.exists():
        left = [p for p in folder.rglob(".tmp-*")]
        assert not left, left


def _one_clear_error(err: str, name: str, fragment: str) -> None:
    """No traceback; one line holds both the file's name and the message fragment."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if fragment in ln]
    assert lines, f"{fragment!r} not in:\n{err}"
    assert any(name in ln for ln in lines), f"{name!r} not on the line of {fragment!r}:\n{err}"


def _infer_in_out(tmp_path, capsys, model) -> tuple[int, str]:
    """medresunet-infer of ``tmp_path/in`` into ``tmp_path/out`` on the CPU: (exit code, stderr)."""
    rc = infer(["--model", str(model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                "--device", "cpu", "--quiet"])
    return rc, capsys.readouterr().err


# ------------------------------------------------------------------ medresunet-infer: scans
INFER_SCANS = [  # (bad input, builder, file name, message fragment, exit code)
    ("missing file", B.missing_file, "x.nii.gz", "input does not exist", 2),
    ("empty file", B.empty_file, "x.nii.gz", "not a readable NIfTI file (ImageFileError: Empty file", 1),
    ("corrupt gzip", B.corrupt_gzip, "x.nii.gz", "not a valid gzip file, the compressed data are corrupt", 1),
    ("truncated .nii.gz", B.truncated_gzip, "x.nii.gz", "not a valid gzip file, the compressed data are corrupt or truncated", 1),
    ("truncated .nii", B.truncated_nifti, "x.nii", "corrupt or truncated NIfTI data", 1),
    ("text file named .nii.gz", B.text_as_nifti, "x.nii.gz", "not a readable NIfTI file (ImageFileError: File", 1),
    ("4D image", B.four_d, "x.nii.gz", "image of shape (20, 16, 8, 3); expected a 2D or 3D scan", 1),
    ("5D image", B.five_d, "x.nii.gz", "image of shape (20, 16, 8, 1, 2); expected a 2D or 3D scan", 1),
    ("NaN voxels", B.nan_voxels, "x.nii.gz", "1 voxels are NaN or infinite; expected finite intensities", 1),
    ("Inf voxels", B.inf_voxels, "x.nii.gz", "2 voxels are NaN or infinite; expected finite intensities", 1),
]


@pytest.mark.parametrize("what, build, name, fragment, code", INFER_SCANS, ids=[c[0] for c in INFER_SCANS])
def test_infer_bad_scan(tmp_path, ckpt, capsys, what, build, name, fragment, code):
    scan = build(tmp_path / "in" / name)
    src = scan if what == "missing file" else tmp_path / "in"
    out = tmp_path / "out"
    rc = infer(["--model", str(ckpt), "--input", str(src), "--output", str(out), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == code, err
    _one_clear_error(err, name, fragment)
    assert not (out / f"{name.split('.')[0]}.nii.gz").exists()
    _no_leftovers(out)


def test_infer_wrong_channel_count(tmp_path, capsys):
    two = B.checkpoint(tmp_path / "two.pt", channels=2)
    B.good_scan(tmp_path / "in" / "x.nii.gz")
    rc, err = _infer_in_out(tmp_path, capsys, two)
    assert rc == 1
    _one_clear_error(err, "x.nii.gz", "wrong channel count: the model expects 2 input channel(s) (CT, CT), got 1 image(s)")
    assert not (tmp_path / "out" / "x.nii.gz").exists()


def test_infer_constant_image_warns(tmp_path, ckpt, capsys):
    B.constant_image(tmp_path / "in" / "x.nii.gz")
    rc = infer(["--model", str(ckpt), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                "--device", "cpu", "--quiet"])
    assert rc == 0
    assert any("x.nii.gz" in ln and "constant" in ln for ln in capsys.readouterr().err.splitlines())


# ------------------------------------------------------------------ medresunet-infer: DICOM
DICOM = [  # (bad input, builder, args, name in message, message fragment, exit code)
    ("folder without DICOM", B.dicom_no_dicom, [], "in", "no scans found", 2),
    ("non-DICOM file named .dcm", B.dicom_fake_dcm, [], "p1", "no DICOM series found", 1),
    ("slice gap", B.dicom_slice_gap, [], "p1", "non-uniform slice spacing: 4 mm between", 1),
    ("non-parallel slices", B.dicom_non_parallel, [], "p1", "slices are not parallel", 1),
    ("two series, unknown --series-uid", B.dicom_two_series, ["--series-uid", "9.9.9"], "p1",
     "no DICOM series with SeriesInstanceUID 9.9.9; found: 1.2.826.0.1.3680043.8.498.1 (6 slices", 1),
]


@pytest.mark.parametrize("what, build, extra, name, fragment, code", DICOM, ids=[c[0] for c in DICOM])
def test_infer_bad_dicom(tmp_path, ckpt, capsys, what, build, extra, name, fragment, code):
    build(tmp_path / "in" / "p1")
    src = tmp_path / "in" / "p1" if what == "folder without DICOM" else tmp_path / "in"
    out = tmp_path / "out"
    rc = infer(["--model", str(ckpt), "--input", str(src), "--output", str(out), "--device", "cpu", "--quiet",
                *extra])
    err = capsys.readouterr().err
    assert rc == code, err
    _one_clear_error(err, name, fragment)
    assert not (out / "p1.nii.gz").exists()
    _no_leftovers(out)


def test_infer_two_series_reads_the_largest_and_says_so(tmp_path, ckpt, capsys):
    B.dicom_two_series(tmp_path / "in" / "p1")
    rc = infer(["--model", str(ckpt), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().err
    assert "2 DICOM series; reading 1.2.826.0.1.3680043.8.498.1 (6 slices" in text
    assert "not read: 1.2.826.0.1.3680043.8.498.2" in text
    assert (tmp_path / "out" / "p1.nii.gz").is_file()


# -------------------------------------------------------------- medresunet-infer: checkpoints
@pytest.mark.parametrize("builder, name, fragment", [
    (B.checkpoint_truncated, "cut.pt", "cannot read the checkpoint, the file is truncated or corrupt"),
    (B.checkpoint_other_architecture, "other.pt", "checkpoint weights do not fit its network (another architecture?)"),
], ids=["truncated", "another architecture"])
def test_infer_bad_checkpoint(tmp_path, capsys, builder, name, fragment):
    bad = builder(tmp_path / name)
    B.good_scan(tmp_path / "in" / "x.nii.gz")
    rc, err = _infer_in_out(tmp_path, capsys, bad)
    assert rc == 2
    _one_clear_error(err, name, fragment)
    assert not (tmp_path / "out").exists()


def test_infer_checkpoint_with_code_payload_is_refused_and_not_run(tmp_path, capsys):
    marker = tmp_path / "PAYLOAD_RAN"
    evil = B.checkpoint_pickle_payload(tmp_path / "evil.pt", marker)
    B.good_scan(tmp_path / "in" / "x.nii.gz")
    rc, err = _infer_in_out(tmp_path, capsys, evil)
    assert rc == 2
    _one_clear_error(err, "evil.pt", "refused to load: the file holds objects that need arbitrary code")
    assert not marker.exists(), "the pickled payload ran"
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    from medresunet.errors import CheckpointError

    B.good_scan(tmp_path / "in" / "x.nii.gz")
    with pytest.raises(CheckpointError, match="missing.pt"):
        infer(["--model", str(tmp_path / "missing.pt"), "--input", str(tmp_path / "in"), "--output",
               str(tmp_path / "out"), "--device", "cpu", "--quiet", "--debug"])


# ------------------------------------------------------------------------ medresunet-train
def _label_case(builder):
    return lambda root: B.manifest_with_label(root, builder)


def _image_case(builder):
    return lambda root: B.manifest_with_image(root, builder)


TRAIN = [  # (bad input, manifest builder, name in message, message fragment); all exit 2
    ("manifest: duplicate ids", B.manifest_duplicate_ids, "manifest.json", "case 'a': duplicate case id"),
    ("manifest: unknown key", B.manifest_unknown_key, "manifest.json", "case 'b': unknown key 'lable'"),
    ("manifest: wrong type", B.manifest_wrong_type, "manifest.json", "key 'fold': expected an int >= 0, got 'first'"),
    ("manifest: path does not exist", B.manifest_missing_path, "nowhere.nii.gz", "not found; expected an existing file"),
    ("wrong number of channels", B.manifest_two_channels, "manifest.json", "expected 2 image(s), one per channel, got 1"),
    ("label of another shape", _label_case(B.label_other_shape), "b_seg.nii.gz", "got shape (20, 16, 6)"),
    ("label with another affine", _label_case(B.label_other_affine), "b_seg.nii.gz", "got an affine differing by up to"),
    ("label values outside the map", _label_case(B.label_outside_map), "b_seg.nii.gz",
     "expected values in the label map [0, 1], got [7]"),
    ("non-integer float labels", _label_case(B.label_non_integer), "b_seg.nii.gz",
     "expected integer label values, got non-integer values [0.5]"),
    ("image: empty file", _image_case(B.empty_file), "a.nii.gz", "not a readable NIfTI file"),
    ("image: corrupt gzip", _image_case(B.corrupt_gzip), "a.nii.gz", "not a valid gzip file"),
    ("image: truncated", _image_case(B.truncated_gzip), "a.nii.gz", "compressed data are corrupt or truncated"),
    ("image: text named .nii.gz", _image_case(B.text_as_nifti), "a.nii.gz", "not a valid gzip file"),
    ("image: 4D", _image_case(B.four_d), "a.nii.gz", "expected a 2D or 3D scan"),
    ("image: NaN voxels", _image_case(B.nan_voxels), "a.nii.gz", "voxels are NaN or infinite"),
]


@pytest.mark.parametrize("what, build, name, fragment", TRAIN, ids=[c[0] for c in TRAIN])
def test_train_bad_dataset(tmp_path, capsys, what, build, name, fragment):
    manifest = build(tmp_path / "data")
    run = tmp_path / "run"
    rc = train(["--manifest", str(manifest), "--config", "3d", "--output", str(run), "--device", "cpu",
                "--quiet", *SETS])
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_clear_error(err, name, fragment)
    assert not run.exists()


CONFIGS = [  # (bad input, builder, message fragment); exit 2
    ("config: unknown key", B.config_unknown_key, "unknown key train.epochz; known keys of train"),
    ("config: wrong type", B.config_wrong_type, "train.lr: expected a number, got 'fast'"),
]


@pytest.mark.parametrize("what, build, fragment", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_train_bad_config(tmp_path, capsys, what, build, fragment):
    manifest = B.manifest(tmp_path / "data")
    config = build(tmp_path / "bad.yaml")
    rc = train(["--manifest", str(manifest), "--config", str(config), "--output", str(tmp_path / "run"),
                "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    _one_clear_error(err, "bad.yaml", fragment)
    assert not (tmp_path / "run").exists()


def test_train_constant_image_is_a_warning(caplog, tmp_path):
    from medresunet.data.checks import check_cases
    from medresunet.manifest import load_manifest

    m = load_manifest(B.manifest_with_image(tmp_path / "data", B.constant_image))
    with caplog.at_level(logging.WARNING):
        check_cases(list(m.cases), m.labels, 1)
    assert any("a.nii.gz" in r.getMessage() and "every voxel has the value 40" in r.getMessage()
               for r in caplog.records)


# ------------------------------------------------------------------------- medresunet-eval
EVAL = [  # (bad reference, builder, message fragment, exit code)
    ("reference of another shape", B.label_other_shape, "is on another grid than reference", 1),
    ("reference with another affine", B.label_other_affine, "(affine differs by up to 2.91 mm)", 1),
    ("non-integer float reference", B.label_non_integer, "label volume holds non-integer values (0.5)", 1),
    ("corrupt gzip reference", B.corrupt_gzip, "not a valid gzip file", 1),
    ("empty reference file", B.empty_file, "not a readable NIfTI file", 1),
]


@pytest.mark.parametrize("what, build, fragment, code", EVAL, ids=[c[0] for c in EVAL])
def test_eval_bad_reference(tmp_path, capsys, what, build, fragment, code):
    B.good_label(tmp_path / "pred" / "b.nii.gz")
    B.good_label(tmp_path / "pred" / "c.nii.gz")
    B.good_label(tmp_path / "ref" / "c.nii.gz")
    build(tmp_path / "ref" / "b.nii.gz")
    out = tmp_path / "out"
    rc = evaluate(["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--output", str(out),
                   "--quiet", "--workers", "1", "--labels", "organ=1"])
    err = capsys.readouterr().err
    assert rc == code, err
    _one_clear_error(err, str(tmp_path / "ref" / "b.nii.gz"), fragment)
    text = (out / "metrics.csv").read_text()
    assert "\nc," in text and "\nb," not in text  # the good case is reported, the bad one not
    _no_leftovers(out)


def test_eval_label_values_outside_the_map_warn(tmp_path, capsys):
    B.good_label(tmp_path / "pred" / "b.nii.gz")
    B.label_outside_map(tmp_path / "ref" / "b.nii.gz")
    rc = evaluate(["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--output",
                   str(tmp_path / "out"), "--quiet", "--workers", "1", "--labels", "organ=1"])
    assert rc == 0
    _one_clear_error(capsys.readouterr().err, "b.nii.gz", "holds label values [7] that are not in the label map")


def test_eval_bad_manifest_exit_2(tmp_path, capsys):
    manifest = B.manifest_duplicate_ids(tmp_path / "data")
    B.good_label(tmp_path / "pred" / "a.nii.gz")
    rc = evaluate(["--pred", str(tmp_path / "pred"), "--ref", str(manifest), "--output", str(tmp_path / "out"),
                   "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    _one_clear_error(err, "manifest.json", "duplicate case id")
    assert not (tmp_path / "out" / "metrics.csv").exists()


# --------------------------------------------------------------------- medresunet-manifest
def test_manifest_check_reports_bad_label(tmp_path, capsys):
    B.good_scan(tmp_path / "images" / "a.nii.gz")
    B.label_non_integer(tmp_path / "labels" / "a.nii.gz")
    out = tmp_path / "m.json"
    rc = manifest_cli(["--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                       "--output", str(out), "--label-names", "background=0,organ=1", "--check", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    _one_clear_error(err, "a.nii.gz", "expected integer label values, got non-integer values [0.5]")
    assert not out.exists()
    _no_leftovers(tmp_path)
