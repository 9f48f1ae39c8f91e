"""The training loop on tiny in-memory data: checkpoints, resume, budget, 2D and 3D."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch

from medresunet.config import load_config
from medresunet.networks import build_network, network_kwargs
from medresunet.training.checkpoint import load_checkpoint, model_from_checkpoint
from medresunet.training.loop import ModelInfo, TrainData, TrainOptions, train
from tests.synthetic import sphere_phantom

LABELS = {"background": 0, "big": 1, "small": 2}


class _Prep:
    def to_dict(self):
        return {"orientation": "RAS", "spatial_dims": 0}


def _data(dims: int):
    from monai.data import Dataset
    from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd

    items = []
    for seed in range(2):
        img, lab = sphere_phantom((32, 32, 24), seed=seed, spacing=(1.0, 1.0, 1.5))
        items.append({"image": torch.from_numpy((img[None] + 100) / 100.0), "label": torch.from_numpy(lab[None].astype(np.int64))})
    patch = (16, 16, 16) if dims == 3 else (16, 16, 1)
    tfm = Compose([
        RandCropByPosNegLabeld(("image", "label"), "label", patch, pos=2, neg=1, num_samples=2),
        RandFlipd(("image", "label"), prob=0.5, spatial_axis=0),
    ])
    return Dataset(items, transform=tfm), items[:1]


def _config(dims: int, *extra: str):
    patch = "[16,16,16]" if dims == 3 else "[16,16]"
    return load_config(f"{dims}d", [
        "model.channels=[4,8,16]", f"data.patch_size={patch}", "data.samples_per_volume=2",
        "train.batch_size=2", "train.steps_per_epoch=2", "train.epochs=1", "train.warmup_epochs=0",
        "train.precision=fp32", "infer.sw_batch_size=1", *extra,
    ])


def _run(tmp_path, cfg, name="run", **kw):
    torch.manual_seed(123)  # model init independent of test order
    model = build_network(cfg.model, 1, len(LABELS))
    train_ds, val = _data(cfg.model.spatial_dims)
    _run.model = model
    info = ModelInfo(kwargs=network_kwargs(cfg.model, 1, len(LABELS)), labels=LABELS, input_channels=["CT"],
                     preprocessing=_Prep())
    return train(cfg, model, TrainData(train=train_ds, val=val, background=[0.0]), info, tmp_path / name,
                 torch.device("cpu"), TrainOptions(quiet=True, **kw))


@pytest.mark.parametrize("dims", [3, 2])
def test_two_iterations_checkpoint_reloads(tmp_path, dims):
    cfg = _config(dims, "model.deep_supervision=true" if dims == 3 else "model.norm=instance")
    res = _run(tmp_path, cfg)
    assert res.global_step == 2 and res.epochs_done == 1
    assert res.last_val is not None and set(res.last_val["dice"]) == {"big", "small"}
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(res.run_dir / name)  # weights_only=True inside
        assert set(ckpt) == {"format_version", "medresunet_version", "model", "state_dict", "preprocessing",
                             "labels", "input_channels", "infer", "train_state", "config"}
        assert ckpt["labels"] == LABELS and ckpt["input_channels"] == ["CT"]
        assert ckpt["train_state"]["global_step"] == 2
    ckpt = load_checkpoint(res.run_dir / "last.pt")
    again = model_from_checkpoint(ckpt)
    ref = _run.model.eval()  # the trained network itself
    shape = (1, 1, 16, 16, 16) if dims == 3 else (1, 1, 16, 16)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref(x))
    rows = list(csv.DictReader(open(res.run_dir / "log.csv")))
    assert len(rows) == 1 and rows[0]["step"] == "2" and "val_dice_big" in rows[0]
    assert float(rows[0]["steps_per_s"]) > 0 and rows[0]["gpu_mem_gb"] == ""  # figures in the log


def test_resume_matches_uninterrupted(tmp_path):
    cfg = _config(3, "train.epochs=2", "train.schedule=poly", "train.warmup_epochs=1")
    full = _run(tmp_path, cfg, "full")
    part = _run(tmp_path, cfg, "part", stop_after_epoch=1)
    assert part.global_step == 2
    resumed = _run(tmp_path, cfg, "part", resume=True)
    assert resumed.global_step == 4 and resumed.epochs_done == 2
    a = load_checkpoint(full.run_dir / "last.pt")
    b = load_checkpoint(resumed.run_dir / "last.pt")
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-6, atol=1e-7)
    assert a["train_state"]["scheduler"]["last_epoch"] == b["train_state"]["scheduler"]["last_epoch"] == 4
    rows = list(csv.DictReader(open(resumed.run_dir / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_resume_extends_epochs_and_budget(tmp_path):
    cfg = _config(3)
    first = _run(tmp_path, cfg)
    assert first.epochs_done == 1
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    res = _run(tmp_path, longer, resume=True)
    assert res.epochs_done == 2 and res.global_step == 4
    assert load_checkpoint(res.run_dir / "last.pt")["train_state"]["epochs"] == 2
    budget = _run(tmp_path, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=5)),
                  "budget", max_minutes=0.0)
    assert budget.stopped_by_budget and budget.global_step == 1 and budget.last_val is not None
    assert (budget.run_dir / "last.pt").exists() and (budget.run_dir / "best.pt").exists()
