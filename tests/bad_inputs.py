"""Builders of bad inputs for the catalogue (tests/test_bad_inputs.py) and the other
robustness tests: tiny scans, labels, manifests, configs, DICOM folders and checkpoints
that are broken in one documented way each. Every builder is deterministic (no random
bytes) and writes only under the folder it is given.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

from tests.synthetic import ellipsoid, make_affine, write_nifti

SHAPE = (20, 16, 8)
AFFINE = make_affine("lps", (1.5, 1.5, 2.0))
LABELS = {"background": 0, "organ": 1}
KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8]}


# ------------------------------------------------------------------------- volumes
def image(shape=SHAPE) -> np.ndarray:
    """A CT-like float32 volume: an ellipsoid of 200 HU in -800 HU air."""
    mask = ellipsoid(shape, np.asarray(shape) * 0.45, np.maximum(np.asarray(shape) * 0.25, 1.5))
    return np.where(mask, 200.0, -800.0).astype(np.float32)


def label(shape=SHAPE) -> np.ndarray:
    """The uint8 label of :func:`image` (1 inside the ellipsoid)."""
    return (image(shape) > 0).astype(np.uint8)


def good_scan(path: Path, shape=SHAPE, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, image(shape), affine)


def good_label(path: Path, shape=SHAPE, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, label(shape), affine, dtype=np.uint8)


# ----------------------------------------------------------------- broken scan files
def missing_file(path: Path) -> Path:
    """A path that does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def empty_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def corrupt_gzip(path: Path) -> Path:
    """A .nii.gz whose deflate stream is damaged in the middle (bytes inverted)."""
    good = good_scan(path)
    blob = bytearray(good.read_bytes())
    mid = len(blob) // 2
    blob[mid:mid + 64] = bytes(b ^ 0xFF for b in blob[mid:mid + 64])
    path.write_bytes(bytes(blob))
    return path


def truncated_gzip(path: Path) -> Path:
    """A .nii.gz cut in half."""
    blob = good_scan(path).read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    return path


def truncated_nifti(path: Path) -> Path:
    """An uncompressed .nii whose voxel data stop half way (the header is intact)."""
    tmp = good_scan(path.with_name(path.name + ".gz"))
    raw = gzip.decompress(tmp.read_bytes())
    tmp.unlink()
    path.write_bytes(raw[: 352 + (len(raw) - 352) // 2])
    return path


def text_as_nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("patient notes, not an image\n")
    return path


def four_d(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, np.zeros((*SHAPE, 3), np.float32), AFFINE)


def five_d(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, np.zeros((*SHAPE, 1, 2), np.float32), AFFINE)


def nan_voxels(path: Path) -> Path:
    data = image()
    data[3, 3, 3] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, data, AFFINE)


def inf_voxels(path: Path) -> Path:
    data = image()
    data[3, 3, 3] = np.inf
    data[4, 4, 4] = -np.inf
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, data, AFFINE)


def constant_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, np.full(SHAPE, 40.0, np.float32), AFFINE)


# -------------------------------------------------------------------------- labels
def label_other_shape(path: Path) -> Path:
    return good_label(path, shape=(20, 16, 6))


def label_other_affine(path: Path) -> Path:
    return good_label(path, affine=make_affine("oblique", (1.5, 1.5, 2.0)))


def label_outside_map(path: Path) -> Path:
    data = label()
    data[0, 0, 0] = 7
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, data, AFFINE, dtype=np.uint8)


def label_non_integer(path: Path) -> Path:
    data = label().astype(np.float32)
    data[0, 0, 0] = 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, data, AFFINE, dtype=np.float32)


