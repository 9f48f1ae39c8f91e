"""The MONAI spleen-tutorial recipe, trained for a wall-clock budget, then predicting test scans.

``python -m benchmarks.monai_recipe --manifest M --minutes T --output DIR [--threads N]``

The recipe of MONAI's ``spleen_segmentation_3d`` tutorial: ``UNet`` (channels 16-256,
strides 2, ``num_res_units=2``, batch norm), 1.5 mm spacing, 96^3 patches
(``RandCropByPosNegLabeld``, 4 per volume, batch 2), ``DiceCELoss`` (softmax, one-hot),
AdamW at 1e-4. Two adaptations, both in its favour or neutral: MR intensities are z-scored
over the non-zero voxels (``NormalizeIntensityd``) instead of the tutorial's CT window, and
volumes smaller than the patch are padded to it (``SpatialPadd``) so batches stack; no
validation runs during training (every second goes to steps). The model at the end of the
budget predicts each test scan (sliding window 96^3, overlap 0.25, ``Invertd`` back to the
scan's grid), written as ``DIR/pred/<id>.nii.gz``; ``DIR/result.json`` gets the steps and
seconds per step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PATCH = (96, 96, 96)
SPACING = (1.5, 1.5, 1.5)


def _transforms(train: bool):
    from monai import transforms as T

    keys = ["image", "label"] if train else ["image"]
    modes = ("bilinear", "nearest") if train else ("bilinear",)
    chain = [
        T.LoadImaged(keys=keys), T.EnsureChannelFirstd(keys=keys), T.Orientationd(keys=keys, axcodes="RAS"),
        T.Spacingd(keys=keys, pixdim=SPACING, mode=modes),
        T.NormalizeIntensityd(keys="image", nonzero=True), T.CropForegroundd(keys=keys, source_key="image"),
    ]
    if train:
        chain += [T.SpatialPadd(keys=keys, spatial_size=PATCH),
                  T.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=PATCH, pos=1, neg=1,
                                           num_samples=4, image_key="image", image_threshold=0)]
    return T.Compose(chain)


def main(argv: list[str] | None = None) -> int:
    import nibabel as nib
    import numpy as np
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import AsDiscreted, Compose, Invertd

    parser = argparse.ArgumentParser(prog="python -m benchmarks.monai_recipe")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    manifest_path = Path(args.manifest)
    manifest = json.loads(manifest_path.read_text())
    root = manifest_path.parent
    n_classes = max(manifest["labels"].values()) + 1
    cases = [{"image": str(root / c["image"]), "label": str(root / c["label"]), "id": c["id"], "split": c["split"]}
             for c in manifest["cases"]]
    train_files = [c for c in cases if c["split"] == "train"]
    test_files = [c for c in cases if c["split"] == "test"]
    train_ds = CacheDataset(train_files, transform=_transforms(True), cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(train_ds, batch_size=2, shuffle=True, num_workers=0)
    model = UNet(spatial_dims=3, in_channels=1, out_channels=n_classes, channels=(16, 32, 64, 128, 256),
                 strides=(2, 2, 2, 2), num_res_units=2, norm="batch")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    budget_s, start, steps = 60.0 * args.minutes, time.monotonic(), 0
    model.train()
    while time.monotonic() - start < budget_s:
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            steps += 1
            if time.monotonic() - start >= budget_s:
                break
    train_s = time.monotonic() - start
    out = Path(args.output)
    (out / "pred").mkdir(parents=True, exist_ok=True)
    pre = _transforms(False)
    post = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                    AsDiscreted(keys="pred", argmax=True)])
    model.eval()
    with torch.no_grad():
        for case in test_files:
            item = pre({"image": case["image"]})
            item["pred"] = sliding_window_inference(item["image"][None], PATCH, 4, model, overlap=0.25)[0]
            pred = post(item)["pred"]
            affine = nib.load(case["image"]).affine
            nib.save(nib.Nifti1Image(np.asarray(pred[0]).astype(np.uint8), affine), str(out / "pred" / f"{case['id']}.nii.gz"))
    (out / "result.json").write_text(json.dumps({"steps": steps, "train_seconds": train_s,
                                                 "seconds_per_step": train_s / max(1, steps)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
