"""Every command of the README's guide runs, in order, on the quick demo's data.

The install line and the test command are what ``.ci/run`` runs; the demo line runs here
with ``--quick``. Training commands get the quick demo's overrides appended so the whole
walkthrough takes seconds; otherwise each line is run exactly as written, through the console
script's ``main`` (the same function the installed script calls).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _commands() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        lines += [ln.strip() for ln in block.splitlines() if ln.strip().startswith("medresunet-")]
    return lines


def _main_of(program: str):
    from pipelines import demo, evaluate, export, infer, manifest, plan, select, train

    return {
        "medresunet-train": train.main,
        "medresunet-infer": infer.main,
        "medresunet-eval": evaluate.main,
        "medresunet-manifest": manifest.main,
        "medresunet-demo": demo.main,
        "medresunet-export": export.main,
        "medresunet-plan": plan.main,
        "medresunet-select": select.main,
    }[program]


def test_readme_quickstart_is_the_ci_recipe():
    """The README's install and test commands are the ones .ci/run executes."""
    bash = _blocks("bash")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    install, tests = bash[0].strip(), bash[1].strip()
    assert "pip install torch==2.13.0" in install and install.endswith("medresunet-demo")
    assert 'pip install -q -e ".[test,report]"' in ci and "pip install -q torch==2.13.0" in ci
    assert tests in ci.splitlines()


@pytest.mark.slow
def test_readme_walkthrough_runs(tmp_path, monkeypatch):
    from pipelines.demo import QUICK_SET

    monkeypatch.chdir(tmp_path)
    assert _main_of("medresunet-demo")(
        ["--quick", "--output", "medresunet-demo", "--quiet", "--device", "cpu"]) == 0
    test_images = tmp_path / "medresunet-demo" / "data" / "imagesTs"
    nifti_id = sorted(p.name for p in test_images.glob("*.nii.gz"))[0].removesuffix(".nii.gz")

    commands = _commands()
    programs = [c.split()[0] for c in commands]
    assert {"medresunet-manifest", "medresunet-train", "medresunet-infer", "medresunet-eval"} <= set(programs)
    for command in commands:
        program, *argv = shlex.split(command)
        if program == "medresunet-demo":
            continue  # the full demo; run above with --quick
        if program == "medresunet-train" and "--config" not in argv and "--resume" not in argv:
            argv += ["--set", "train.epochs=1", "--set", "train.steps_per_epoch=2",  # planned: one short epoch
                     "--set", "train.fit_budget=false"]
        elif program == "medresunet-train":
            if "--epochs" in argv:  # resume and extend: one epoch more than the quick run
                argv[argv.index("--epochs") + 1] = "3"
            for item in QUICK_SET:
                if not item.startswith("train.epochs"):
                    argv += ["--set", item]
        code = _main_of(program)(argv + ["--quiet"])
        assert code == 0, f"README command failed with exit {code}: {command}"

    python_blocks = _blocks("python")
    assert python_blocks, "the README has a Python API example"
    for block in python_blocks:
        exec(compile(block.replace("phantom_009", nifti_id), "README.md", "exec"), {})
    assert (tmp_path / f"{nifti_id}_seg.nii.gz").exists()
    assert (tmp_path / "evaluation" / "report.html").exists()
    assert (tmp_path / "predictions_tta" / "report" / "metrics.csv").exists()
    assert (tmp_path / "exported" / "model.onnx").exists()
    assert list((tmp_path / "predictions_exported").glob("*.seg.dcm"))  # the demo's DICOM series
