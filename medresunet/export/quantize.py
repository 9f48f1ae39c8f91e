"""Optional int8: post-training quantisation with NNCF, refused when validation Dice drops.

Calibration: label-balanced patches (half centred on foreground) of the manifest's training
cases, preprocessed with the checkpoint's own preprocessing, the same way training crops
them (without augmentation). The quantised model (OpenVINO IR, ``model_int8.xml``) is then
checked on the manifest's validation cases (``split: val``; without any, the last fifth of
the labelled cases): both the fp32 and the int8 model segment each case through the whole
inference path, and the int8 model is kept only when its mean Dice is at most
``max_dice_drop`` below the fp32 model's.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medresunet.errors import UsageError
from medresunet.export.metadata import FILES, checkpoint_view

log = logging.getLogger(__name__)

DEFAULT_MAX_DICE_DROP = 0.005


def split_calibration(manifest_path: str | os.PathLike[str]) -> tuple[list, list]:
    """``(calibration cases, check cases)`` of a manifest (labelled cases only).

    Raises:
        UsageError: the manifest has no labelled case.
    """
    from medresunet.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    labelled = [c for c in manifest.cases if c.label is not None]
    if not labelled:
        raise UsageError(f"--calibration {manifest_path}: no labelled case; int8 calibration and its "
                         "Dice check need training and validation cases with labels")
    val = [c for c in labelled if c.split == "val"]
    train = [c for c in labelled if c.split in (None, "train")]
    if not val:
        n = max(1, len(labelled) // 5)
        val = labelled[-n:]
        train = [c for c in labelled[:-n] if c.split != "test"] or labelled
        log.info("--calibration: no split 'val' cases; checking Dice on the last %d labelled case(s)", n)
    return train or labelled, val


def calibration_patches(cases: Sequence, preprocessing: Mapping[str, Any], n_patches: int,
                        multiple: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """``n_patches`` label-balanced windows ``(1, C, *padded patch)`` float32 from ``cases``.

    Args:
        cases: manifest cases with labels.
        preprocessing: the checkpoint's preprocessing dict.
        n_patches: how many windows in all (spread over the cases).
        multiple: the network's stride per axis (windows are padded to it, as the
            runners pad).
    """
    import torch
    from monai.transforms import Compose, RandCropByPosNegLabeld

    from medresunet.data.normalize import BackgroundPadd
    from medresunet.data.preprocessing import Preprocessing
    from medresunet.data.transforms import background_value, preprocess_transforms
    from medresunet.export.backends.base import pad_window

    prep = Preprocessing.from_dict(dict(preprocessing))
    patch = tuple(int(p) for p in prep.patch_size)
    patch3 = (*patch, 1) if prep.spatial_dims == 2 else patch
    per_case = max(1, math.ceil(n_patches / max(1, len(cases))))
    fallback = [background_value(prep, c) for c in range(prep.n_channels)]
    chain = Compose(preprocess_transforms(prep, ("image", "label")) +
                    [BackgroundPadd("image", "label", patch3, fallback),
                     RandCropByPosNegLabeld(("image", "label"), label_key="label", spatial_size=patch3,
                                            pos=0.5, neg=0.5, num_samples=per_case)])
    chain.set_random_state(seed)
    out: list[np.ndarray] = []
    for case in cases:
        samples = chain({"image": [str(p) for p in case.images], "label": str(case.label)})
        for sample in samples:
            image = torch.as_tensor(sample["image"]).float()
            if prep.spatial_dims == 2:
                image = image[..., 0]
            padded, _ = pad_window(image[None], multiple)
            out.append(np.ascontiguousarray(padded.numpy()))
            if len(out) >= n_patches:
                return out
    return out


def _mean_dice(predictor: Any, cases: Sequence, labels: Mapping[str, int]) -> tuple[float, list[np.ndarray]]:
    """Mean Dice over cases and foreground labels (NaN pairs skipped), and the label volumes."""
    from medresunet.io import read_volume
    from medresunet.metrics.overlap import dice_per_label
    from medresunet.training.validation import nanmean

    scores: list[float] = []
    volumes = []
    for case in cases:
        pred = predictor.predict(list(case.images))
        ref, _ = read_volume(case.label)
        ref = np.rint(np.asarray(ref)).astype(np.int64).reshape(pred.shape)
        values = [v for v in labels.values() if v != 0]
        scores.extend(dice_per_label(pred.astype(np.int64), ref, values).values())
        volumes.append(pred)
    return nanmean(scores), volumes


def quantize_openvino(onnx_path: str | os.PathLike[str], target: str | os.PathLike[str],
                      patches: Sequence[np.ndarray]) -> Path:
    """NNCF post-training int8 quantisation of an ONNX model -> OpenVINO IR (``.xml``/``.bin``)."""
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)  # its INFO lines and progress bars are not the user's business
    model = ov.Core().read_model(str(onnx_path))
    quantized = nncf.quantize(model, nncf.Dataset(list(patches)), subset_size=len(patches),
                              preset=nncf.QuantizationPreset.MIXED)  # asymmetric activations (LeakyReLU)
    target = Path(target)
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return target


def build_int8(folder: Path, meta: dict[str, Any], checkpoint: Mapping[str, Any],
               options: Mapping[str, Any]) -> dict[str, Any]:
    """Quantise ``folder/model.onnx`` and keep it only if validation Dice holds.

    Args:
        folder: the (staging) export folder holding ``model.onnx``.
        meta: its ``model.json`` fields.
        checkpoint: the source checkpoint dict (labels).
        options: ``manifest``, ``max_dice_drop`` (default 0.005), ``patches`` (default 32),
            ``keep_refused`` (benchmarks: keep a refused model's files).

    Returns:
        ``{"accepted", "reason", "dice_fp32", "dice_int8", "dice_drop", "label_agreement",
        "calibration_patches", "check_cases"}``; a refused model's files are removed.

    Raises:
        UsageError: OpenVINO or NNCF missing, or an unusable manifest.
    """
    import importlib.util

    import torch

    from medresunet.export.backends.ov import OpenVinoRunner
    from medresunet.inference.predictor import Predictor

    for module in ("openvino", "nncf"):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"--int8: {module} is not installed; pip install 'medresunet[openvino]'")
    max_drop = float(options.get("max_dice_drop", DEFAULT_MAX_DICE_DROP))
    train, check = split_calibration(options["manifest"])
    multiple = meta["spatial_multiple"]
    patches = calibration_patches(train, meta["preprocessing"], int(options.get("patches", 32)), multiple)
    target = folder / FILES["openvino_int8"]
    quantize_openvino(folder / FILES["onnx"], target, patches)
    labels = {str(k): int(v) for k, v in dict(checkpoint["labels"]).items()}
    view = checkpoint_view(meta)
    cpu = torch.device("cpu")
    fp32 = Predictor(view, device=cpu, precision="fp32", model=OpenVinoRunner(folder / FILES["onnx"], multiple))
    int8 = Predictor(view, device=cpu, precision="fp32",
                     model=OpenVinoRunner(target, multiple, "openvino-int8"))
    dice32, vols32 = _mean_dice(fp32, check, labels)
    dice8, vols8 = _mean_dice(int8, check, labels)
    agree = float(np.mean(np.concatenate([(a == b).ravel() for a, b in zip(vols32, vols8, strict=True)])))
    drop = dice32 - dice8
    accepted = bool(np.isfinite(drop) and drop <= max_drop)
    reason = (f"validation Dice {dice8:.4f} (int8) vs {dice32:.4f} (fp32) on {len(check)} case(s): "
              f"drop {drop:.4f} {'<=' if accepted else '>'} {max_drop:g}")
    if not accepted and not options.get("keep_refused"):
        for path in (target, target.with_suffix(".bin")):
            path.unlink(missing_ok=True)
    log.info("int8 %s: %s", "accepted" if accepted else "refused", reason)
    return {"accepted": accepted, "reason": reason, "dice_fp32": round(dice32, 5), "dice_int8": round(dice8, 5),
            "dice_drop": round(drop, 5), "max_dice_drop": max_drop, "label_agreement": round(agree, 5),
            "calibration_patches": len(patches), "check_cases": [c.case_id for c in check],
            "calibration_cases": [c.case_id for c in train]}
