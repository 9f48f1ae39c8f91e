"""Manifest parsing (project JSON/YAML and MSD dataset.json), errors, and splits."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from medresunet.errors import ManifestError
from medresunet.manifest import (
    Case,
    Manifest,
    assign_folds,
    load_manifest,
    save_manifest,
    split_cases,
)

REPO = Path(__file__).resolve().parents[1]


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def write(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(doc))
    else:
        path.write_text(yaml.safe_dump(doc))
    return path


def base_doc(**extra) -> dict:
    doc = {
        "name": "liver",
        "channels": ["CT"],
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "cases": [
            {"id": "case001", "image": "images/case001.nii.gz", "label": "labels/case001.nii.gz"},
            {"id": "case002", "image": "images/case002.nii.gz", "label": "labels/case002.nii.gz",
             "split": "val"},
        ],
    }
    doc.update(extra)
    return doc


@pytest.fixture
def data(tmp_path: Path) -> Path:
    touch(tmp_path, "images/case001.nii.gz", "images/case002.nii.gz",
          "labels/case001.nii.gz", "labels/case002.nii.gz")
    return tmp_path


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------ good manifests


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_project_format(data: Path, suffix: str) -> None:
    m = load_manifest(write(data / f"m{suffix}", base_doc()))
    assert isinstance(m, Manifest)
    assert m.name == "liver" and m.channels == ("CT",) and m.path == (data / f"m{suffix}").resolve()
    assert m.labels == {"background": 0, "liver": 1, "tumour": 2}
    assert m.cases[0] == Case("case001", ((data / "images/case001.nii.gz").resolve(),),
                              (data / "labels/case001.nii.gz").resolve(), None, None)
    assert m.cases[1].split == "val"
    assert all(p.is_absolute() for c in m.cases for p in c.images)


def test_root_several_channels_dicom_folder_and_unlabelled(tmp_path: Path) -> None:
    touch(tmp_path, "data/t1/a.nii.gz", "data/t2/a.nii.gz", "data/seg/a.nii.gz",
          "data/t1/b.nii", "data/dicom/b/IM0001.dcm", "data/t1/c.nii.gz")
    doc = {"root": "data", "channels": ["T1", "T2"], "labels": {"background": 0, "lesion": 3},
           "folds": 3,
           "cases": [
               {"id": "a", "images": ["t1/a.nii.gz", "t2/a.nii.gz"], "label": "seg/a.nii.gz",
                "fold": 2},
               {"id": "b", "images": ["t1/b.nii", "dicom/b"], "split": "test"},
               {"id": "c", "images": ["t1/c.nii.gz", str(tmp_path / "data/dicom/b")], "label": None},
           ]}
    m = load_manifest(write(tmp_path / "m.yaml", doc))
    assert m.folds == 3 and m.channels == ("T1", "T2")
    a, b, c = m.cases
    assert a.images == ((tmp_path / "data/t1/a.nii.gz").resolve(), (tmp_path / "data/t2/a.nii.gz").resolve())
    assert a.fold == 2 and a.label == (tmp_path / "data/seg/a.nii.gz").resolve()
    assert b.images[1].is_dir() and b.split == "test" and b.label is None
    assert c.images[1] == (tmp_path / "data/dicom/b").resolve() and c.label is None


def test_msd_dataset_json(tmp_path: Path) -> None:
    touch(tmp_path, "imagesTr/liver_0.nii.gz", "labelsTr/liver_0.nii.gz",
          "imagesTr/liver_1.nii.gz", "labelsTr/liver_1.nii.gz", "imagesTs/liver_9.nii.gz")
    doc = {"name": "Liver", "description": "d", "reference": "r", "licence": "CC-BY-SA 4.0",
           "release": "1.0", "tensorImageSize": "3D", "modality": {"0": "CT"},
           "labels": {"0": "background", "1": "liver", "2": "cancer"},
           "numTraining": 2, "numTest": 1,
           "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"},
                        {"image": "./imagesTr/liver_1.nii.gz", "label": "./labelsTr/liver_1.nii.gz"}],
           "test": ["./imagesTs/liver_9.nii.gz"]}
    m = load_manifest(write(tmp_path / "dataset.json", doc))
    assert m.name == "Liver" and m.channels == ("CT",)
    assert m.labels == {"background": 0, "liver": 1, "cancer": 2}
    assert [c.case_id for c in m.cases] == ["liver_0", "liver_1", "liver_9"]
    assert m.cases[0].label == (tmp_path / "labelsTr/liver_0.nii.gz").resolve()
    assert m.cases[2].split == "test" and m.cases[2].label is None


def test_msd_errors(tmp_path: Path) -> None:
    doc = {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema"},
           "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz",
                         "extra": 1}],
           "numTraning": 1}
    msg = error_of(write(tmp_path / "dataset.json", doc), check_files=False)
    assert "dataset.json" in msg and "'numTraning'" in msg and "'extra'" in msg
    assert "BRATS_001" in msg and "expected 2 image(s)" in msg and "4D" in msg


def test_check_files_false_skips_existence(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path / "m.json", base_doc()), check_files=False)
    assert len(m.cases) == 2


@pytest.mark.parametrize("name", ["example.json", "example.yaml"])
def test_examples_parse(name: str) -> None:
    m = load_manifest(REPO / "data_manifests" / name, check_files=False)
    assert m.labels["background"] == 0 and m.cases


# ------------------------------------------------------------------ bad manifests


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(colour="red"), ["top level", "unknown key 'colour'"]),
        (lambda d: d["cases"][0].update(mask="x"), ["case 'case001'", "unknown key 'mask'"]),
        (lambda d: d.update(channels="CT"), ["'channels'", "expected a non-empty list", "'CT'"]),
        (lambda d: d.update(name=3), ["'name'", "expected a non-empty string", "3"]),
        (lambda d: d["labels"].update(liver="1"), ["label 'liver'", "expected a non-negative int", "'1'"]),
        (lambda d: d["cases"][0].update(image=["a"]), ["case 'case001'", "'image'", "path string"]),
        (lambda d: d.update(cases={"a": 1}), ["'cases'", "expected a non-empty list", "dict"]),
        (lambda d: d["cases"][0].update(image="images/nope.nii.gz"),
         ["case 'case001'", "nope.nii.gz not found"]),
        (lambda d: d["cases"][0].update(label="labels/nope.nii.gz"),
         ["case 'case001'", "label", "nope.nii.gz not found"]),
        (lambda d: d["cases"][0].update(label="labels"), ["case 'case001'", "is a folder"]),
        (lambda d: d["cases"][1].update(id="case001"), ["case 'case001'", "duplicate case id"]),
        (lambda d: d["cases"][0].update(images=["images/case001.nii.gz"] * 2) or d["cases"][0].pop("image"),
         ["case 'case001'", "expected 1 image(s)", "got 2"]),
        (lambda d: d["cases"][0].update(images=["images/case001.nii.gz"]),
         ["case 'case001'", "exactly one of 'image'"]),
        (lambda d: d.update(labels={"liver": 1}), ["'labels'", "'background': 0", "['liver']"]),
        (lambda d: d.update(labels={"background": 0, "liver": 1, "tumour": 1}),
         ["label 'tumour'", "duplicate value 1", "'liver'"]),
        (lambda d: d["cases"][0].update(split="training"), ["case 'case001'", "'split'", "'training'"]),
        (lambda d: d["cases"][0].update(fold=-1), ["case 'case001'", "'fold'", "-1"]),
        (lambda d: d.update(folds=3) or d["cases"][0].update(fold=3),
         ["case 'case001'", "'fold'", "expected 0..2", "got 3"]),
        (lambda d: d["cases"][0].update(fold=True), ["case 'case001'", "'fold'", "True"]),
        (lambda d: d.update(root="nowhere"), ["'root'", "nowhere", "not found"]),
        (lambda d: d["cases"][1].pop("label"), ["case 'case002'", "split 'val' needs a 'label'"]),
    ],
)
def test_bad_project_manifest(data: Path, change, expected: list[str]) -> None:
    doc = base_doc()
    change(doc)
    msg = error_of(write(data / "m.json", doc))
    assert str((data / "m.json").resolve()) in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_problems_are_collected(data: Path) -> None:
    doc = base_doc(extra=1)
    doc["cases"][0]["split"] = "x"
    doc["cases"][1]["image"] = "missing.nii.gz"
    msg = error_of(write(data / "m.yaml", doc))
    assert "3 problem(s)" in msg and "'extra'" in msg and "'x'" in msg and "missing.nii.gz" in msg


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("m.txt", "{}", "expected a .json, .yaml or .yml"),
        ("m.json", "{", "invalid JSON"),
        ("m.json", '{"cases": [], "cases": []}', "duplicate key 'cases'"),
        ("m.yaml", "a: [", "invalid YAML"),
        ("m.yaml", "- 1", "expected a mapping at the top level, got list"),
        ("m.yaml", "foo: 1", "expected a 'cases' list"),
    ],
)
def test_unreadable_documents(tmp_path: Path, name: str, text: str, expected: str) -> None:
    (tmp_path / name).write_text(text)
    msg = error_of(tmp_path / name)
    assert name in msg and expected in msg


def test_missing_manifest(tmp_path: Path) -> None:
    assert "file not found" in error_of(tmp_path / "nope.json")


# ------------------------------------------------------------------ splits


def make_manifest(n: int, per_case: dict | None = None) -> Manifest:
    per_case = per_case or {}
    cases = tuple(
        Case(f"c{i:03d}", (Path(f"/d/c{i}.nii.gz"),), Path(f"/d/l{i}.nii.gz"),
             per_case.get(i, {}).get("split"), per_case.get(i, {}).get("fold"))
        for i in range(n)
    )
    return Manifest("t", Path("/d/m.json"), ("CT",), {"background": 0, "a": 1}, cases)


def test_kfold_deterministic_balanced_and_disjoint() -> None:
    m = make_manifest(23)
    vals = []
    for fold in range(5):
        train, val = split_cases(m, fold, 5, seed=7)
        assert split_cases(m, fold, 5, seed=7) == (train, val)
        assert not {c.case_id for c in train} & {c.case_id for c in val}
        assert len(train) + len(val) == 23
        vals.append({c.case_id for c in val})
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
    assert set().union(*vals) == {c.case_id for c in m.cases}
    other = [{c.case_id for c in split_cases(m, f, 5, seed=8)[1]} for f in range(5)]
    assert other != vals


def test_assign_folds_order_independent() -> None:
    ids = [f"x{i}" for i in range(11)]
    a = assign_folds(ids, 3, seed=1)
    assert a == assign_folds(reversed(ids), 3, seed=1)
    assert sorted(Counter(a.values()).values()) == [3, 4, 4]


def test_explicit_split_and_fold_win() -> None:
    m = make_manifest(8, {0: {"split": "val"}, 1: {"split": "train"}, 2: {"split": "test"},
                            3: {"fold": 1}, 4: {"fold": 0}})
    for fold in range(2):
        train, val = split_cases(m, fold, 2, seed=0)
        ids_t, ids_v = {c.case_id for c in train}, {c.case_id for c in val}
        assert "c000" in ids_v and "c001" in ids_t and "c002" not in ids_t | ids_v
        assert ("c003" in ids_v) == (fold == 1) and ("c004" in ids_v) == (fold == 0)
    unlabelled = Manifest("t", Path("/m.json"), ("CT",), {"background": 0},
                          make_manifest(4).cases + (Case("u", (Path("/u.nii.gz"),)),))
    train, val = split_cases(unlabelled, 0, 2, 0)
    assert "u" not in {c.case_id for c in train + val}


def test_split_errors() -> None:
    m = make_manifest(4, {0: {"fold": 4}})
    with pytest.raises(ManifestError, match=r"expected fold in 0\.\.2, got 3"):
        split_cases(m, 3, 3, 0)
    with pytest.raises(ManifestError, match="expected folds >= 2"):
        split_cases(m, 0, 1, 0)
    with pytest.raises(ManifestError, match=r"'c000' \(fold 4\)"):
        split_cases(m, 0, 3, 0)
    all_val = make_manifest(2, {0: {"split": "val"}, 1: {"split": "val"}})
    with pytest.raises(ManifestError, match="no training case"):
        split_cases(all_val, 0, 2, 0)


# ------------------------------------------------------------------ writing, imports


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_save_roundtrip(data: Path, suffix: str) -> None:
    m = load_manifest(write(data / "m.json", base_doc(folds=2)))
    out = save_manifest(m, data / f"copy{suffix}")
    again = load_manifest(out)
    assert again.cases == m.cases and again.labels == m.labels and again.folds == 2
    with pytest.raises(ManifestError, match="expected a .json"):
        save_manifest(m, data / "copy.txt")


def test_no_torch_import() -> None:
    code = "import sys, medresunet.manifest; sys.exit('torch' in sys.modules or 'monai' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_msd_variants_and_missing_files(tmp_path: Path) -> None:
    touch(tmp_path, "imagesTr/a.nii.gz", "labelsTr/a.nii.gz", "imagesTs/t.nii.gz")
    doc = {"modality": {"0": "MRI"}, "labels": {"0": "Background", "1": "hippo"},
           "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
           "test": [{"image": "./imagesTs/t.nii.gz"}]}
    m = load_manifest(write(tmp_path / "dataset.json", doc))
    assert m.labels == {"background": 0, "hippo": 1} and m.cases[1].split == "test"
    doc["training"].append({"image": "./imagesTr/b.nii.gz", "label": "./labelsTr/b.nii.gz"})
    doc["labels"] = {"1": "hippo"}
    msg = error_of(write(tmp_path / "dataset.json", doc))
    assert "training[1] (case 'b')" in msg and "b.nii.gz not found" in msg
    assert "expected 'background': 0" in msg
