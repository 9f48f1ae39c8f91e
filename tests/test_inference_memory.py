"""The out-of-memory fallback, on the CPU: errors injected where inference really allocates.

CUDA's ``OutOfMemoryError`` is raised at the stitching buffer's and the flip accumulation's
allocation (``memory._new_array``, under :func:`medresunet.inference.memory.allocate`) and in
the forward pass (a network that fails); the fallback code is the same on every device. The
tests check the order of the fallback, that the retry runs after the handler has been left
(no exception being handled, the failed attempt's arrays already freed), that the choice
holds for the next scans, and that the labels equal an unconstrained run's.
"""

from __future__ import annotations

import sys
import weakref

import numpy as np
import pytest
import torch

from medresunet.inference import memory as mem
from medresunet.inference.predictor import Predictor
from medresunet.inference.sliding import sliding_window_logits
from medresunet.inference.tta import predict_probabilities
from tests.synthetic import make_affine, write_nifti
from tests.test_inference_predictor import checkpoint, preprocessing, structure

#: Logit scale of the half-precision test's network: at 5 the fp16 labels differ from fp32 on
#: 2-4 of 10920 voxels (>= 99.96 %); an untrained scale of 1 sits at 99.86 % with flips.
MARGIN = 5.0


def _oom(where: str) -> torch.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected: {where})")


class Watch:
    """Records every array of an attempt and checks, when the next attempt starts, that the
    previous one's are gone and that no exception is being handled."""

    def __init__(self, memory: mem.OomFallback) -> None:
        self.memory = memory
        self.refs: list[weakref.ref] = []
        self.attempt = 0
        self.retries_checked = 0

    def seen(self, tensor: torch.Tensor) -> None:
        self.refs.append(weakref.ref(tensor))

    def enter(self) -> None:
        """Called at every allocation and forward pass."""
        attempt = len(self.memory.events)
        if attempt != self.attempt:  # the first call of a retry
            assert sys.exc_info() == (None, None, None), "the retry runs inside the except block"
            alive = [r for r in self.refs if r() is not None]
            assert not alive, f"{len(alive)} array(s) of the failed attempt are still alive"
            self.refs.clear()
            self.attempt = attempt
            self.retries_checked += 1


class FailingNet(torch.nn.Module):
    """A real network whose forward pass runs out of memory when ``fail(batch, call)``."""

    def __init__(self, net: torch.nn.Module, fail=lambda n, call: False) -> None:
        super().__init__()
        self.net, self.fail = net, fail
        self.batches: list[int] = []
        self.watch: Watch | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.watch is not None:
            self.watch.enter()
        self.batches.append(int(x.shape[0]))
        out = self.net(x)
        if self.watch is not None:
            self.watch.seen(out)
        if self.fail(int(x.shape[0]), len(self.batches)):
            raise _oom("forward pass")
        return out


def _network(k: int = 3, margin: float = 1.0) -> torch.nn.Module:
    """Small and cheap, but not pointwise and normalised per window: stitching shows.

    ``margin`` scales the logits: an untrained network's classes sit near a tie everywhere,
    a trained one's only at the boundaries.
    """
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.InstanceNorm3d(6),
                              torch.nn.ReLU(), torch.nn.Conv3d(6, k, 3, padding=1)).eval()
    with torch.no_grad():
        net[3].weight.mul_(margin)
        net[3].bias.mul_(margin)
    return net


def _scan(tmp_path, name="scan", shape=(24, 20, 12), seed=0):
    g = np.random.default_rng(seed)
    image = np.where(structure(shape), 100.0, 0.0) + g.normal(0, 30, shape)
    return write_nifti(tmp_path / f"{name}.nii.gz", image.astype(np.float32), make_affine("oblique", (1.0, 1.0, 1.5)))


def _predictor(net, tta=False, device="cpu", **kw) -> Predictor:
    ckpt = checkpoint(preprocessing())
    ckpt["labels"] = {"background": 0, "a": 1, "b": 2}
    return Predictor(ckpt, device=device, model=net, tta=tta, **kw)


