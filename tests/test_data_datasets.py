"""Cached datasets: files are read once; later epochs reuse the cache; batches collate."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import medresunet.io.readers as readers
from medresunet.config import AugmentConfig, DataConfig
from medresunet.data.datasets import make_train_dataset, make_val_dataset
from medresunet.data.preprocessing import ChannelNorm, Preprocessing
from medresunet.errors import ConfigError
from tests.synthetic import make_affine, sphere_phantom, write_nifti

PATCH = (12, 12, 6)


@pytest.fixture
def cases(tmp_path):
    out = []
    for i in range(2):
        image, label = sphere_phantom((24, 22, 10), seed=i)
        aff = make_affine("lps", spacing=(1.0, 1.0, 3.0))
        img = write_nifti(tmp_path / f"c{i}.nii.gz", image, aff)
        lab = write_nifti(tmp_path / f"c{i}_seg.nii.gz", label, aff, dtype=np.uint8)
        out.append(SimpleNamespace(case_id=f"c{i}", images=(Path(img),), label=Path(lab)))
    return out


@pytest.fixture
def read_counter(monkeypatch):
    calls = []
    original = readers.read_volume

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(readers, "read_volume", counting)
    return calls


def _prep() -> Preprocessing:
    return Preprocessing("RAS", (1.0, 1.0, 3.0), (ChannelNorm("ct", (-150.0, 250.0), 50.0, 100.0),),
                         True, PATCH, 3)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cached_dataset_reads_files_once(cases, read_counter, tmp_path, cache):
    cfg = DataConfig(patch_size=PATCH, samples_per_volume=2, cache=cache,
                     cache_dir=str(tmp_path / "cache"), augment=AugmentConfig(enabled=False))
    ds = make_train_dataset(cases, _prep(), cfg)
    from monai.data import DataLoader  # the training loop's loader (list_data_collate)

    loader = DataLoader(ds, batch_size=2, shuffle=True)
    for _ in range(2):                                    # two epochs
        batches = list(loader)
        assert len(batches) == 1
        batch = batches[0]
        assert tuple(batch["image"].shape) == (4, 1, *PATCH)   # 2 volumes x 2 patches
        assert tuple(batch["label"].shape) == (4, 1, *PATCH)
        assert sorted(set(batch["case_id"])) == ["c0", "c1"]
        if cache == "memory":
            assert len(read_counter) == 4                 # 2 images + 2 labels, read when caching
    assert len(read_counter) == 4
    if cache == "disk":
        assert len(list((tmp_path / "cache").rglob("*.pt"))) == 2


def test_val_dataset_whole_volumes_and_errors(cases, read_counter):
    ds = make_val_dataset(cases, _prep())
    item = ds[0]
    assert item["image"].ndim == 4 and item["image"].shape == item["label"].shape
    assert item["case_id"] == "c0"
    _ = ds[0]
    assert len(read_counter) == 4
    with pytest.raises(ConfigError):
        make_val_dataset(cases, _prep(), cache="disk")
