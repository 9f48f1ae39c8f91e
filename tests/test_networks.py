"""Tests of medresunet.networks: topology, shapes, options, validation, precision."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medresunet.config import load_config
from medresunet.networks import ResidualBlock, ResidualUNet, build_network, network_kwargs
from medresunet.networks.blocks import group_count, make_norm

PRESETS = ("3d", "2d", "article", "demo")


def small_net(spatial_dims: int = 3, **kwargs) -> ResidualUNet:
    kwargs.setdefault("channels", [4, 8, 16])
    return ResidualUNet(spatial_dims, kwargs.pop("in_channels", 1), kwargs.pop("out_channels", 2), **kwargs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- topology


def test_article_preset_parameter_count_by_hand():
    """configs/article.yaml is the article's network: count its parameters by hand."""
    n_in, n_classes = 1, 3

    def conv3(c_in, c_out):  # 3x3 conv with bias
        return 9 * c_in * c_out + c_out

    def conv1(c_in, c_out):  # 1x1 conv with bias
        return c_in * c_out + c_out

    def res_block(c_in, c_out):  # conv-act-conv (+ 1x1 projection where channels change)
        return conv3(c_in, c_out) + conv3(c_out, c_out) + (conv1(c_in, c_out) if c_in != c_out else 0)

    expected = (
        res_block(n_in, 64)           # encoder level 0: 640 + 36928 + 128
        + res_block(64, 128)          # after 2x2 max-pool: 73856 + 147584 + 8320
        + res_block(128, 256)         # after 2x2 max-pool, bottleneck: 295168 + 590080 + 33024
        + res_block(256 + 128, 128)   # bilinear x2 + concat: 442496 + 147584 + 49280
        + res_block(128 + 64, 64)     # bilinear x2 + concat: 110656 + 36928 + 12352
        + conv1(64, n_classes)        # 1x1 head (softmax outside): 195
    )
    assert expected == 1985219
    cfg = load_config("article").model
    model = build_network(cfg, n_in, n_classes)
    assert n_params(model) == expected
    # The layer list itself: three encoder levels, two max-pools, bilinear upsampling.
    assert [type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__] == []
    assert model.total_stride == (4, 4)
    assert len(model.pools) == 2 and all(isinstance(p, torch.nn.MaxPool2d) for p in model.pools)
    assert all(u.mode == "bilinear" and u.align_corners is False for u in model.upsamples)
    assert [len(stage) for stage in model.encoder] == [1, 1, 1]
    assert [b.conv1.out_channels for b in (*(s[0] for s in model.encoder), *model.decoder)] == [
        64, 128, 256, 64, 128,
    ]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_output_shapes(preset):
    model = build_network(load_config(preset).model, 1, 3).eval()
    size = (40, 36, 24) if model.spatial_dims == 3 else (64, 60)
    with torch.no_grad():
        out = model(torch.randn(1, 1, *size))
    assert out.shape == (1, 3, *size)


@pytest.mark.parametrize(
    "spatial_dims, size",
    [(3, (37, 29, 19)), (3, (1, 2, 3)), (3, (1, 1, 1)), (2, (37, 29)), (2, (1, 5))],
)
def test_odd_sizes_give_the_input_size(spatial_dims, size):
    model = small_net(spatial_dims, channels=[2, 4, 8, 8]).train()  # train: norms see batch stats
    out = model(torch.randn(1, 1, *size))
    assert out.shape == (1, 2, *size)
    assert model.total_stride == (8,) * spatial_dims
    assert all(p % 8 == 0 for p in model.padded_shape(size))


def test_padding_does_not_change_the_unpadded_region():
    """Zero padding at the end only: an input already a multiple of the stride is untouched."""
    model = small_net(3, norm="none").eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert model.padded_shape((8, 8, 8)) == (8, 8, 8)
    assert model.padded_shape((9, 8, 3)) == (12, 8, 4)


def test_padding_takes_the_background_value():
    """Padding remains for an odd input: it takes each channel's background (its minimum), not 0."""
    model = small_net(3, in_channels=2, norm="none").eval()
    torch.manual_seed(3)
    x = torch.randn(2, 2, 9, 8, 7)
    x[:, 0] -= 4.0  # a z-scored background lies far below 0 (mean tissue)
    x[1, 1] += 6.0
    with torch.no_grad():
        out = model(x)
        bg = x.amin(dim=(2, 3, 4), keepdim=True)
        padded = bg.expand(2, 2, *model.padded_shape((9, 8, 7))).clone()
        padded[:, :, :9, :8, :7] = x
        want = model(padded)[:, :, :9, :8, :7]
        zeros = model(torch.nn.functional.pad(x, [0, 1, 0, 0, 0, 3]))[:, :, :9, :8, :7]
    torch.testing.assert_close(out, want)
    assert not torch.allclose(out, zeros, atol=1e-4)