def _inject_allocation(monkeypatch, watch: Watch, fail) -> list[str]:
    """OOM at ``allocate`` when ``fail(what, n_calls_of_what)``; returns the allocation log."""
    real = mem._new_array
    calls: list[str] = []

    def new_array(shape, dtype, device, what):
        watch.enter()
        calls.append(what)
        if fail(what, calls.count(what)):
            raise _oom(what)
        out = real(shape, dtype, device, what)
        watch.seen(out)
        return out

    monkeypatch.setattr(mem, "_new_array", new_array)
    return calls


def test_ladder_order_and_memory():
    state = mem.OomFallback(sw_batch_size=4)
    plan = state.plan(1000)
    assert plan == mem.MemoryPlan(4, False)
    plan = state.next_plan(plan, mem.FORWARD, 1000)
    assert plan == mem.MemoryPlan(2, False) and state.sw_batch_size == 2
    plan = state.next_plan(plan, mem.BUFFER, 1000)  # a smaller batch frees nothing for the buffer
    assert plan == mem.MemoryPlan(2, True)
    assert state.plan(1000).on_host and state.plan(5000).on_host and not state.plan(999).on_host
    assert state.next_plan(plan, mem.FORWARD, 1000) == mem.MemoryPlan(1, True)
    assert state.next_plan(mem.MemoryPlan(1, True), mem.FORWARD, 1000) is None
    assert mem.OomFallback(enabled=False).next_plan(mem.MemoryPlan(2, False), mem.FORWARD, 1) is None
    # a forward OOM at one window moves the buffer off the device, freeing room for the windows
    assert mem.OomFallback(sw_batch_size=1).next_plan(mem.MemoryPlan(1, False), mem.FORWARD, 9) \
        == mem.MemoryPlan(1, True)


def test_out_of_memory_detection_and_dtype_choice():
    assert mem.is_out_of_memory(_oom("x"))
    assert mem.is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not mem.is_out_of_memory(RuntimeError("shape mismatch"))
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    big = mem.HALF_STITCH_ELEMENTS
    assert mem.stitch_dtype("auto", big, cuda) == torch.float16
    assert mem.stitch_dtype("auto", big - 1, cuda) == torch.float32
    assert mem.stitch_dtype("auto", big, cpu) == torch.float32
    assert mem.stitch_dtype("fp16", 1, cpu) == torch.float16
    with pytest.raises(ValueError, match="stitch_dtype"):
        mem.stitch_dtype("half", 1, cpu)


def test_non_oom_errors_are_not_retried():
    state = mem.OomFallback()
    calls = []

    def attempt(plan):
        calls.append(plan)
        raise RuntimeError("a bug, not memory")

    with pytest.raises(RuntimeError, match="a bug"):
        mem.run_with_fallback(attempt, state, 10, "cpu")
    assert len(calls) == 1 and not state.events


@pytest.mark.parametrize("stitch", ["auto", "same"])
def test_sliding_window_forward_oom_halves_the_batch(stitch):
    image = torch.randn(1, 1, 20, 18, 9, generator=torch.Generator().manual_seed(0))
    net = _network(2)
    with torch.inference_mode():
        ref = sliding_window_logits(image, net, (8, 8, 4), network_dims=3, sw_batch_size=4)
    failing = FailingNet(net, fail=lambda n, call: n > 1)
    if stitch == "same":  # no fallback: the error reaches the caller
        with pytest.raises(torch.OutOfMemoryError):
            sliding_window_logits(image, failing, (8, 8, 4), network_dims=3, sw_batch_size=4,
                                  stitch_device=stitch)
        return
    state = mem.OomFallback(sw_batch_size=4)
    failing.watch = Watch(state)
    out = sliding_window_logits(image, failing, (8, 8, 4), network_dims=3, sw_batch_size=4,
                                memory=state)
    assert failing.batches[:3] == [4, 2, 1] and set(failing.batches[3:]) == {1}
    assert state.sw_batch_size == 1 and len(state.events) == 2 and failing.watch.retries_checked == 2
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("where", [mem.FORWARD, mem.BUFFER, mem.ACCUMULATE])
def test_predictor_falls_back_outside_the_handler_with_equal_labels(tmp_path, monkeypatch, where):
    path = _scan(tmp_path)
    plain = _predictor(_network(), tta=True)
    want = plain.predict([path])
    assert len(np.unique(want)) >= 2  # the labels say something

    net = FailingNet(_network(), fail=lambda n, call: where == mem.FORWARD and call == 3)
    predictor = _predictor(net, tta=True)
    watch = net.watch = Watch(predictor.memory)
    calls = _inject_allocation(monkeypatch, watch, lambda what, n: what == where != mem.FORWARD and n == 1)
    result = predictor.predict_loaded(predictor.load([path]))

    assert watch.retries_checked == 1 and len(predictor.memory.events) == 1
    assert where in predictor.memory.events[0]
    if where == mem.FORWARD:  # first a smaller window batch
        assert result.memory["sw_batch_size"] == 1 and result.memory["stitching"] == "device"
        assert net.batches[:3] == [2, 2, 2] and set(net.batches[3:]) == {1}
        assert not predictor.memory.plan(10**9).on_host
    else:  # the buffer or the accumulation: a smaller batch would not help, the host does
        assert result.memory["sw_batch_size"] == 2 and result.memory["stitching"] == "host"
        assert predictor.memory.plan(10**9).on_host
        assert mem.ACCUMULATE in calls
    assert result.memory["fallbacks"] == predictor.memory.events
    np.testing.assert_array_equal(result.labels, want)


