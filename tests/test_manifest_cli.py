"""medresunet-manifest end to end through main(argv), on tiny NIfTI files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from medresunet.manifest import load_manifest, split_cases
from pipelines._cli import parse_label_names
from pipelines.manifest import main
from tests.synthetic import make_affine, write_nifti

AFF = make_affine("anisotropic")


def _label(value: int) -> np.ndarray:
    lab = np.zeros((4, 4, 3), np.uint8)
    lab[1:3, 1:3, 1] = value
    return lab


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir()
    labels.mkdir()
    for i in range(5):
        write_nifti(images / f"case{i}.nii.gz", np.zeros((4, 4, 3), np.float32), AFF)
        if i < 4:
            write_nifti(labels / f"case{i}.nii.gz", _label(1 + i % 2), AFF)
    write_nifti(labels / "orphan.nii.gz", _label(1), AFF)
    (images / "notes.txt").write_text("ignored")
    (images / ".tmp-x.nii.gz").write_text("ignored")
    return images, labels


def test_end_to_end_json(folders, tmp_path: Path, capsys) -> None:
    images, labels = folders
    out = tmp_path / "out" / "m.json"
    rc = main(["--images", str(images), "--labels", str(labels), "--output", str(out),
               "--folds", "2", "--seed", "3", "--check", "--quiet"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    assert doc["channels"] == ["CT"] and doc["folds"] == 2 and doc["name"] == "imagesTr"
    by_id = {c["id"]: c for c in doc["cases"]}
    assert sorted(by_id) == [f"case{i}" for i in range(5)]
    assert by_id["case0"]["image"] == "../imagesTr/case0.nii.gz"
    assert by_id["case4"]["split"] == "test" and "label" not in by_id["case4"]
    assert sorted(by_id[f"case{i}"]["fold"] for i in range(4)) == [0, 0, 1, 1]
    err = capsys.readouterr().err
    assert "orphan.nii.gz has no image" in err and "written as test cases: case4" in err
    m = load_manifest(out)
    train, val = split_cases(m, 0, 2, seed=99)  # explicit folds win over the seed
    assert {c.case_id for c in val} == {f"case{i}" for i in range(4) if by_id[f"case{i}"]["fold"] == 0}
    # same seed, same folds
    out2 = tmp_path / "m2.json"
    main(["--images", str(images), "--labels", str(labels), "--output", str(out2),
          "--folds", "2", "--seed", "3", "--quiet"])
    assert [c.get("fold") for c in json.loads(out2.read_text())["cases"]] == [
        c.get("fold") for c in doc["cases"]]


def test_yaml_label_names_and_overwrite(folders, tmp_path: Path, capsys) -> None:
    images, labels = folders
    out = tmp_path / "m.yaml"
    args = ["--images", str(images), "--labels", str(labels), "--output", str(out),
            "--label-names", "background=0, liver=1,tumour=2", "--name", "liver", "--quiet"]
    assert main(args) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["labels"] == {"background": 0, "liver": 1, "tumour": 2} and doc["name"] == "liver"
    assert main(args) == 2 and "exists; give --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_several_channels(tmp_path: Path) -> None:
    t1, t2, nn = tmp_path / "t1", tmp_path / "t2", tmp_path / "nn"
    for folder in (t1, t2, nn):
        folder.mkdir()
    for cid in ("a", "b"):
        write_nifti(t1 / f"{cid}.nii.gz", np.zeros((4, 4, 3), np.float32), AFF)
        write_nifti(t2 / f"{cid}.nii", np.zeros((4, 4, 3), np.float32), AFF)
        for ch in range(2):
            write_nifti(nn / f"{cid}_{ch:04d}.nii.gz", np.zeros((4, 4, 3), np.float32), AFF)
    out = tmp_path / "two.json"
    assert main(["--images", str(t1), "--images", str(t2), "--output", str(out),
                 "--channels", "T1,T2", "--label-names", "background=0", "--quiet"]) == 0
    m = load_manifest(out)
    assert m.channels == ("T1", "T2") and [c.case_id for c in m.cases] == ["a", "b"]
    assert m.cases[0].images[1].name == "a.nii" and m.cases[0].split == "test"
    out = tmp_path / "nn.json"
    assert main(["--images", str(nn), "--output", str(out), "--channels", "T1,T2",
                 "--label-names", "background=0", "--quiet"]) == 0
    m = load_manifest(out)
    assert [c.case_id for c in m.cases] == ["a", "b"]
    assert [p.name for p in m.cases[1].images] == ["b_0000.nii.gz", "b_0001.nii.gz"]


def test_usage_errors(folders, tmp_path: Path, capsys) -> None:
    images, labels = folders
    out = str(tmp_path / "m.json")
    assert main(["--images", str(tmp_path / "nope"), "--output", out]) == 2
    assert "expected an existing folder" in capsys.readouterr().err
    assert main(["--images", str(images), "--labels", str(labels), "--output", out,
                 "--label-names", "liver"]) == 2
    assert "--label-names" in capsys.readouterr().err
    assert main(["--images", str(images), "--labels", str(labels), "--output", out,
                 "--folds", "9"]) == 2
    assert "--folds" in capsys.readouterr().err
    assert main(["--images", str(images), "--labels", str(labels), "--output",
                 str(tmp_path / "m.txt")]) == 2
    assert not Path(out).exists()


def test_parse_label_names() -> None:
    assert parse_label_names("background=0,a=3") == {"background": 0, "a": 3}


def test_help_imports_no_torch() -> None:
    code = ("import sys\nfrom pipelines.manifest import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", check=False)
    assert res.returncode == 0 and "--images" in res.stdout
