"""medresunet.config: presets, --set overrides, and errors that name the file and key."""

from __future__ import annotations

import typing

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


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # e.g. medresunet-demo --output demo
    assert resolve_config_path("demo") == PRESETS_DIR / "demo.yaml"
    assert load_config("demo").model.channels == (8, 16, 32, 64)


def test_shipped_presets_equal_the_readable_copies():
    """medresunet/presets/ ships in the wheel; configs/ is the copy a reader opens: the same bytes."""
    from pathlib import Path

    copies = Path(__file__).resolve().parents[1] / "configs"
    assert PRESETS_DIR.parent.name == "medresunet" and PRESETS_DIR.name == "presets"
    assert sorted(p.name for p in copies.glob("*.yaml")) == sorted(p.name for p in PRESETS_DIR.glob("*.yaml"))
    for shipped in PRESETS_DIR.glob("*.yaml"):
        assert (copies / shipped.name).read_bytes() == shipped.read_bytes(), (
            f"configs/{shipped.name} differs from medresunet/presets/{shipped.name}: "
            "edit the preset in medresunet/presets/ and copy it to configs/")


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


# every key of every section with a value that must be refused when the file is read
BAD_VALUES = {
    "model.spatial_dims": 4, "model.channels": [8], "model.num_res_blocks": 0, "model.norm": "layer",
    "model.act": "tanh", "model.dropout": 1.0, "model.upsample": "cubic", "model.downsample": "avg",
    "model.bias": "yes", "model.deep_supervision": 1, "model.strides": [[2, 2, 3]] * 4,
    "model.kernel_sizes": [[3, 3, 5]] * 5,
    "data.target_spacing": [1.0, 0.0, 1.0], "data.orientation": "RAX", "data.normalization": "minmax",
    "data.ct_window": [100, -100], "data.clip_percentiles": [99, 1], "data.crop_foreground": "no",
    "data.patch_size": [32, 0, 32], "data.samples_per_volume": 0, "data.pos_fraction": 1.5,
    "data.sampling": "uniform",
    "data.cache": "ram", "data.cache_dir": 3, "data.num_workers": -1, "data.augment": [1],
    "data.augment.enabled": 2, "data.augment.flip_prob": 1.5, "data.augment.rotate_prob": -0.1,
    "data.augment.rotate_deg": 400.0, "data.augment.scale_prob": 2, "data.augment.scale_range": 1.5,
    "data.augment.intensity_prob": -1, "data.augment.intensity_scale": -0.1,
    "data.augment.intensity_shift": -0.2, "data.augment.gamma_prob": 7, "data.augment.gamma_range": [0.0, 1.5],
    "data.augment.noise_prob": 1.01, "data.augment.noise_std": -0.5,
    "train.epochs": 0, "train.steps_per_epoch": 0, "train.batch_size": 0, "train.lr": -1.0,
    "train.weight_decay": -1e-5, "train.warmup_epochs": -1, "train.schedule": "step",
    "train.precision": "fp8", "train.channels_last": "on", "train.grad_clip": -1.0, "train.val_interval": 0,
    "train.val_overlap": 1.0, "train.val_mode": "sometimes", "train.fit_budget": "yes", "train.seed": 1.5, "train.folds": 0, "train.fold": 7,
    "infer.overlap": -0.5, "infer.sw_batch_size": 0, "infer.tta": "no", "infer.precision": "int4",
    "infer.largest_component": "yes", "infer.min_component_ml": -1.0,
}


def _all_keys(cls=Config, prefix=""):
    import dataclasses

    keys = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += [key] if prefix else []
            keys += _all_keys(tp, f"{key}.")
        elif prefix:
            keys.append(key)
    return keys


def test_every_key_has_a_refused_value():
    assert sorted(_all_keys()) == sorted(BAD_VALUES)


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_every_key_validated_when_read(tmp_path, key):
    """The message names the file, the key, what was expected and what was found."""
    import yaml

    raw: dict = {}
    node = raw
    *sections, name = key.split(".")
    for part in sections:
        node = node.setdefault(part, {})
    node[name] = BAD_VALUES[key]
    path = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and key in msg and "expected" in msg, msg
    found = BAD_VALUES[key]
    assert any(repr(v) in msg or str(v) in msg for v in (found, *(found if isinstance(found, list) else ()))), msg


def test_orientation_codes():
    for good in ("RAS", "LPS", "PIL", "SAR"):
        assert config_from_dict({"data": {"orientation": good}}).data.orientation == good
    for bad in ("RAR", "ras", "RA", "RASS", "XYZ"):
        with pytest.raises(ConfigError, match="data.orientation"):
            config_from_dict({"data": {"orientation": bad}})
