"""Predictor round trips: preprocess -> predict -> invert puts a structure back where it was.

An oracle network (class 1 where the preprocessed intensity exceeds a threshold) makes the
expected segmentation known: the structure itself, on the scan's original grid, for every
geometry (RAS, LPS, oblique right- and left-handed, anisotropic, int16 with scale factors,
float32, 2D) and for the DICOM twin of a NIfTI scan.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medresunet.errors import ScanError
from medresunet.inference.predictor import Predictor
from medresunet.io import read_geometry, write_segmentation
from tests.synthetic import ellipsoid, make_affine, write_nifti

FG, BG, THRESHOLD = 100.0, 0.0, 50.0


class Oracle(torch.nn.Module):
    """Logits (background, structure) = (-(x - t), x - t) * scale from channel 0 (pointwise)."""

    def __init__(self, threshold: float, dims: int = 3) -> None:
        super().__init__()
        self.threshold, self.dims = threshold, dims
        self.scale = torch.nn.Parameter(torch.tensor(0.2), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.dims + 2:
            raise RuntimeError(f"oracle: expected {self.dims}D windows, got shape {tuple(x.shape)}")
        d = (x[:, :1] - self.threshold) * self.scale
        return torch.cat([-d, d], dim=1)


def preprocessing(spacing=(1.0, 1.0, 1.0), dims: int = 3, scheme: str = "none",
                  crop: bool = False, channels: int = 1) -> dict:
    norm = {"scheme": "none", "clip": None, "mean": None, "std": None}
    if scheme == "ct":
        norm = {"scheme": "ct", "clip": [-1000.0, 1000.0], "mean": 10.0, "std": 20.0}
    return {"orientation": "RAS", "target_spacing": [float(s) for s in spacing],
            "normalization": [norm] * channels, "crop_foreground": crop,
            "patch_size": [16, 16, 8][:dims] if dims == 3 else [16, 16], "spatial_dims": dims}


def checkpoint(prep: dict, channels: int = 1) -> dict:
    return {"format_version": 1, "model": {}, "state_dict": {}, "preprocessing": prep,
            "labels": {"background": 0, "structure": 1}, "input_channels": ["CT"] * channels,
            "infer": {"overlap": 0.25, "sw_batch_size": 2, "precision": "fp32"}}


def structure(shape) -> np.ndarray:
    """An off-centre ellipsoid plus a corner blob: any flip or transposition shows."""
    s = np.asarray(shape)
    mask = ellipsoid(shape, s * 0.4, np.maximum(s * 0.22, 1.5))
    corner = tuple(slice(1, 1 + max(2, n // 6)) for n in shape)
    mask[corner] = True
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


SHAPE = (22, 18, 10)
GEOMETRIES = {
    # name: (affine kind, spacing, dtype, slope, inter)
    "ras": ("ras", (1.0, 1.0, 1.0), np.float32, None, None),
    "lps": ("lps", (1.0, 1.0, 1.0), np.float32, None, None),
    "oblique": ("oblique", (1.0, 1.0, 1.0), np.float32, None, None),
    "oblique_lh": ("oblique_lh", (1.0, 1.0, 1.0), np.float32, None, None),
    "anisotropic": ("anisotropic", (1.0, 1.0, 3.0), np.float32, None, None),
    "int16_scaled": ("lps", (1.0, 1.0, 1.0), np.int16, 2.0, -10.0),
    "float32_aniso": ("oblique", (0.8, 0.8, 2.5), np.float32, None, None),
}


def _write(tmp_path, name, shape=SHAPE):
    kind, spacing, dtype, slope, inter = GEOMETRIES[name]
    affine = make_affine(kind, spacing)
    mask = structure(shape)
    image = np.where(mask, FG, BG).astype(np.float32)
    path = write_nifti(tmp_path / f"{name}.nii.gz", image, affine, dtype=dtype, slope=slope, inter=inter)
    return path, mask, affine, spacing


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_oracle_round_trip_exact(tmp_path, name):
    path, mask, affine, spacing = _write(tmp_path, name)
    predictor = Predictor(checkpoint(preprocessing(spacing)), device="cpu", model=Oracle(THRESHOLD))
    labels = predictor.predict([path])
    geometry = read_geometry(path)
    assert labels.shape == geometry.shape == SHAPE
    assert dice(labels == 1, mask) == 1.0
    out = write_segmentation(labels, geometry, tmp_path / "out" / f"{name}.nii.gz")
    written = read_geometry(out)
    assert written.shape == SHAPE
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)


def test_oracle_ct_normalisation_and_crop(tmp_path):
    # CT scheme: threshold in normalised units; crop to the body and pad back
    kind_affine = make_affine("oblique_lh", (1.0, 1.0, 2.0))
    mask = structure(SHAPE)
    body = np.zeros(SHAPE, bool)
    body[3:-3, 2:-2, 1:-1] = True
    image = np.where(body, 0.0, -1000.0) + np.where(mask & body, 300.0, 0.0)
    path = write_nifti(tmp_path / "ct.nii.gz", image.astype(np.float32), kind_affine)
    prep = preprocessing((1.0, 1.0, 2.0), scheme="ct", crop=True)
    t = (150.0 - 10.0) / 20.0
    labels = Predictor(checkpoint(prep), device="cpu", model=Oracle(t)).predict([path])
    assert labels.shape == SHAPE
    assert dice(labels == 1, mask & body) == 1.0


def test_oracle_resampled_to_other_spacing(tmp_path):
    shape = (30, 26, 12)
    affine = make_affine("oblique", (1.0, 1.0, 3.0))
    mask = ellipsoid(shape, (13, 12, 6), (8, 7, 3))
    path = write_nifti(tmp_path / "r.nii.gz", np.where(mask, FG, BG).astype(np.float32), affine)
    prep = preprocessing((1.5, 1.5, 2.0))
    labels = Predictor(checkpoint(prep), device="cpu", model=Oracle(THRESHOLD), tta=True).predict([path])
    assert labels.shape == shape
    assert dice(labels == 1, mask) > 0.95


def test_oracle_2d_nifti(tmp_path):
    shape2 = (24, 20)
    affine = make_affine("lps", (0.7, 0.9, 1.0))
    mask = structure(shape2)
    path = write_nifti(tmp_path / "slice.nii.gz", np.where(mask, FG, BG).astype(np.float32), affine)
    geometry = read_geometry(path)
    prep = preprocessing((0.7, 0.9, 1.0), dims=2)
    labels = Predictor(checkpoint(prep), device="cpu", model=Oracle(THRESHOLD, dims=2)).predict([path])
    assert labels.shape == geometry.shape
    assert dice(labels.reshape(shape2) == 1, mask) == 1.0
    out = read_geometry(write_segmentation(labels, geometry, tmp_path / "o" / "slice.nii.gz"))
    assert out.shape == geometry.shape
    np.testing.assert_allclose(out.affine, geometry.affine, atol=1e-4)


def test_oracle_2d_model_over_3d_scan_with_tta(tmp_path):
    path, mask, _, spacing = _write(tmp_path, "anisotropic")
    prep = preprocessing(spacing, dims=2)
    labels, probs = Predictor(checkpoint(prep), device="cpu", model=Oracle(THRESHOLD, dims=2),
                              tta=True).predict([path], return_probabilities=True)
    assert labels.shape == SHAPE and probs.shape == (2, *SHAPE)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert dice(labels == 1, mask) == 1.0


def test_postprocessing_options(tmp_path):
    shape = (24, 20, 10)
    mask = np.zeros(shape, bool)
    mask[2:12, 2:12, 2:8] = True       # 600 voxels = 0.6 mL
    mask[18:20, 16:18, 7:9] = True     # 8 voxels = 0.008 mL
    path = write_nifti(tmp_path / "p.nii.gz", np.where(mask, FG, BG).astype(np.float32), np.eye(4))
    ck = checkpoint(preprocessing())
    plain = Predictor(ck, device="cpu", model=Oracle(THRESHOLD)).predict([path])
    assert (plain == 1).sum() == 608
    big = Predictor(ck, device="cpu", model=Oracle(THRESHOLD), largest_component=True).predict([path])
    assert (big == 1).sum() == 600
    ml = Predictor(ck, device="cpu", model=Oracle(THRESHOLD), min_component_ml=0.01).predict([path])
    assert (ml == 1).sum() == 600


def test_dicom_twin_gives_the_same_segmentation(tmp_path):
    from tests.dicom_fixtures import write_dicom_series

    affine = make_affine("oblique", (0.9, 0.8, 2.0))
    mask = structure(SHAPE)
    image = np.where(mask, FG, BG).astype(np.float32)
    nii = write_nifti(tmp_path / "twin.nii.gz", image, affine)
    folder = tmp_path / "twin_dicom"
    write_dicom_series(folder, image, affine)
    predictor = Predictor(checkpoint(preprocessing((0.9, 0.8, 2.0))), device="cpu",
                          model=Oracle(THRESHOLD))
    a, b = predictor.predict([nii]), predictor.predict([folder])
    ga, gb = read_geometry(nii), read_geometry(folder)
    assert a.shape == b.shape == SHAPE
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ga.affine, gb.affine, atol=1e-4)
    wa = read_geometry(write_segmentation(a, ga, tmp_path / "o" / "a.nii.gz"))
    wb = read_geometry(write_segmentation(b, gb, tmp_path / "o" / "b.nii.gz"))
    np.testing.assert_allclose(wa.affine, wb.affine, atol=1e-4)
    assert dice(b == 1, mask) == 1.0


def test_wrong_channel_count_and_bad_scans(tmp_path):
    path, *_ = _write(tmp_path, "ras")
    two = Predictor(checkpoint(preprocessing(channels=2), channels=2), device="cpu",
                    model=Oracle(THRESHOLD))
    with pytest.raises(ScanError, match="channel"):
        two.predict([path])
    one = Predictor(checkpoint(preprocessing()), device="cpu", model=Oracle(THRESHOLD))
    nan = np.zeros((8, 8, 8), np.float32)
    nan[2, 2, 2] = np.nan
    bad = write_nifti(tmp_path / "nan.nii.gz", nan, np.eye(4))
    with pytest.raises(ScanError, match="nan.nii.gz"):
        one.predict([bad])
    four = write_nifti(tmp_path / "four.nii.gz", np.zeros((8, 8, 8, 3), np.float32), np.eye(4))
    with pytest.raises(ScanError, match="four.nii.gz"):
        one.predict([four])
    text = tmp_path / "text.nii.gz"
    text.write_text("not an image")
    with pytest.raises(ScanError, match="text.nii.gz"):
        one.predict([text])


@pytest.mark.parametrize("dims", [2, 3])
def test_cpu_predictor_runs_the_network_channels_last(dims):
    from medresunet.networks import ResidualUNet

    torch.manual_seed(0)
    kwargs = {"spatial_dims": dims, "in_channels": 1, "out_channels": 2, "channels": [4, 8]}
    net = ResidualUNet(**kwargs).eval()
    ckpt = checkpoint(preprocessing(dims=dims))
    ckpt["model"], ckpt["state_dict"] = kwargs, net.state_dict()
    predictor = Predictor(ckpt, device="cpu")
    want = torch.channels_last_3d if dims == 3 else torch.channels_last
    assert predictor.model.memory_format == want
    x = torch.randn(1, 1, *([16] * dims))
    with torch.inference_mode():
        got = predictor.model(x)
        ref = net(x)
    assert got.is_contiguous()  # callers get NC(D)HW logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_load_takes_the_geometry_the_reader_returned(tmp_path, monkeypatch):
    """One header parse per scan: the output geometry comes from the reader, not a second read."""
    import medresunet.io.dicom as dicom
    from tests.dicom_fixtures import write_dicom_series

    affine = make_affine("oblique", (0.9, 0.8, 2.0))
    image = np.where(structure(SHAPE), FG, BG).astype(np.float32)
    nii = write_nifti(tmp_path / "scan.nii.gz", image, affine)
    folder = tmp_path / "dicom"
    write_dicom_series(folder, image, affine)
    expected = {nii: read_geometry(nii), folder: read_geometry(folder)}
    calls = []
    real = dicom.series_geometry
    monkeypatch.setattr(dicom, "series_geometry", lambda *a, **k: calls.append(1) or real(*a, **k))
    predictor = Predictor(checkpoint(preprocessing((0.9, 0.8, 2.0))), device="cpu", model=Oracle(THRESHOLD))
    for path, want in expected.items():
        calls.clear()
        got = predictor.load([path]).geometry
        assert len(calls) == (1 if path == folder else 0)  # the DICOM headers are checked once
        assert got.shape == want.shape and got.source == want.source
        np.testing.assert_allclose(got.affine, want.affine, atol=1e-9)
        assert (got.qform_code, got.sform_code) == (want.qform_code, want.sform_code)
