"""Checkpoint files: atomic save, safe load, clear errors, strict model rebuild."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from medresunet.errors import CheckpointError
from medresunet.training.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

KWARGS = dict(spatial_dims=2, in_channels=1, out_channels=2, channels=[4, 8])


def _payload(**model_over):
    from medresunet.networks import ResidualUNet

    kwargs = {**KWARGS, **model_over}
    torch.manual_seed(0)
    net = ResidualUNet(**kwargs)
    return {
        "format_version": FORMAT_VERSION,
        "medresunet_version": "test",
        "model": kwargs,
        "state_dict": net.state_dict(),
        "preprocessing": {},
        "labels": {"background": 0, "x": 1},
        "input_channels": ["CT"],
        "infer": {},
        "train_state": {"epoch": 1, "rng": {"torch": torch.get_rng_state(), "python": [3, [1, 2], None]}},
        "config": {},
    }, net


def test_save_load_roundtrip_and_model(tmp_path):
    payload, net = _payload()
    path = save_checkpoint(tmp_path / "run" / "last.pt", payload)
    assert path.exists() and not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    ckpt = load_checkpoint(path)
    assert ckpt["labels"] == payload["labels"]
    model = model_from_checkpoint(ckpt)
    assert not model.training
    x = torch.randn(1, 1, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


@pytest.mark.parametrize("kind", ["missing", "truncated", "empty", "garbage", "code", "not_dict",
                                  "no_version", "other_version"])
def test_load_errors_name_the_file(tmp_path, kind):
    path = tmp_path / "bad.pt"
    payload, _ = _payload()
    if kind == "truncated":
        save_checkpoint(path, payload)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "code":
        class Evil:
            def __reduce__(self):
                return (os.getcwd, ())

        torch.save({"format_version": 1, "x": Evil()}, path)
    elif kind == "not_dict":
        torch.save([1, 2], path)
    elif kind == "no_version":
        torch.save({"state_dict": {}}, path)
    elif kind == "other_version":
        torch.save({**payload, "format_version": 99}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    if kind in ("truncated", "empty", "garbage", "code"):
        assert info.value.__cause__ is not None
    if kind == "code":
        assert isinstance(info.value.__cause__, pickle.UnpicklingError)
        assert "refused" in str(info.value)
    if kind == "other_version":
        assert "99" in str(info.value)


def test_model_from_checkpoint_other_architecture():
    payload, _ = _payload()
    payload["model"] = {**KWARGS, "channels": [4, 16]}
    with pytest.raises(CheckpointError, match="shape"):
        model_from_checkpoint(payload)
    payload["model"] = {**KWARGS, "channels": [4, 8, 16]}
    with pytest.raises(CheckpointError, match="missing keys"):
        model_from_checkpoint(payload)
