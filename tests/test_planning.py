"""Tests of medresunet.planning: plans for typical fingerprints, the choice, the schedule, the YAML."""

from __future__ import annotations

import numpy as np
import pytest

from medresunet.config import load_config
from medresunet.planning import (
    DatasetFingerprint,
    Target,
    candidates,
    choose,
    enough_steps,
    make_plan,
    plan_yaml,
    topology_for,
)
from medresunet.planning import planner as planner_mod
from medresunet.training.probe import probe_candidates


def fingerprint(spacings, shapes, channels=("CT",), n_classes=3, n_val=1) -> DatasetFingerprint:
    return DatasetFingerprint(tuple(tuple(float(v) for v in s) for s in spacings),
                              tuple(tuple(int(v) for v in s) for s in shapes), channels, n_classes, n_val)


def plan_for(fp, target=None, measured=None):
    target = target or Target()
    cands = candidates(fp, target)
    index, why = choose(cands, target, measured)
    return make_plan(fp, target, cands, index, why, measured), cands, index


def pooled(strides, axis):
    return sum(s[axis] == 2 for s in strides)


def test_isotropic_ct():
    rng = np.random.default_rng(0)
    spacings = [(s, s, s) for s in rng.uniform(0.7, 0.9, 6)]
    fp = fingerprint(spacings, [(512, 512, 400)] * 6)
    plan, cands, _ = plan_for(fp)
    cfg = plan.config
    assert cfg.model.spatial_dims == 3
    assert cfg.data.target_spacing == pytest.approx(tuple(np.median(np.array(spacings), axis=0)))
    assert len(set(cfg.data.patch_size[:2])) == 1 and cfg.data.patch_size[2] < cfg.data.patch_size[0]  # aspect
    assert all(k == (3, 3, 3) for k in cfg.model.kernel_sizes)
    assert cfg.model.strides[0] == (2, 2, 2)  # isotropic: every axis pooled while it keeps >= 8 voxels
    assert all(s[0] == s[1] == 2 for s in cfg.model.strides) and pooled(cfg.model.strides, 2) >= 1
    for c in cands:  # every candidate's patch is a multiple of its total stride, pooled axes keep >= 8
        stride = c.topology.total_stride
        assert all(p % t == 0 and p // t >= 8 for p, t in zip(c.topology.patch_size, stride, strict=True))
    # on a GPU the patch grows with the memory
    small = plan_for(fp, Target("cuda", 8.0))[0].config.data.patch_size
    large = plan_for(fp, Target("cuda", 80.0))[0].config.data.patch_size
    assert np.prod(large) > np.prod(small)


def test_thick_slice_mr_keeps_the_thick_axis_coarse_and_pools_it_less():
    spacings = [(0.8, 0.8, z) for z in (4.0, 4.5, 5.0, 5.0, 5.5, 6.0)]
    fp = fingerprint(spacings, [(288, 288, 30)] * 6, channels=("T2",))
    plan, _, _ = plan_for(fp)
    cfg = plan.config
    assert cfg.model.spatial_dims == 3
    # 10th percentile of the thick axis, not its median (5.0) nor the in-plane 0.8
    assert cfg.data.target_spacing == pytest.approx((0.8, 0.8, float(np.percentile([s[2] for s in spacings], 10))))
    strides, kernels = cfg.model.strides, cfg.model.kernel_sizes
    assert pooled(strides, 2) < pooled(strides, 0) == pooled(strides, 1)
    assert kernels[0] == (3, 3, 1) and kernels[1] == (3, 3, 1)
    assert cfg.data.patch_size[0] > 4 * cfg.data.patch_size[2] / 2  # in-plane extent larger in voxels
    reasons = dict(plan.reasons)
    assert "thick" in reasons["data.target_spacing"] and "poolings per axis" in reasons["model.strides"]


def test_thin_slab_and_2d_data_plan_2d():
    slab = fingerprint([(1.0, 1.0, 1.0)] * 4, [(256, 256, 10)] * 4)
    flat = fingerprint([(0.5, 0.5, 1.0)] * 4, [(512, 512, 1)] * 4, channels=("MR",))
    for fp in (slab, flat):
        plan, cands, _ = plan_for(fp)
        cfg = plan.config
        assert cfg.model.spatial_dims == 2 and len(cfg.data.patch_size) == 2
        assert all(len(s) == 2 for s in cfg.model.strides) and cfg.train.batch_size >= 8
        assert "2D" in dict(plan.reasons)["model.spatial_dims"]
        assert all(c.spatial_dims == 2 for c in cands)


def test_topology_pooling_rule():
    topo = topology_for((20, 40, 10), (1.0, 1.0, 1.0))
    assert topo.strides == ((2, 2, 1), (1, 2, 1))  # 20 -> 10 (>= 8), 40 -> 20 -> 10; 10 never
    assert topo.patch_size == (20, 40, 10)
    thick = topology_for((64, 64, 32), (1.0, 1.0, 3.5))
    assert thick.strides[0] == (2, 2, 1) and thick.kernel_sizes[0] == (3, 3, 1)
    assert thick.strides[1] == (2, 2, 2) and thick.kernel_sizes[1] == (3, 3, 3)  # 2 mm vs 3.5 mm: within 2x
    odd = topology_for((37, 37, 37), (1.0, 1.0, 1.0))
    assert all(p % 4 == 0 for p in odd.patch_size) and odd.patch_size == (40, 40, 40)


def test_choose_takes_the_largest_candidate_that_trains_enough_steps():
    fp = fingerprint([(1.5, 1.5, 1.5)] * 4, [(96, 80, 64)] * 4)
    target = Target("cpu", None, 15.0)
    cands = candidates(fp, target)
    assert len(cands) >= 4
    limit = target.budget_s * planner_mod.TRAIN_FRACTION / planner_mod.DATA_OVERHEAD / planner_mod.MIN_STEPS
    measured = {0: 0.1 * limit, 1: 0.5 * limit, 2: 0.9 * limit, 3: 1.5 * limit}
    index, _ = choose(cands, target, measured)
    assert index == 2
    plan = make_plan(fp, target, cands, index, "test", measured)
    tc = plan.config.train
    assert plan.step_seconds == measured[2] and plan.expected_steps >= planner_mod.MIN_STEPS
    assert abs(tc.epochs * tc.steps_per_epoch - plan.expected_steps) <= tc.steps_per_epoch
    assert tc.fit_budget and tc.val_mode == "patch"
    # too slow everywhere: the smallest, or a larger one when it costs about as much (fixed costs)
    assert choose(cands, target, {0: 10 * limit, 1: 20 * limit})[0] == 0
    assert choose(cands, target, {0: 10 * limit, 1: 12 * limit, 2: 20 * limit})[0] == 1
    # the probe stops at the first candidate that trains too few steps
    calls = []

    def measure(i):
        calls.append(i)
        return measured.get(i, 9.0 * limit)

    got = probe_candidates(measure, len(cands), lambda s, s0: enough_steps(target, s, s0), max_seconds=60)
    assert calls == [0, 1, 2, 3] and set(got) == {0, 1, 2, 3}


def test_validation_cadence_stays_within_its_share_of_the_budget():
    fp = fingerprint([(1.5, 1.5, 1.5)] * 4, [(96, 80, 64)] * 4, n_val=40)
    target = Target("cpu", None, 10.0)
    cands = candidates(fp, target)
    plan = make_plan(fp, target, cands, 0, "test", {0: 0.2})
    tc = plan.config.train
    n_vals = tc.epochs // tc.val_interval
    val_seconds = n_vals * 40 * 2 * 0.2 * 0.5  # FORWARD_SHARE of a step per crop (2 labels per case)
    assert val_seconds <= planner_mod.VAL_FRACTION * target.budget_s + 1e-6
    assert tc.val_interval > 1


def test_plan_is_a_config_file(tmp_path):
    fp = fingerprint([(0.9, 0.9, 5.0)] * 3, [(160, 134, 20)] * 3, channels=("T2",))
    plan, _, _ = plan_for(fp, Target("cpu", None, 5.0), {0: 0.05})
    path = tmp_path / "plan.yaml"
    path.write_text(plan_yaml(plan), encoding="utf-8")
    assert load_config(path) == plan.config
    assert "# Why each value" in path.read_text() and "model.strides" in path.read_text()
    # --set overrides on top of a plan
    assert load_config(path, ["train.lr=0.01"]).train.lr == 0.01


def test_bad_fingerprint_is_refused():
    with pytest.raises(ValueError, match="one spacing and one shape per case"):
        DatasetFingerprint(((1.0, 1.0, 1.0),), (), ("CT",), 2)


def test_the_probe_times_the_open_step_modes_and_the_plan_takes_the_fastest(monkeypatch):
    """auto precision on a bf16 CPU and an open layout: four modes timed, the fastest planned."""
    import torch

    from medresunet.training import autoplan, probe
    from medresunet.training.probe import StepMode

    cpu = torch.device("cpu")
    monkeypatch.setattr(probe, "cpu_supports_bf16", lambda: True)
    four = probe.step_modes("auto", None, cpu)
    assert set(four) == {StepMode(p, c) for p in ("bf16", "fp32") for c in (True, False)}
    assert probe.step_modes("bf16", False, cpu) == (StepMode("bf16", False),)  # explicit values stay
    assert probe.step_modes("fp16", True, cpu) == (StepMode("fp32", True),)  # fp16 is CUDA-only
    monkeypatch.setattr(probe, "cpu_supports_bf16", lambda: False)
    assert {m.precision for m in probe.step_modes("auto", None, cpu)} == {"fp32"}  # emulated bf16: never

    timed = []

    def fake_step(kwargs, patch, batch, device, precision, channels_last=None):
        timed.append((precision, channels_last))
        return {("bf16", True): 0.6, ("bf16", False): 0.2, ("fp32", True): 0.3, ("fp32", False): 0.35}[
            (precision, channels_last)]

    monkeypatch.setattr(probe, "measure_step_seconds", fake_step)
    best, seconds = probe.fastest_mode({}, (8, 8, 8), 2, cpu, four)
    assert best == StepMode("bf16", False) and len(timed) == 4 and seconds[StepMode("fp32", True)] == 0.3

    assert autoplan.mode_choice({StepMode("fp32", True): 0.2}) is None  # one mode: nothing was chosen
    values, why = autoplan.mode_choice(seconds)
    assert values == {"precision": "bf16", "channels_last": False}
    assert "0.200" in why and "bf16 channels-last 0.600" in why
    fp = fingerprint([(1.5, 1.5, 1.5)] * 4, [(96, 80, 64)] * 4)
    target = Target("cpu", None, 15.0)
    cands = candidates(fp, target)
    tc = make_plan(fp, target, cands, 0, "test", {0: 0.3}, (values, why)).config.train
    assert (tc.precision, tc.channels_last) == ("bf16", False)
    tc = make_plan(fp, target, cands, 0, "test", {0: 0.3}).config.train
    assert (tc.precision, tc.channels_last) == ("auto", None)


def test_probe_budget_decides_the_mode_on_the_smallest_candidate(monkeypatch):
    """The smallest candidate is timed in every open mode, the larger ones only in the fastest."""
    import math

    import torch

    from medresunet.training import autoplan, probe
    from medresunet.training.probe import StepMode

    calls = []

    def fake_step(kwargs, patch, batch, device, precision, steps=2, warmup=1, channels_last=None):
        calls.append((tuple(patch), precision, channels_last))
        return 1e-7 * math.prod(patch) * (0.5 if (precision, channels_last) == ("fp32", False) else 1.0)

    monkeypatch.setattr(probe, "measure_step_seconds", fake_step)
    monkeypatch.setattr(probe, "measure_data_seconds", lambda *args, **kwargs: 0.001)
    fp = fingerprint([(1.5, 1.5, 1.5)] * 4, [(96, 80, 64)] * 4)
    target = Target("cpu", None, 15.0)
    cands = candidates(fp, target)
    four = tuple(StepMode(p, c) for p in ("bf16", "fp32") for c in (True, False))
    measured, modes = autoplan.probe_budget(fp, cands, target, torch.device("cpu"), four)
    smallest = cands[0].topology.patch_size
    assert sorted(c[1:] for c in calls if c[0] == smallest) == sorted((m.precision, m.channels_last) for m in four)
    assert {c[1:] for c in calls if c[0] != smallest} == {("fp32", False)} and len(measured) == len(cands)
    assert measured[0] == modes[StepMode("fp32", False)] + 0.001 and set(modes) == set(four)
    values, _ = autoplan.mode_choice(modes)
    assert values == {"precision": "fp32", "channels_last": False}
