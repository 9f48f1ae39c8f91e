"""medresunet.config: presets, --set overrides, and errors that name the file and key."""

from __future__ import annotations

import pytest

from medresunet.config import (
    PRESETS_DIR,
    Config,
    config_from_dict,
    config_to_dict,
    load_config,
    resolve_config_path,
)
from medresunet.errors import ConfigError

PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def test_presets_exist():
    assert {"3d", "2d", "article", "demo"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_roundtrips(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert len(cfg.data.patch_size) == cfg.model.spatial_dims
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert load_config(resolve_config_path(name)) == cfg


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, "train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "train.epochz" in msg


def test_unknown_nested_key_and_section(tmp_path):
    path = _write(tmp_path, "data:\n  augment:\n    flip: 0.5\n")
    with pytest.raises(ConfigError, match=r"data\.augment\.flip"):
        load_config(path)
    path = _write(tmp_path, "trian:\n  epochs: 3\n", "b.yaml")
    with pytest.raises(ConfigError, match="trian"):
        load_config(path)


@pytest.mark.parametrize("text,key", [
    ("train:\n  epochs: ten\n", "train.epochs"),
    ("train:\n  lr: [1]\n", "train.lr"),
    ("model:\n  deep_supervision: 1\n", "model.deep_supervision"),
    ("model:\n  channels: 16\n", "model.channels"),
    ("data:\n  ct_window: [1, 2, 3]\n", "data.ct_window"),
    ("train:\n  schedule: linear\n", "train.schedule"),
])
def test_wrong_type_or_value_names_key(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value) and str(path) in str(info.value)


def test_set_overrides():
    cfg = load_config("3d", ["train.lr=3.0e-4", "data.patch_size=[32,32,16]", "model.channels=[4,8,16]",
                             "train.steps_per_epoch=2", "data.target_spacing=null"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.patch_size == (32, 32, 16)
    assert cfg.model.channels == (4, 8, 16)
    assert cfg.train.steps_per_epoch == 2
    assert cfg.data.target_spacing is None


def test_set_float_without_dot():
    # YAML 1.1 reads 3e-4 (no dot) as a string; the config accepts it as a number
    assert load_config("3d", ["train.lr=3e-4"]).train.lr == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="train.lr"):
        load_config("3d", ["train.lr=fast"])


@pytest.mark.parametrize("override,match", [
    ("train.lr", "section.key=value"),
    ("lr=3", "section.key=value"),
    ("train.nope=3", "train.nope"),
    ("train.epochs=abc", "train.epochs"),
    ("data.patch_size=[32,32]", "patch_size"),  # a 3D model needs three sizes
])
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("3d", [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="preset"):
        load_config("no_such_preset")
    path = _write(tmp_path, "train: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(path)
    path = _write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == Config()
