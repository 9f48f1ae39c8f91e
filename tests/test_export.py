"""Exported networks (ONNX, TorchScript) against their checkpoints, and medresunet-infer on them.

Parity on 2D and 3D networks with patch sizes that are no multiple of the stride, the
article preset, inputs of odd sizes (and one of exactly the stride, where the network's
padding rule doubles the last axis); metadata in model.json and the ONNX file; inference on
a folder of NIfTI and DICOM scans from the export alone (the .pt removed) to the
checkpoint's labels; the CLI's refusals.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from medresunet.export.exporter import export_checkpoint  # noqa: E402
from medresunet.export.metadata import file_sha256, read_model_json  # noqa: E402
from medresunet.networks import ResidualUNet  # noqa: E402
from medresunet.training.checkpoint import save_checkpoint  # noqa: E402
from tests.test_infer_cli import _checkpoint, _image  # noqa: E402

ARTICLE = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "channels": [64, 128, 256],
           "num_res_blocks": 1, "norm": "none", "act": "relu", "upsample": "linear",
           "downsample": "maxpool", "bias": True}
NETS = {
    "3d_anisotropic_odd": ({"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "channels": [4, 8, 16],
                            "act": "leakyrelu", "strides": [[2, 2, 1], 2], "kernel_sizes": [[3, 3, 1], 3, 3]},
                           [20, 18, 10]),
    "article_2d_odd": (ARTICLE, [34, 26]),
}


def _save(path: Path, kwargs: dict, patch: list[int]) -> Path:
    torch.manual_seed(1)
    net = ResidualUNet(**kwargs)
    channels = kwargs["in_channels"]
    norm = {"scheme": "ct", "clip": [-1000.0, 1000.0], "mean": 0.0, "std": 100.0}
    dims = kwargs["spatial_dims"]
    payload = {
        "format_version": 1, "medresunet_version": "test", "model": kwargs, "state_dict": net.state_dict(),
        "preprocessing": {"orientation": "RAS", "target_spacing": [1.0] * dims + ([1.0] if dims == 2 else []),
                          "normalization": [norm] * channels, "crop_foreground": False,
                          "patch_size": patch, "spatial_dims": dims},
        "labels": {"background": 0, **{f"organ{i}": i for i in range(1, kwargs["out_channels"])}},
        "input_channels": ["CT"] * channels, "infer": {"overlap": 0.25, "sw_batch_size": 2},
    }
    return save_checkpoint(path, payload)


@pytest.mark.parametrize("name", list(NETS))
def test_parity(tmp_path: Path, name: str) -> None:
    from medresunet.export.backends import runner_factories
    from medresunet.training.checkpoint import load_checkpoint, model_from_checkpoint

    kwargs, patch = NETS[name]
    ckpt = _save(tmp_path / "m.pt", kwargs, patch)
    report = export_checkpoint(ckpt, tmp_path / "exp")
    assert report["passed"], report["verification"]
    backends = set(report["verification"])
    assert {"torch", "onnxruntime"} <= backends
    for backend, result in report["verification"].items():
        for r in result.values():
            # channels-last TorchScript (the CPU layout) rounds differently; the graphs do not
            limit = 1e-3 * max(1.0, r["max_abs_logit"]) if backend == "torch" else 1e-4
            assert r["max_abs_diff"] < limit and r["argmax_agreement"] >= 0.999, (backend, r)
    meta = read_model_json(tmp_path / "exp")
    model = model_from_checkpoint(load_checkpoint(ckpt))
    stride = meta["spatial_multiple"][0]
    dims = kwargs["spatial_dims"]
    sizes = [[stride] * dims, [p + 3 for p in patch], [7, 5, 3][:dims]]  # padding rule, odd, tiny
    for name_, make in runner_factories(tmp_path / "exp", meta, torch.device("cpu")).items():
        runner = make()
        for size in sizes:
            x = torch.randn(3, kwargs["in_channels"], *size)
            with torch.no_grad():
                ref, got = model(x), runner(x)
            assert got.shape == ref.shape, (name_, size)
            assert float((ref - got).abs().max()) < 1e-3, (name_, size)  # the export tolerance


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    ckpt = _checkpoint(root / "best.pt")
    export_checkpoint(ckpt, root / "exp")
    return ckpt, root / "exp"


def test_metadata(exported) -> None:
    import onnx

    ckpt, folder = exported
    meta = json.loads((folder / "model.json").read_text())
    assert meta["checkpoint_sha256"] == file_sha256(ckpt)
    assert meta["labels"] == {"background": 0, "organ": 1}
    assert meta["patch_size"] == [16, 16, 8] and meta["input_channels"] == ["CT"]
    assert meta["infer"]["overlap"] == 0.25 and meta["preprocessing"]["target_spacing"] == [1.5, 1.5, 2.0]
    assert meta["verification"]["passed"] and meta["files"] == {"onnx": "model.onnx", "torchscript": "model.ts"}
    proto = onnx.load(str(folder / "model.onnx"))
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["medresunet.checkpoint_sha256"] == meta["checkpoint_sha256"]
    assert props["medresunet.preprocessing"] == meta["preprocessing"]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 1  # static channels
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3], dims[4]))  # dynamic batch, spatial


def _scans(root: Path) -> Path:
    from tests.dicom_fixtures import write_dicom_series
    from tests.synthetic import make_affine, write_nifti

    inp = root / "in"
    inp.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for kind in ("oblique", "lps"):
        write_nifti(inp / f"{kind}.nii.gz", _image() + rng.normal(0, 60, (20, 16, 8)), make_affine(kind))
    write_dicom_series(inp / "p1", np.round(_image() + rng.normal(0, 60, (20, 16, 8))),
                       make_affine("oblique", (0.9, 0.8, 2.0)))
    return inp


def test_infer_from_export_without_checkpoint(exported, tmp_path: Path) -> None:
    import nibabel as nib

    from medresunet.io.dicom import select_series
    from medresunet.io.dicom_seg import labels_from_seg
    from pipelines.infer import main

    ckpt, folder = exported
    inp = _scans(tmp_path)
    assert main(["--model", str(ckpt), "--input", str(inp), "--output", str(tmp_path / "pt"),
                 "--device", "cpu", "--quiet"]) == 0
    alone = tmp_path / "deploy" / "exp"
    shutil.copytree(folder, alone)  # no .pt anywhere near it
    for model, backend in ((alone, "auto"), (alone / "model.onnx", "onnxruntime"),
                           (alone / "model.onnx", "openvino")):
        if backend == "openvino" and importlib.util.find_spec("openvino") is None:
            continue  # the [openvino] extra is optional
        out = tmp_path / f"out_{backend}"
        assert main(["--model", str(model), "--input", str(inp), "--output", str(out), "--backend", backend,
                     "--device", "cpu", "--quiet", "--dicom-seg"]) == 0
        run = json.loads((out / "run.json").read_text())
        assert run["backend"]["model"] == "export"
        for case in ("oblique", "lps", "p1"):
            ref = np.asarray(nib.load(tmp_path / "pt" / f"{case}.nii.gz").dataobj)
            got = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj)
            assert 0.02 < ref.mean() < 0.98  # the network segments something, not one class
            assert np.mean(ref == got) >= 0.999, (backend, case)
        seg = labels_from_seg(out / "p1.seg.dcm", select_series(inp / "p1"), [1])
        np.testing.assert_array_equal(seg, np.asarray(nib.load(out / "p1.nii.gz").dataobj))
        assert not (out / "oblique.seg.dcm").exists()


def test_cli_refusals(exported, tmp_path: Path, capsys, monkeypatch) -> None:
    from medresunet.export import backends
    from pipelines.export import main as export_main
    from pipelines.infer import main

    ckpt, folder = exported
    inp = tmp_path / "in"
    inp.mkdir()
    from tests.synthetic import make_affine, write_nifti

    write_nifti(inp / "a.nii.gz", _image(), make_affine("ras"))
    out = tmp_path / "out"
    assert main(["--model", str(ckpt), "--input", str(inp), "--output", str(out), "--dicom-seg", "--quiet"]) == 2
    assert "DICOM SEG needs a DICOM source" in capsys.readouterr().err
    assert main(["--model", str(ckpt), "--input", str(inp), "--output", str(out), "--backend", "onnxruntime",
                 "--quiet"]) == 2
    assert "export it first" in capsys.readouterr().err
    monkeypatch.setattr(backends, "installed", lambda name: name == "torch")
    assert main(["--model", str(folder), "--input", str(inp), "--output", str(out), "--backend", "openvino",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'medresunet[openvino]'" in err[0]
    monkeypatch.undo()
    # past the tolerance: non-zero exit, nothing written
    assert export_main(["--model", str(ckpt), "--output", str(tmp_path / "strict"), "--format", "onnx",
                        "--tolerance", "1e-12", "--quiet"]) == 1
    assert "beyond the tolerance" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()
    assert export_main(["--model", str(ckpt), "--output", str(folder), "--quiet"]) == 2  # not empty