def test_the_choice_holds_for_the_next_scans(tmp_path, monkeypatch):
    big, small = _scan(tmp_path, "big"), _scan(tmp_path, "small", shape=(16, 16, 8), seed=1)
    net = FailingNet(_network(), fail=lambda n, call: n > 1)
    predictor = _predictor(net)
    watch = net.watch = Watch(predictor.memory)
    _inject_allocation(monkeypatch, watch, lambda what, n: what == mem.BUFFER and n == 3)
    first = predictor.predict_loaded(predictor.load([big]))
    assert len(predictor.memory.events) == 2  # forward OOM -> batch 1; buffer OOM -> the host
    assert first.memory["sw_batch_size"] == 1 and first.memory["stitching"] == "host"
    net.batches.clear()
    again = predictor.predict_loaded(predictor.load([big]))
    other = predictor.predict_loaded(predictor.load([small]))
    assert len(predictor.memory.events) == 2 and set(net.batches) == {1}  # no new failure
    assert again.memory == {**first.memory, "fallbacks": []}
    assert other.memory["stitching"] == "device"  # a smaller scan tries the device again
    np.testing.assert_array_equal(first.labels, _predictor(_network()).predict([big]))


@pytest.mark.parametrize("tta", [False, True])
def test_half_precision_stitching_labels_agree(tmp_path, tta):
    path = _scan(tmp_path, shape=(30, 26, 14))
    runs = {}
    for dtype in ("fp32", "fp16"):
        predictor = _predictor(_network(margin=MARGIN), tta=tta, stitch_dtype=dtype)
        runs[dtype] = predictor.predict_loaded(predictor.load([path]))
    full, half = runs["fp32"], runs["fp16"]
    assert half.memory["stitch_dtype"] == "float16" and full.memory["stitch_dtype"] == "float32"
    agree = float((half.labels == full.labels).mean())
    assert agree >= 0.999, agree
    assert half.labels.dtype == np.uint8


def test_flip_accumulation_is_one_array_in_the_buffer_dtype():
    image = torch.randn(1, 1, 6, 5, 4, generator=torch.Generator().manual_seed(1))

    def net(x):
        return torch.cat([x, -x, 0.5 * x.flip(2)], dim=1).to(torch.float16)

    sizes = []
    real = mem._new_array

    def new_array(shape, dtype, device, what):
        sizes.append((what, dtype))
        return real(shape, dtype, device, what)

    mp = pytest.MonkeyPatch()
    mp.setattr(mem, "_new_array", new_array)
    try:
        probs = predict_probabilities(net, image, (2, 3))
    finally:
        mp.undo()
    assert sizes == [(mem.ACCUMULATE, torch.float16)] and probs.dtype == torch.float16
    ref = predict_probabilities(lambda x: net(x).float(), image, (2, 3))
    torch.testing.assert_close(probs.float(), ref, atol=2e-3, rtol=0)
