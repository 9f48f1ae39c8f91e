"""Sliding window, test-time flips and postprocessing on tiny tensors (no file IO)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medresunet.inference.postprocess import (
    keep_largest_component,
    postprocess,
    remove_small_components,
    voxel_volume_ml,
)
from medresunet.inference.sliding import sliding_window_logits, window_size
from medresunet.inference.tta import flip_combinations, predict_probabilities, tta_axes


class Threshold(torch.nn.Module):
    """Logits (background, foreground) = (-s * (x - t), s * (x - t)) from channel 0: pointwise."""

    def __init__(self, threshold: float = 0.0, scale: float = 10.0, dims: int = 3) -> None:
        super().__init__()
        self.threshold, self.scale, self.dims = threshold, scale, dims
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.dims + 2:
            raise RuntimeError(f"expected {self.dims}D windows, got {tuple(x.shape)}")
        self.calls.append(tuple(x.shape))
        d = (x[:, :1] - self.threshold) * self.scale
        return torch.cat([-d, d], dim=1)


class Position(torch.nn.Module):
    """A non-pointwise network: logit 1 = the window's mean (catches stitching mistakes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True).expand_as(x[:, :1])
        return torch.cat([torch.zeros_like(m), m], dim=1)


def _blob(shape=(20, 18, 9)) -> torch.Tensor:
    g = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    return g


def test_window_size():
    assert window_size((8, 8, 4), 3, 3) == (8, 8, 4)
    assert window_size((8, 8), 2, 3) == (8, 8, 1)
    assert window_size((8, 8), 2, 2) == (8, 8)
    with pytest.raises(ValueError):
        window_size((8, 8), 3, 3)
    with pytest.raises(ValueError):
        window_size((8, 8, 8), 3, 2)


@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_pointwise_network_is_reproduced_exactly(overlap):
    image = _blob()
    net = Threshold()
    out = sliding_window_logits(image, net, (8, 8, 4), network_dims=3, overlap=overlap,
                                sw_batch_size=3)
    assert out.shape == (1, 2, 20, 18, 9) and out.dtype == torch.float32
    assert all(c[0] <= 3 and c[2:] == (8, 8, 4) for c in net.calls)
    torch.testing.assert_close(out, net(image), atol=1e-4, rtol=1e-4)


def test_2d_network_over_3d_volume_runs_slice_by_slice():
    image = _blob((12, 10, 5))
    net = Threshold(dims=2)
    out = sliding_window_logits(image, net, (8, 8), network_dims=2, overlap=0.25, sw_batch_size=4)
    assert out.shape == (1, 2, 12, 10, 5)
    torch.testing.assert_close(out, Threshold(dims=3)(image), atol=1e-4, rtol=1e-4)
    assert all(len(c) == 4 and c[2:] == (8, 8) for c in net.calls)


def test_2d_network_over_2d_image():
    image = _blob((12, 10))
    out = sliding_window_logits(image, Threshold(dims=2), (8, 8), network_dims=2)
    torch.testing.assert_close(out, Threshold(dims=2)(image), atol=1e-4, rtol=1e-4)


def test_padding_uses_background_value_per_channel():
    # image smaller than the window: the network must see cval in the padding, per channel
    image = torch.stack([torch.full((4, 4, 2), 5.0), torch.full((4, 4, 2), -7.0)])[None]
    seen: list[torch.Tensor] = []

    def net(x):
        seen.append(x.clone())
        return x[:, :1].repeat(1, 2, 1, 1, 1)

    out = sliding_window_logits(image, net, (8, 8, 4), network_dims=3, cval=[-3.0, 11.0])
    assert out.shape == (1, 2, 4, 4, 2)
    window = seen[0][0]
    assert window.shape == (2, 8, 8, 4)
    assert window[0, 0, 0, 0] == -3.0 and window[1, 0, 0, 0] == 11.0
    assert window[0, 2:6, 2:6, 1:3].eq(5.0).all() and window[1, 2:6, 2:6, 1:3].eq(-7.0).all()
    torch.testing.assert_close(out[0, 0], torch.full((4, 4, 2), 5.0))


def test_gaussian_blending_is_a_weighted_mean():
    image = _blob((16, 16, 8))
    out = sliding_window_logits(image, Position(), (8, 8, 8), network_dims=3, overlap=0.5)
    lo, hi = image.min(), image.max()
    assert out[:, 1].min() >= lo and out[:, 1].max() <= hi
    assert out[:, 1].std() > 0  # windows differ, so the blend is not constant