def test_stride_is_one_function_and_patches_must_fit(tmp_path):
    from medresunet.config import load_config
    from medresunet.errors import ConfigError
    from medresunet.networks.stride import total_stride

    assert total_stride([(2, 2, 2)] * 4, 3) == (16, 16, 16) and total_stride([(2, 1), (2, 2)], 2) == (4, 2)
    model = small_net(3, channels=[2, 4, 8, 8], strides=[2, 2, (2, 2, 1)])
    assert model.total_stride == total_stride(model.strides, 3) == (8, 8, 4)
    (tmp_path / "c.yaml").write_text("data:\n  patch_size: [96, 96, 40]\n")  # 3d preset: stride 16
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    msg = str(err.value)
    assert str(tmp_path / "c.yaml") in msg and "data.patch_size" in msg and "[16, 16, 16]" in msg
    assert "[96, 96, 40]" in msg and "[96, 96, 48]" in msg
    assert load_config("3d", ["model.channels=[4,8,16]", "data.patch_size=[20,24,8]"]).data.patch_size == (20, 24, 8)
    with pytest.raises(ConfigError, match="data.patch_size"):
        load_config("2d", ["data.patch_size=[100,100]"])
    anisotropic = ["model.channels=[4,8,16]", "model.strides=[[2,2,1],[2,2,1]]"]
    assert load_config("3d", [*anisotropic, "data.patch_size=[32,32,5]"]).data.patch_size == (32, 32, 5)
    with pytest.raises(ConfigError, match=r"\[4, 4, 1\]"):
        load_config("3d", [*anisotropic, "data.patch_size=[30,32,5]"])


def test_deep_supervision_shapes():
    model = small_net(3, channels=[2, 4, 8, 8], deep_supervision=True, out_channels=3)
    x = torch.randn(2, 1, 17, 16, 9)
    outs = model.train()(x)
    assert isinstance(outs, tuple) and len(outs) == 3
    assert [tuple(o.shape) for o in outs] == [
        (2, 3, 17, 16, 9),
        (2, 3, 9, 8, 5),
        (2, 3, 5, 4, 3),
    ]
    with torch.no_grad():
        out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 17, 16, 9)
    torch.testing.assert_close(out, outs[0].detach())  # instance norm: same in both modes


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
@pytest.mark.parametrize("act", ["relu", "leakyrelu", "prelu", "gelu"])
def test_each_norm_and_act_builds_and_runs(norm, act):
    model = small_net(2, channels=[6, 12], norm=norm, act=act, dropout=0.1)
    out = model.train()(torch.randn(2, 1, 9, 7))
    assert out.shape == (2, 2, 9, 7) and torch.isfinite(out).all()
    norm_types = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}
    expected = {"instance": {"GroupNorm"}, "batch": {"BatchNorm2d"}, "group": {"GroupNorm"}}
    assert norm_types == expected.get(norm, set())
    if norm in ("instance", "group"):
        groups = {(m.num_groups, m.num_channels) for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
        assert groups == ({(6, 6), (12, 12)} if norm == "instance" else {(6, 6), (6, 12)})
    conv_biases = {m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert conv_biases == ({True} if norm == "none" else {True, False})  # heads keep their bias


@pytest.mark.parametrize("upsample", ["transpose", "linear", "nearest"])
@pytest.mark.parametrize("downsample", ["maxpool", "conv"])
def test_up_and_downsample_options(upsample, downsample):
    model = small_net(3, upsample=upsample, downsample=downsample, num_res_blocks=[1, 2, 1])
    assert (len(model.pools) == 0) == (downsample == "conv")
    out = model.train()(torch.randn(1, 1, 10, 7, 5))
    assert out.shape == (1, 2, 10, 7, 5)


def test_residual_block_shortcuts():
    same = ResidualBlock(3, 4, 4)
    assert isinstance(same.shortcut, torch.nn.Identity)
    strided = ResidualBlock(3, 4, 4, stride=2, norm="instance")
    assert [type(m).__name__ for m in strided.shortcut] == ["Conv3d", "GroupNorm"]
    assert strided(torch.randn(1, 4, 6, 6, 6)).shape == (1, 4, 3, 3, 3)
    projected = ResidualBlock(2, 3, 5, norm="none")
    assert [type(m).__name__ for m in projected.shortcut] == ["Conv2d"]
    assert projected.shortcut[0].bias is not None


def test_instance_norm_is_instance_normalisation():
    layer = make_norm("instance", 3, 4)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.uniform_(-1.0, 1.0)
        x = torch.randn(2, 4, 5, 6, 3) * 3 + 1
        ref = torch.nn.functional.instance_norm(x, weight=layer.weight, bias=layer.bias, eps=1e-5)
        torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.eval()(x), ref, rtol=1e-4, atol=1e-5)


def test_group_count():
    assert [group_count(c) for c in (1, 4, 6, 8, 12, 16, 7)] == [1, 4, 6, 8, 6, 8, 7]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "change, argument",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"channels": [8]}, "channels"),
        ({"channels": [8, 0]}, "channels"),
        ({"channels": [8, -4, 16]}, "channels"),
        ({"num_res_blocks": [1, 1]}, "num_res_blocks"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"norm": "layer"}, "norm"),
        ({"act": "tanh"}, "act"),
        ({"upsample": "pixelshuffle"}, "upsample"),
        ({"downsample": "avgpool"}, "downsample"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": 0}, "out_channels"),
    ],
)
def test_bad_hyper_parameters_raise_value_error_naming_the_argument(change, argument):
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16]}
    kwargs.update(change)
    with pytest.raises(ValueError, match=rf"\b{argument}\b.*expected.*got") as info:
        ResidualUNet(**kwargs)
    assert repr(change[argument]) in str(info.value)


