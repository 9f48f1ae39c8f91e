"""Transform chains: normalisation values, background padding, patches, and exact inversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, Invertd

from medresunet.config import AugmentConfig, DataConfig
from medresunet.data.normalize import BACKGROUND_META_KEY, NormalizeChannelsd, robust_foreground
from medresunet.data.preprocessing import ChannelNorm, Preprocessing
from medresunet.data.transforms import (
    background_value,
    inference_transforms,
    preprocess_transforms,
    train_transforms,
)
from medresunet.inference.resample_back import invert_with_monai
from tests.synthetic import ellipsoid, make_affine, sphere_phantom, write_nifti

CT = ChannelNorm("ct", clip=(-150.0, 250.0), mean=50.0, std=100.0)
SHAPE = (40, 36, 24)


def _prep(norm=CT, spacing=(1.0, 1.0, 3.0), patch=(16, 16, 8), dims=3, crop=True) -> Preprocessing:
    return Preprocessing("RAS", spacing, (norm,), crop, patch, dims)


def _noisy_mr(shape=SHAPE, seed=0):
    """Rician-like background (non-zero everywhere) around a bright ellipsoid."""
    rng = np.random.default_rng(seed)
    fg = ellipsoid(shape, np.array(shape) / 2, np.array(shape) / 3.2)
    image = np.abs(rng.normal(0, 15, shape)) + 5.0
    image[fg] = rng.normal(300.0, 40.0, int(fg.sum()))
    return image.astype(np.float32), fg


def _write(tmp_path, image, label, kind="oblique", spacing=(1.0, 1.0, 3.0)):
    aff = make_affine(kind, spacing=spacing)
    img = write_nifti(tmp_path / "img.nii.gz", image, aff)
    lab = write_nifti(tmp_path / "lab.nii.gz", label.astype(np.uint8), aff, dtype=np.uint8)
    return {"image": [str(img)], "label": str(lab)}


def test_ct_clip_and_zscore_values():
    raw = torch.tensor([[-1000.0, -150.0, 50.0, 150.0, 3000.0]]).reshape(1, 5, 1, 1)
    out = NormalizeChannelsd("image", (CT,))({"image": raw.clone()})["image"]
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.flatten().numpy(), [-2.0, -2.0, 0.0, 1.0, 2.0], atol=1e-6)
    assert background_value(_prep(), 0) == pytest.approx(-2.0)


def test_zscore_uses_a_robust_mask_on_noisy_background():
    image, fg = _noisy_mr()
    assert (image > 0).all()                      # "non-zero" would be the whole image
    mask = robust_foreground(image)
    assert (mask == fg).mean() > 0.97
    from monai.data import MetaTensor

    out = NormalizeChannelsd("image", (ChannelNorm("zscore"),))({"image": MetaTensor(image[None].copy())})["image"]
    vals = out[0].numpy()
    assert abs(vals[fg].mean()) < 0.05 and abs(vals[fg].std() - 1.0) < 0.05
    bg = out.meta[BACKGROUND_META_KEY][0]
    assert bg == pytest.approx(np.median(vals[~fg]), abs=0.05)
    assert background_value(_prep(ChannelNorm("zscore")), 0, out) == bg
    assert bg < vals[fg].min() + 1.0


@pytest.mark.parametrize("scheme", ["ct", "zscore"])
def test_padding_uses_background_value(tmp_path, scheme):
    image, fg = _noisy_mr((20, 18, 6))
    if scheme == "ct":
        image = image - 300.0                    # HU-like: tissue ~0, background ~-290
    data = _write(tmp_path, image, fg, kind="lps")
    prep = _prep(CT if scheme == "ct" else ChannelNorm("zscore"), patch=(32, 32, 8), crop=False)
    det, _ = train_transforms(prep, DataConfig(patch_size=(32, 32, 8)))
    out = Compose(det)(data)
    img, lab = out["image"], out["label"]
    assert tuple(img.shape) == (1, 32, 32, 8) and tuple(lab.shape) == (1, 32, 32, 8)
    bg = background_value(prep, 0, img)
    if scheme == "ct":
        assert bg == pytest.approx(-2.0)
    else:
        assert bg == img.meta[BACKGROUND_META_KEY][0] and bg < -0.5
    assert torch.all(img[0, :6] == bg) and torch.all(img[0, :, :7] == bg) and torch.all(img[0, :, :, 0] == bg)
    assert torch.all(lab[0, :6] == 0)
    assert torch.all(img[lab > 0] > bg) and img[lab > 0].mean() > bg + 1.0   # object is not padding


@pytest.mark.parametrize("dims", [3, 2])
def test_train_patches_shape_and_alignment(tmp_path, dims):
    _, label = sphere_phantom(SHAPE)
    image = label.astype(np.float32) * 100.0          # exact: image == 100 * label
    data = _write(tmp_path, image, label, kind="ras")
    patch = (16, 16, 8) if dims == 3 else (16, 16)
    prep = _prep(ChannelNorm("none"), patch=patch, dims=dims)
    cfg = DataConfig(patch_size=patch, samples_per_volume=3, pos_fraction=1.0,
                     augment=AugmentConfig(enabled=False))
    det, rnd = train_transforms(prep, cfg)
    samples = Compose(det + rnd)(data)
    assert len(samples) == 3
    for s in samples:
        assert tuple(s["image"].shape) == (1, *patch) and tuple(s["label"].shape) == (1, *patch)
        assert s["image"].dtype == torch.float32
        assert s["label"].sum() > 0                    # pos_fraction 1: centred on foreground
        np.testing.assert_allclose(s["image"].numpy(), 100.0 * s["label"].numpy(), atol=1e-3)
    # with augmentation: shapes kept, labels stay integer classes
    aug = AugmentConfig(flip_prob=0.5, rotate_prob=1.0, scale_prob=1.0, intensity_prob=1.0,
                        gamma_prob=1.0, noise_prob=1.0)
    det, rnd = train_transforms(prep, DataConfig(patch_size=patch, samples_per_volume=2, augment=aug))
    for s in Compose(det + rnd)(data):
        assert tuple(s["image"].shape) == (1, *patch)
        assert set(np.unique(s["label"].numpy())) <= {0.0, 1.0, 2.0}


@pytest.mark.parametrize("sampling", ["posneg", "classes"])
def test_class_sampling_reaches_a_small_label(tmp_path, sampling):
    """``classes`` puts half the label centres on a small organ that ``posneg`` mostly misses."""
    label = np.zeros((64, 64, 16), np.uint8)
    label[4:60, 4:44, 2:14] = 1                        # a large organ: ~26900 voxels
    label[50:56, 52:58, 6:10] = 2                      # a small one: 144 voxels (0.5% of the foreground)
    data = _write(tmp_path, label.astype(np.float32) * 100.0, label, kind="ras", spacing=(1.0, 1.0, 1.0))
    prep = _prep(ChannelNorm("none"), spacing=(1.0, 1.0, 1.0), patch=(8, 8, 4), crop=False)
    cfg = DataConfig(patch_size=(8, 8, 4), samples_per_volume=200, pos_fraction=1.0, sampling=sampling,
                     augment=AugmentConfig(enabled=False))
    det, rnd = train_transforms(prep, cfg, n_classes=3)
    chain = Compose(det + rnd)
    chain.set_random_state(seed=0)
    with_small = np.mean([float((s["label"] == 2).any()) for s in chain(data)])
    if sampling == "classes":
        assert 0.4 < with_small < 0.6, with_small      # half the centres on each of the two labels
    else:
        assert with_small < 0.1, with_small


def test_class_sampling_needs_the_class_count():
    prep = _prep(ChannelNorm("none"))
    with pytest.raises(ValueError, match="number of classes"):
        train_transforms(prep, DataConfig(patch_size=(16, 16, 8), sampling="classes"))


def _dice(a, b, k):
    return 2.0 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k))


# Same spacing: exact round trip. Resampled (1.5 x 1.5 x 2 mm and back): the large
# structure keeps Dice > 0.9, the small one (~90 voxels, 3 slices thick) > 0.75.
@pytest.mark.parametrize("kind,spacing,min_dice", [("oblique", (1.0, 1.0, 3.0), (1.0, 1.0)),
                                                  ("lps", (1.0, 1.0, 3.0), (1.0, 1.0)),
                                                  ("oblique_lh", (1.5, 1.5, 2.0), (0.9, 0.75))])
def test_inference_transforms_invert_to_original_grid(tmp_path, kind, spacing, min_dice):
    image, fg = _noisy_mr()
    _, label = sphere_phantom(SHAPE)
    label = np.where(fg, label, 0).astype(np.uint8)
    data = _write(tmp_path, image, label, kind=kind)
    prep = _prep(ChannelNorm("zscore"), spacing=spacing)
    infer = inference_transforms(prep)
    out = infer({"image": data["image"]})
    ops = [op["class"] for op in out["image"].applied_operations]
    assert "CropForeground" in ops and "Orientation" in ops
    if spacing == (1.0, 1.0, 3.0):
        assert out["image"].shape[1:] != SHAPE          # cropped
    # the label through the same spatial chain = a perfect prediction on the preprocessed grid
    pre = Compose(preprocess_transforms(prep))(data)
    assert pre["label"].shape[1:] == out["image"].shape[1:]
    onehot = torch.nn.functional.one_hot(pre["label"][0].long(), 3).permute(3, 0, 1, 2).float()
    inv = Invertd("pred", transform=infer, orig_keys="image", nearest_interp=False)(
        {"image": out["image"], "pred": onehot})
    # the helper gives the same, also from a plain tensor (Invertd alone would skip it)
    helper = invert_with_monai(infer, out["image"], onehot.as_tensor())
    np.testing.assert_allclose(helper.numpy(), inv["pred"].numpy())
    back = inv["pred"].argmax(0).numpy()
    assert back.shape == SHAPE
    dices = [_dice(back, label, k) for k in (1, 2)]
    assert all(d >= m - 1e-9 for d, m in zip(dices, min_dice, strict=True)), dices
    np.testing.assert_allclose(inv["pred"].affine.numpy(), make_affine(kind, spacing=(1.0, 1.0, 3.0)), atol=1e-4)


def test_2d_file_round_trip(tmp_path):
    """A 2D NIfTI (one slice) goes through the chain and inverts to its own shape."""
    image, fg = _noisy_mr((30, 28))
    path = write_nifti(tmp_path / "slice.nii.gz", image, make_affine("lps"))
    prep = _prep(ChannelNorm("zscore"), patch=(16, 16), dims=2, spacing=(1.0, 1.0, 1.0))
    infer = inference_transforms(prep)
    out = infer({"image": [str(path)]})
    assert out["image"].ndim == 3 and out["image"].shape[1:] != (30, 28)      # cropped
    fg_pre = out["image"][0] > background_value(prep, 0, out["image"]) / 2      # halfway to tissue
    pred = torch.stack([~fg_pre, fg_pre]).float().as_tensor()
    back = invert_with_monai(infer, out["image"], pred, nearest=True)
    assert tuple(back.shape) == (2, 30, 28)
    assert _dice(back.argmax(0).numpy(), fg.astype(int), 1) > 0.9
