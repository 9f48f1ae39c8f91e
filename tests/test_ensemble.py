"""Ensemble: the members' probabilities averaged on the preprocessed grid, in bounded memory;
members that disagree are refused, naming the checkpoint."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from medresunet.errors import CheckpointError
from medresunet.inference.ensemble import Ensemble, check_members
from medresunet.inference.postprocess import LabelRule
from medresunet.inference.predictor import Predictor
from tests.synthetic import ellipsoid, make_affine, write_nifti

SHAPE = (24, 20, 12)


class Pointwise(torch.nn.Module):
    """Logits (background, structure) = (-(x - t), x - t) * scale: members differ in t and scale."""

    def __init__(self, threshold: float, scale: float) -> None:
        super().__init__()
        self.threshold, self.scale = threshold, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x[:, :1] - self.threshold) * self.scale
        return torch.cat([-d, d], dim=1)


def checkpoint(labels: dict | None = None, spacing=(1.0, 1.0, 1.0)) -> dict:
    prep = {"orientation": "RAS", "target_spacing": list(spacing),
            "normalization": [{"scheme": "none", "clip": None, "mean": None, "std": None}],
            "crop_foreground": False, "patch_size": [16, 16, 8], "spatial_dims": 3}
    return {"format_version": 1, "model": {}, "state_dict": {}, "preprocessing": prep,
            "labels": labels or {"background": 0, "structure": 1}, "input_channels": ["CT"],
            "infer": {"overlap": 0.25, "sw_batch_size": 2, "precision": "fp32"}}


@pytest.fixture
def scan(tmp_path):
    mask = ellipsoid(SHAPE, (11, 9, 6), (7, 6, 4))
    image = np.where(mask, 100.0, 0.0).astype(np.float32)
    image[2:4, 2:4, 2:4] = 60.0  # an island only some members call structure
    return write_nifti(tmp_path / "s.nii.gz", image, make_affine("lps", (1.0, 1.0, 1.0)))


MEMBERS = [Pointwise(50.0, 0.2), Pointwise(70.0, 0.05), Pointwise(55.0, 0.5), Pointwise(40.0, 0.1)]


def test_mean_of_member_probabilities(scan):
    members = MEMBERS[:3]
    ens = Ensemble([(f"m{i}.pt", checkpoint()) for i in range(3)], models=members, device="cpu", tta=True)
    loaded = ens.load([scan])
    expected = torch.stack([Predictor(checkpoint(), model=m, device="cpu", tta=True).probabilities(
        loaded.data["image"]) for m in members]).mean(0)
    got = ens.probabilities(loaded.data["image"])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    labels, probs = ens.predict([scan], return_probabilities=True)
    assert labels.shape == probs.shape[1:] == SHAPE
    np.testing.assert_array_equal(labels, probs.argmax(0))


class LiveVolumes(TorchDispatchMode):
    """Record the peak number of live storages holding >= ``volume`` elements, and the largest
    tensor any op made."""

    def __init__(self, volume: int) -> None:
        super().__init__()
        self.volume, self.live, self.peak, self.largest = volume, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self.largest = max(self.largest, t.numel())
                if t.numel() >= self.volume:
                    key = t.untyped_storage().data_ptr()
                    refs = self.live.setdefault(key, [])
                    refs.append(weakref.ref(t))
        self.live = {k: [r for r in v if r() is not None] for k, v in self.live.items()}
        self.live = {k: v for k, v in self.live.items() if v}
        self.peak = max(self.peak, len(self.live))
        return out


def _peak(n_members: int, image: torch.Tensor) -> LiveVolumes:
    ens = Ensemble([(f"m{i}.pt", checkpoint()) for i in range(n_members)], models=MEMBERS[:n_members],
                   device="cpu", tta=True)
    volume = 2 * int(np.prod(image.shape[1:]))  # K x spatial
    with LiveVolumes(volume) as mode:
        probs = ens.probabilities(image)
    assert probs.shape == (2, *image.shape[1:])
    return mode


def test_memory_bounded_whatever_the_members(scan):
    image = Ensemble([("m.pt", checkpoint())], models=MEMBERS[:1], device="cpu").load([scan]).data["image"]
    image = torch.as_tensor(image).clone()
    two, four = _peak(2, image), _peak(4, image)
    volume = 2 * int(np.prod(image.shape[1:]))
    # no array of members x K x volume: the largest tensor is one probability volume
    assert four.largest < 2 * volume
    # a running sum: four members keep no more probability volumes alive than two
    assert four.peak == two.peak
    assert two.peak <= 4


def test_members_disagreeing_in_labels_refused():
    other = checkpoint({"background": 0, "structure": 1, "lesion": 2})
    with pytest.raises(CheckpointError, match=r"fold_1/last\.pt: its labels differ from those of "
                                              r"fold_0/last\.pt.*lesion"):
        check_members([("fold_0/last.pt", checkpoint()), ("fold_1/last.pt", other)])
    with pytest.raises(CheckpointError, match=r"b\.pt: its preprocessing differ"):
        Ensemble([("a.pt", checkpoint()), ("b.pt", checkpoint(spacing=(2.0, 2.0, 2.0)))],
                 models=MEMBERS[:2], device="cpu")
    check_members([("a.pt", checkpoint()), ("b.pt", checkpoint())])  # equal ones pass


def test_per_label_rules_applied(scan):
    # member 0 alone calls the island (intensity 60 > 50) structure; the rule removes it
    plain = Ensemble([("m.pt", checkpoint())], models=MEMBERS[:1], device="cpu").predict([scan])
    assert plain[2:4, 2:4, 2:4].all()
    ruled = Ensemble([("m.pt", checkpoint())], models=MEMBERS[:1], device="cpu",
                     rules={1: LabelRule(largest_component=True)}).predict([scan])
    assert not ruled[2:4, 2:4, 2:4].any()
    assert ruled.sum() == plain.sum() - 8