def test_wrong_input_rank_is_a_value_error():
    with pytest.raises(ValueError, match="spatial axes"):
        small_net(3)(torch.randn(1, 1, 8, 8))


# --------------------------------------------------------------------------- training & speed


def test_gradients_flow_to_every_parameter():
    model = small_net(3, deep_supervision=True).train()
    outs = model(torch.randn(2, 1, 8, 9, 7))
    sum(o.float().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("upsample", ["transpose", "linear"])
def test_bf16_autocast_on_cpu(spatial_dims, upsample):
    model = small_net(spatial_dims, upsample=upsample).train()
    x = torch.randn(1, 1, *((9, 10, 7) if spatial_dims == 3 else (17, 10)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (1, 2, *x.shape[2:])
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().mean().backward()


def test_bf16_autocast_pools_in_bf16():
    """CPU autocast would run max_pool3d in fp32; the network pools in the input's dtype."""
    model = small_net(3).eval()
    dtypes = []
    for pool in model.pools:
        pool.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 1, 8, 8, 8))
    assert dtypes == [torch.bfloat16, torch.bfloat16]


def test_channels_last_3d_input_matches_contiguous():
    model = small_net(3).eval()
    model = model.to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 8, 12, 6)
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(memory_format=torch.channels_last_3d))
        odd = model(torch.randn(1, 1, 7, 5, 3).to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert odd.shape == (1, 2, 7, 5, 3)


def test_channels_last_2d_training_step():
    model = small_net(2, norm="batch").to(memory_format=torch.channels_last).train()
    out = model(torch.randn(2, 1, 16, 12).to(memory_format=torch.channels_last))
    out.mean().backward()
    assert out.shape == (2, 2, 16, 12)


# --------------------------------------------------------------------------- checkpoint kwargs


@pytest.mark.parametrize("preset", ["demo", "article"])
def test_network_kwargs_round_trip(preset):
    cfg = load_config(preset, overrides=["model.deep_supervision=true"]).model
    kwargs = network_kwargs(cfg, 2, 4)
    assert json.loads(json.dumps(kwargs)) == kwargs  # plain values only
    assert isinstance(kwargs["channels"], list)
    built = build_network(cfg, 2, 4)
    rebuilt = ResidualUNet(**kwargs)
    assert list(built.state_dict()) == list(rebuilt.state_dict())
    rebuilt.load_state_dict(built.state_dict())
    assert rebuilt.deep_supervision and rebuilt.in_channels == 2 and rebuilt.out_channels == 4


def test_network_kwargs_per_level_blocks():
    cfg = load_config("demo", overrides=["model.num_res_blocks=[1,2,2,1]"]).model
    kwargs = network_kwargs(cfg, 1, 2)
    assert kwargs["num_res_blocks"] == [1, 2, 2, 1]
    model = ResidualUNet(**kwargs)
    assert [len(s) for s in model.encoder] == [1, 2, 2, 1]
    assert model.total_stride == (2 ** (len(cfg.channels) - 1),) * 3 == (math.prod([2] * 3),) * 3


# --------------------------------------------------------------------------- anisotropic


ANISO = {"strides": [[2, 2, 1], [2, 2, 1], [2, 2, 2]], "kernel_sizes": [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]]}