# ---------------------------------------------------------------------- manifests
def manifest(root: Path, cases=None, labels=None, channels=("CT",), extra=None) -> Path:
    """A JSON manifest with two good cases (a, b; b is the validation case) in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    if cases is None:
        cases = []
        for cid, split in (("a", "train"), ("b", "val")):
            good_scan(root / f"{cid}.nii.gz")
            good_label(root / f"{cid}_seg.nii.gz")
            cases.append({"id": cid, "image": f"{cid}.nii.gz", "label": f"{cid}_seg.nii.gz", "split": split})
    doc = {"channels": list(channels), "labels": labels or LABELS, "cases": cases, **(extra or {})}
    path = root / "manifest.json"
    path.write_text(json.dumps(doc))
    return path


def _edit_manifest(root: Path, edit) -> Path:
    path = manifest(root)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


def manifest_duplicate_ids(root: Path) -> Path:
    return _edit_manifest(root, lambda d: d["cases"][1].__setitem__("id", "a"))


def manifest_unknown_key(root: Path) -> Path:
    return _edit_manifest(root, lambda d: d["cases"][1].__setitem__("lable", "b_seg.nii.gz"))


def manifest_wrong_type(root: Path) -> Path:
    return _edit_manifest(root, lambda d: d["cases"][0].__setitem__("fold", "first"))


def manifest_missing_path(root: Path) -> Path:
    return _edit_manifest(root, lambda d: d["cases"][1].__setitem__("image", "nowhere.nii.gz"))


def manifest_with_label(root: Path, builder) -> Path:
    """The two-case manifest whose case ``b`` has the label made by ``builder``."""
    path = manifest(root)
    builder(root / "b_seg.nii.gz")
    return path


def manifest_with_image(root: Path, builder) -> Path:
    """The two-case manifest whose case ``a`` (training) has the image made by ``builder``."""
    path = manifest(root)
    (root / "a.nii.gz").unlink()
    builder(root / "a.nii.gz")
    return path


def manifest_two_channels(root: Path) -> Path:
    """A manifest declaring two channels (CT, MR) whose case ``b`` gives one image."""
    path = manifest(root)
    doc = json.loads(path.read_text())
    doc["channels"] = ["CT", "MR"]
    doc["cases"][0]["images"] = [doc["cases"][0].pop("image")] * 2
    path.write_text(json.dumps(doc))
    return path


# -------------------------------------------------------------------------- configs
def config_unknown_key(path: Path) -> Path:
    path.write_text("train:\n  epochz: 1\n")
    return path


def config_wrong_type(path: Path) -> Path:
    path.write_text("train:\n  lr: fast\n")
    return path


# -------------------------------------------------------------------------- DICOM
def dicom_series(folder: Path, **kwargs) -> Path:
    from tests.dicom_fixtures import write_dicom_series

    write_dicom_series(folder, np.round(image((12, 10, 6))), make_affine("oblique", (0.9, 0.8, 2.0)), **kwargs)
    return folder


def dicom_no_dicom(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.txt").write_text("no images here\n")
    (folder / "scan.dcm").write_text("not DICOM either\n")
    return folder


def dicom_two_series(folder: Path) -> Path:
    dicom_series(folder, series_uid="1.2.826.0.1.3680043.8.498.1", description="big", prefix="A")
    from tests.dicom_fixtures import write_dicom_series

    write_dicom_series(folder, np.round(image((12, 10, 4))), make_affine("ras", (1.0, 1.0, 3.0)),
                       series_uid="1.2.826.0.1.3680043.8.498.2", description="small", prefix="B")
    return folder


def dicom_slice_gap(folder: Path) -> Path:
    return dicom_series(folder, skip_slices=(3,))


def dicom_non_parallel(folder: Path) -> Path:
    return dicom_series(folder, tilt_slice=2)


def dicom_fake_dcm(folder: Path) -> Path:
    """A folder whose only ``.dcm`` file is a PNG-like blob with a 'DICM' preamble faked."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x89PNG garbage" * 20)
    return folder


# ---------------------------------------------------------------------- checkpoints
def _payload(kwargs=KWARGS, state=None) -> dict:
    import torch

    from medresunet.networks import ResidualUNet

    torch.manual_seed(0)
    if state is None:
        state = ResidualUNet(**kwargs).state_dict()
    norm = {"scheme": "ct", "clip": [-1000.0, 1000.0], "mean": 0.0, "std": 100.0}
    channels = kwargs["in_channels"]
    return {
        "format_version": 1, "medresunet_version": "test", "model": dict(kwargs), "state_dict": state,
        "preprocessing": {"orientation": "RAS", "target_spacing": [1.5, 1.5, 2.0],
                          "normalization": [norm] * channels, "crop_foreground": False,
                          "patch_size": [16, 16, 8], "spatial_dims": 3},
        "labels": dict(LABELS), "input_channels": ["CT"] * channels,
        "infer": {"overlap": 0.25, "sw_batch_size": 2, "precision": "fp32"},
    }


def checkpoint(path: Path, channels: int = 1) -> Path:
    """A valid (untrained) tiny checkpoint."""
    from medresunet.training.checkpoint import save_checkpoint

    return save_checkpoint(path, _payload({**KWARGS, "in_channels": channels}))


def checkpoint_other_architecture(path: Path) -> Path:
    """Weights of a 3-level network under the hyper-parameters of a 2-level one."""
    import torch

    from medresunet.networks import ResidualUNet

    other = ResidualUNet(**{**KWARGS, "channels": [4, 8, 16]}).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_payload(state=other), path)
    return path


def checkpoint_truncated(path: Path) -> Path:
    blob = checkpoint(path).read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    return path


class Payload:
    """An object whose unpickling runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def checkpoint_pickle_payload(path: Path, marker: Path) -> Path:
    """A checkpoint dict that also carries an object whose unpickling creates ``marker``."""
    import torch

    data = _payload()
    data["extra"] = Payload(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path
