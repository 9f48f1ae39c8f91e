"""Preprocessing / ChannelNorm: plain dict round trip and CheckpointError on bad dicts."""

from __future__ import annotations

import json

import pytest

from medresunet.data.preprocessing import ChannelNorm, Preprocessing
from medresunet.errors import CheckpointError


def _prep(**kw) -> Preprocessing:
    base = dict(orientation="RAS", target_spacing=(0.8, 0.8, 2.5),
                normalization=(ChannelNorm("ct", (-100.0, 300.0), 50.0, 80.0), ChannelNorm("zscore")),
                crop_foreground=True, patch_size=(64, 64, 32), spatial_dims=3)
    base.update(kw)
    return Preprocessing(**base)


def test_round_trip_is_plain_and_equal():
    prep = _prep()
    d = prep.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert Preprocessing.from_dict(d) == prep
    assert Preprocessing.from_dict(json.loads(json.dumps(d))) == prep
    two_d = _prep(patch_size=(128, 128), spatial_dims=2)
    assert Preprocessing.from_dict(two_d.to_dict()) == two_d


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("target_spacing"),
    lambda d: d.update(extra=1),
    lambda d: d.update(orientation="RAX"),
    lambda d: d.update(target_spacing=[1.0, -1.0, 1.0]),
    lambda d: d.update(patch_size=[64, 64]),
    lambda d: d.update(spatial_dims="3"),
    lambda d: d.update(crop_foreground="yes"),
    lambda d: d.update(normalization=[{"scheme": "ct", "clip": [0, 1], "mean": 0.0, "std": None}]),
    lambda d: d.update(normalization=[{"scheme": "minmax"}]),
    lambda d: d.update(normalization=[{"scheme": "ct", "clip": [5, 1], "mean": 0.0, "std": 1.0}]),
    lambda d: d.update(normalization="ct"),
])
def test_from_dict_rejects_bad_dicts(mutate):
    d = _prep().to_dict()
    mutate(d)
    with pytest.raises(CheckpointError):
        Preprocessing.from_dict(d)


def test_from_dict_rejects_non_dict():
    with pytest.raises(CheckpointError):
        Preprocessing.from_dict([1, 2])