def test_bf16_autocast_on_cpu():
    image = _blob((10, 10, 4))
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    out = sliding_window_logits(image, conv, (8, 8, 4), network_dims=3, precision="bf16")
    assert out.dtype == torch.float32
    with torch.no_grad():
        ref = sliding_window_logits(image, conv, (8, 8, 4), network_dims=3, precision="fp32")
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0.05)


def test_stitch_device_choices_and_validation():
    image = _blob((10, 10, 4))
    net = Threshold()
    for stitch in ("auto", "cpu", "same"):
        out = sliding_window_logits(image, net, (8, 8, 4), network_dims=3, stitch_device=stitch)
        assert out.device.type == "cpu"
    with pytest.raises(ValueError, match="stitch_device"):
        sliding_window_logits(image, net, (8, 8, 4), network_dims=3, stitch_device="gpu")
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_logits(image, net, (8, 8, 4), network_dims=3, overlap=1.0)


def test_flip_combinations():
    assert flip_combinations((2, 3)) == [(), (2,), (3,), (2, 3)]
    assert len(flip_combinations((2, 3, 4))) == 8
    assert tta_axes(3, 3) == (2, 3, 4)
    assert tta_axes(3, 2) == (2, 3)
    assert tta_axes(2, 2) == (2, 3)


def test_tta_of_flip_equivariant_network_equals_plain():
    image = _blob((6, 5, 4))
    net = Threshold()
    plain = predict_probabilities(net, image)
    flipped = predict_probabilities(net, image, (2, 3, 4))
    torch.testing.assert_close(plain, torch.softmax(net(image), 1))
    torch.testing.assert_close(flipped, plain, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(flipped.sum(1), torch.ones(1, 6, 5, 4))


def test_tta_averages_flipped_predictions():
    # a network biased to its own left half: flips average it into a symmetric result
    def net(x):
        ramp = torch.linspace(-1, 1, x.shape[2]).view(1, 1, -1, 1, 1).expand_as(x[:, :1])
        return torch.cat([torch.zeros_like(ramp), 5 * ramp], dim=1)

    image = torch.zeros(1, 1, 6, 2, 2)
    plain = predict_probabilities(net, image)
    probs = predict_probabilities(net, image, (2,))
    torch.testing.assert_close(probs, 0.5 * (plain + plain.flip(2)))
    torch.testing.assert_close(probs[0, 1], probs[0, 1].flip(0))
    assert not torch.allclose(plain[0, 1], plain[0, 1].flip(0))


def _two_blobs() -> np.ndarray:
    labels = np.zeros((20, 20, 10), np.uint8)
    labels[2:10, 2:10, 2:8] = 1      # 8*8*6 = 384 voxels
    labels[14:16, 14:16, 2:4] = 1    # 8 voxels
    labels[12:18, 2:6, 2:6] = 2      # 96 voxels
    labels[2:3, 16:17, 8:9] = 2      # 1 voxel
    return labels


def test_largest_component_per_label():
    out = keep_largest_component(_two_blobs())
    assert (out == 1).sum() == 384 and (out == 2).sum() == 96
    assert out.dtype == np.uint8
    only1 = keep_largest_component(_two_blobs(), which=[1])
    assert (only1 == 2).sum() == 97


def test_remove_small_components_in_ml():
    labels = _two_blobs()
    spacing = (1.0, 1.0, 2.0)  # 2 mm^3 voxels: 8 voxels = 0.016 mL, 1 voxel = 0.002 mL
    assert voxel_volume_ml(spacing) == pytest.approx(0.002)
    out = remove_small_components(labels, spacing, 0.02)
    assert (out == 1).sum() == 384 and (out == 2).sum() == 96
    out = remove_small_components(labels, spacing, 0.004)
    assert (out == 1).sum() == 392 and (out == 2).sum() == 96
    assert np.array_equal(remove_small_components(labels, spacing, 0.0), labels)


def test_postprocess_combination_and_noop():
    labels = _two_blobs()
    assert postprocess(labels, (1, 1, 1)) is labels
    out = postprocess(labels, (1.0, 1.0, 1.0), largest_component=True, min_component_ml=0.001)
    assert (out == 1).sum() == 384 and (out == 2).sum() == 96