@pytest.mark.parametrize("downsample, upsample", [("maxpool", "transpose"), ("conv", "linear"), ("maxpool", "nearest")])
@pytest.mark.parametrize("size", [(37, 29, 7), (17, 16, 3), (8, 8, 2), (1, 1, 1)])
def test_anisotropic_odd_sizes_give_the_input_size(size, downsample, upsample):
    model = small_net(3, channels=[2, 4, 8, 8], downsample=downsample, upsample=upsample, **ANISO).train()
    assert model.total_stride == (8, 8, 2)
    assert model.padded_shape(size)[2] % 2 == 0 and all(p % 8 == 0 for p in model.padded_shape(size)[:2])
    out = model(torch.randn(1, 1, *size))
    assert out.shape == (1, 2, *size)


def test_anisotropic_kernels_and_strides_reach_the_layers():
    model = small_net(3, channels=[2, 4, 8, 8], **ANISO)
    assert model.encoder[0][0].conv1.kernel_size == (3, 3, 1)
    assert model.encoder[0][0].conv1.padding == (1, 1, 0)
    assert model.decoder[0].conv2.kernel_size == (3, 3, 1)
    assert model.encoder[3][0].conv1.kernel_size == (3, 3, 3)
    assert [p.kernel_size for p in model.pools] == [(2, 2, 1), (2, 2, 1), (2, 2, 2)]
    assert model.upsamples[0].stride == (2, 2, 1) and model.upsamples[2].stride == (2, 2, 2)
    # a kernel-1 axis mixes no slices: slice k of the output depends on input slice k only (level 0 only)
    shallow = small_net(3, channels=[2, 4], strides=[[1, 1, 1]], kernel_sizes=[[3, 3, 1], [3, 3, 1]],
                        norm="none").eval()
    x = torch.randn(1, 1, 8, 8, 4)
    y = x.clone()
    y[..., 3] += 1.0
    with torch.no_grad():
        assert torch.equal(shallow(x)[..., :3], shallow(y)[..., :3])


def test_anisotropic_deep_supervision_shapes():
    model = small_net(3, channels=[2, 4, 8, 8], deep_supervision=True, out_channels=3, **ANISO).train()
    outs = model(torch.randn(2, 1, 17, 16, 5))
    assert [tuple(o.shape[2:]) for o in outs] == [(17, 16, 5), (9, 8, 5), (5, 4, 5)]


def test_anisotropic_2d_and_config_round_trip():
    cfg = load_config("2d", overrides=["model.channels=[4,8,16]", "model.strides=[[2,1],[2,2]]",
                                       "model.kernel_sizes=[[3,1],[3,3],[3,3]]"]).model
    kwargs = network_kwargs(cfg, 1, 2)
    assert kwargs["strides"] == [[2, 1], [2, 2]]
    model = ResidualUNet(**kwargs).eval()
    assert model.total_stride == (4, 2)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 13, 7)).shape == (1, 2, 13, 7)


@pytest.mark.parametrize("bad", [{"strides": [[2, 2, 2]]}, {"strides": [[3, 2, 2]] * 3},
                                 {"kernel_sizes": [[3, 3]] * 4}, {"kernel_sizes": [[5, 3, 3]] * 4}])
def test_bad_strides_and_kernels_are_refused(bad):
    with pytest.raises(ValueError, match="strides|kernel_sizes"):
        small_net(3, channels=[2, 4, 8, 8], **bad)


def test_isotropic_defaults_are_the_default_network():
    a = small_net(3, channels=[2, 4, 8])
    torch.manual_seed(0)
    b = small_net(3, channels=[2, 4, 8], strides=[2, 2], kernel_sizes=[3, 3, 3])
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]
