"""Synthetic abdominal phantoms: a small, realistic, seeded dataset made on the fly.

Each case is a 3D scan of an elliptical "body" (skin fat layer, soft tissue, a vertebra)
holding up to three labelled organs, built in world coordinates (RAS mm) and then sampled
on the case's own voxel grid, so that spacing and orientation vary across cases exactly as
they do between scanners:

* 1 ``liver``: a large, smoothly deformed ellipsoid on the patient's right;
* 2 ``kidney``: a medium deformed ellipsoid, left and posterior;
* 3 ``lesion``: a small (about 5-12 mL) hypodense, cyst-like blob inside the liver.

:func:`sphere_phantom` is the simple one with known answers that the tests use (two
ellipsoids in voxel space, Gaussian noise).

Intensities are CT-like HU (or MR-like for ``modality="MR"``) with a smooth tissue texture,
partial-volume blur, a smooth multiplicative bias field and white (CT) or Rician (MR) noise.
:func:`make_demo_dataset` writes a whole dataset: NIfTI images and labels, one test case as
a DICOM series, and a manifest in the project's format (``data_manifests/README.md``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

LABELS: dict[str, int] = {"background": 0, "liver": 1, "kidney": 2, "lesion": 3}
ORIENTATIONS = ("ras", "lps", "oblique")
FOV_MM = (144.0, 120.0, 96.0)
# tissue -> (CT HU, MR intensity); per-case jitter is added.
TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 900.0),
    "soft": (40.0, 400.0),
    "bone": (450.0, 150.0),
    "liver": (100.0, 550.0),
    "kidney": (170.0, 750.0),
    "lesion": (5.0, 250.0),
}
# (kind, spacing mm) of successive demo cases: isotropic, thick slices, LPS, oblique.
DEMO_GRIDS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("ras", (1.5, 1.5, 1.5)),
    ("lps", (1.5, 1.5, 3.0)),
    ("oblique", (2.0, 2.0, 2.0)),
    ("ras", (1.0, 1.0, 3.0)),
    ("lps", (2.0, 2.0, 2.0)),
    ("oblique", (1.5, 1.5, 3.0)),
)


class PhantomCase(NamedTuple):
    """One phantom scan: ``image`` (I, J, K) float32 (HU for CT), ``label`` (I, J, K) uint8
    (values of :data:`LABELS`), ``affine`` 4x4 voxel -> RAS mm."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def rotation(axis: int, degrees: float) -> np.ndarray:
    """A 3x3 rotation about world axis ``axis`` (0: R, 1: A, 2: S) by ``degrees``."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def grid_affine(orientation: str, spacing, shape, center_mm=(0.0, 0.0, 0.0),
                rng: np.random.Generator | None = None) -> np.ndarray:
    """A 4x4 voxel -> RAS mm affine whose central voxel lies at ``center_mm``.

    Args:
        orientation: ``ras`` (voxel axes along R, A, S), ``lps`` (along L, P, S: DICOM's
            identity orientation) or ``oblique`` (tilted: a rotation of 15-25 degrees about
            S and 5-12 about R, drawn from ``rng``; fixed 20/10 without one).
        spacing: voxel size in mm per voxel axis.
        shape: grid size in voxels.
        center_mm: world position (RAS mm) of the grid's centre.
    """
    if orientation == "ras":
        rot = np.eye(3)
    elif orientation == "lps":
        rot = np.diag([-1.0, -1.0, 1.0])
    elif orientation == "oblique":
        about_s, about_r = (20.0, 10.0) if rng is None else (rng.uniform(15, 25), rng.uniform(5, 12))
        rot = rotation(2, about_s) @ rotation(0, about_r)
    else:
        raise ValueError(f"orientation: expected one of {list(ORIENTATIONS)}, got {orientation!r}")
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(spacing, dtype=float)[None, :]
    centre_vox = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(center_mm, dtype=float) - affine[:3, :3] @ centre_vox
    return affine


def _world_coords(shape, affine: np.ndarray) -> np.ndarray:
    """(3, I, J, K) RAS mm coordinates of every voxel centre."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    return xyz.reshape((3, *shape))


@dataclass
class _Blob:
    """A smoothly deformed, rotated ellipsoid in world mm."""

    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray
    waves: list = field(default_factory=list)  # (wave vector 1/mm, phase, amplitude) triples

    def inside(self, xyz: np.ndarray) -> np.ndarray:
        rel = np.tensordot(self.rot.T, xyz - self.center[:, None, None, None], axes=1)
        dist = sum((rel[a] / self.radii[a]) ** 2 for a in range(3))
        for k, phase, amp in self.waves:
            dist = dist + amp * np.sin(np.tensordot(k, rel, axes=1) + phase)
        return dist <= 1.0


def _random_blob(rng: np.random.Generator, center, radii, jitter_mm: float, size_jitter: float,
                 tilt_deg: float, bumpiness: float) -> _Blob:
    center = np.asarray(center, float) + rng.uniform(-jitter_mm, jitter_mm, 3)
    radii = np.asarray(radii, float) * rng.uniform(1 - size_jitter, 1 + size_jitter, 3)
    rot = (rotation(2, rng.uniform(-tilt_deg, tilt_deg)) @ rotation(1, rng.uniform(-tilt_deg, tilt_deg))
           @ rotation(0, rng.uniform(-tilt_deg, tilt_deg)))
    waves = []
    for _ in range(3):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        wavelength = rng.uniform(1.2, 2.5) * radii.mean()
        waves.append((direction * 2 * np.pi / wavelength, rng.uniform(0, 2 * np.pi),
                      rng.uniform(0.5, 1.0) * bumpiness))
    return _Blob(center, radii, rot, waves)


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return noise / max(float(noise.std()), 1e-6)


def _body(rng: np.random.Generator, rel: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The body: an elliptic cylinder along S with a fat layer and a vertebra, as a tissue index."""
    ax, ay = rng.uniform(58, 64), rng.uniform(45, 50)
    theta = np.arctan2(rel[1] / ay, rel[0] / ax)
    wobble = 1.0 + 0.04 * np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.02 * np.sin(5 * theta + rng.uniform(0, 6.3))
    r_body = np.sqrt((rel[0] / ax) ** 2 + (rel[1] / ay) ** 2) / wobble
    fat_mm = rng.uniform(5, 9)
    tissue = np.zeros(shape, np.uint8)  # index into _ORDER
    tissue[r_body <= 1.0] = 1
    tissue[r_body <= 1.0 - fat_mm / ay] = 2
    spine = ((rel[0] / 11.0) ** 2 + ((rel[1] + ay - 22.0) / 10.0) ** 2) <= 1.0
    tissue[spine] = 3

    return tissue


def _intensities(rng: np.random.Generator, tissue: np.ndarray, label: np.ndarray, spacing: tuple[float, ...],
                 modality: str) -> np.ndarray:
    """CT-like HU (or MR-like) intensities: tissue means, texture, blur, bias field and noise."""
    shape = tissue.shape
    column = 0 if modality == "CT" else 1
    jitter = 10.0 if modality == "CT" else 40.0
    means = {name: values[column] + (rng.uniform(-jitter, jitter) if name != "air" else 0.0)
             for name, values in TISSUES.items()}
    clean = np.full(shape, means["air"], np.float32)
    for index, name in enumerate(("fat", "soft", "bone"), start=1):
        clean[tissue == index] = means[name]
    for name in ("liver", "kidney", "lesion"):
        clean[label == LABELS[name]] = means[name]

    spacing_arr = np.asarray(spacing)
    texture_amp = 8.0 if modality == "CT" else 30.0
    texture = _smooth_noise(rng, shape, 2.0 / spacing_arr) * texture_amp * (tissue > 0)
    image = ndimage.gaussian_filter(clean, 0.6 / spacing_arr) + texture
    bias = 1.0 + (0.03 if modality == "CT" else 0.2) * _smooth_noise(rng, shape, 40.0 / spacing_arr)
    image = image * bias
    if modality == "CT":
        image = image + rng.normal(0.0, 12.0, shape).astype(np.float32)
        image = np.clip(image, -1024.0, 3071.0)
    else:
        sigma = 25.0
        image = np.sqrt((image + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    return image


def make_phantom_case(seed: int, shape=None, spacing=(1.5, 1.5, 1.5), orientation_kind: str = "ras",
                      modality: str = "CT", n_organs: int = 3, fov_mm=FOV_MM) -> PhantomCase:
    """Make one phantom scan.

    Args:
        seed: the anatomy, intensities, noise and (oblique) tilt all follow from it.
        shape: grid size in voxels; default ``ceil(fov_mm / spacing)``.
        spacing: voxel size in mm per voxel axis (e.g. ``(1.5, 1.5, 3.0)``).
        orientation_kind: ``ras``, ``lps`` or ``oblique`` (see :func:`grid_affine`).
        modality: ``CT`` (HU) or ``MR`` (arbitrary positive units, Rician noise).
        n_organs: 2 (liver, kidney) or 3 (plus the lesion).
        fov_mm: field of view along the voxel axes, used when ``shape`` is None.

    Returns:
        :class:`PhantomCase` ``(image float32 (I, J, K), label uint8 (I, J, K), affine 4x4)``.
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality: expected 'CT' or 'MR', got {modality!r}")
    if n_organs not in (2, 3):
        raise ValueError(f"n_organs: expected 2 or 3, got {n_organs}")
    spacing = tuple(float(s) for s in spacing)
    if shape is None:
        shape = tuple(int(np.ceil(f / s)) for f, s in zip(fov_mm, spacing, strict=True))
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng(seed)
    center = rng.uniform(-8, 8, 3)
    affine = grid_affine(orientation_kind, spacing, shape, center, rng)
    xyz = _world_coords(shape, affine)
    rel = xyz - center[:, None, None, None].astype(np.float32)

    tissue = _body(rng, rel, shape)  # index into ("air", "fat", "soft", "bone")
    liver = _random_blob(rng, center + [22, 6, 8], [34, 27, 26], 4, 0.1, 15, 0.25)
    kidney = _random_blob(rng, center + [-30, -18, -8], [15, 12, 24], 4, 0.1, 20, 0.15)
    label = np.zeros(shape, np.uint8)
    label[liver.inside(xyz)] = LABELS["liver"]
    label[kidney.inside(xyz)] = LABELS["kidney"]
    if n_organs == 3:
        direction = rng.normal(size=3)
        offset = liver.rot @ (0.35 * liver.radii * direction / np.linalg.norm(direction))
        lesion = _random_blob(rng, liver.center + offset, [12, 12, 12], 0, 0.15, 30, 0.1)
        label[lesion.inside(xyz) & (label == LABELS["liver"])] = LABELS["lesion"]
    label[tissue == 0] = 0  # organs stay inside the body
    del xyz, rel

    image = _intensities(rng, tissue, label, spacing, modality)
    return PhantomCase(image.astype(np.float32), label, affine)


# ------------------------------------------------------------------------- test phantoms


def ellipsoid(shape, center, radii) -> np.ndarray:
    """Boolean ellipsoid (radii in voxels) on a grid of ``shape``."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True))
    return dist <= 1.0


def sphere_phantom(shape=(40, 36, 24), seed: int = 0, spacing=(1.0, 1.0, 3.0)) -> tuple[np.ndarray, np.ndarray]:
    """An image with two labelled ellipsoids (1: large, 2: small) and noise: known answers for tests.

    Returns ``(image float32, label uint8)`` in voxel order, sized in voxels so that
    the structures look round in mm for the given spacing (radii 9 and 4 mm).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    label = np.zeros(shape, np.uint8)
    c = np.array(shape) / 2.0
    big = ellipsoid(shape, c + [-4, 0, 0], np.array([9.0, 9.0, 9.0]) / np.asarray(spacing))
    small = ellipsoid(shape, c + [9, 6, 0], np.array([4.0, 4.0, 4.0]) / np.asarray(spacing))
    label[big] = 1
    label[small] = 2
    image = rng.normal(0.0, 20.0, shape).astype(np.float32) - 100.0
    image[label == 1] += 180.0
    image[label == 2] += 320.0
    return image.astype(np.float32), label


# ------------------------------------------------------------------------- datasets on disk


@dataclass(frozen=True)
class DemoDataset:
    """What :func:`make_demo_dataset` wrote (absolute paths)."""

    root: Path
    manifest: Path
    images_test: Path
    labels_test: Path
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    dicom_ids: tuple[str, ...]
    labels: dict[str, int]


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype) -> None:
    import nibabel as nib

    from medresunet.io.atomic import atomic_path

    data = np.rint(array).astype(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else array.astype(dtype)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if np.dtype(dtype) == np.int16:
        img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def make_demo_dataset(out_dir: str | Path, n_train: int = 8, n_test: int = 3, seed: int = 0,
                      spacing_scale: float = 1.0, n_val: int = 1, n_dicom: int = 1,
                      modality: str = "CT") -> DemoDataset:
    """Write a phantom dataset: NIfTI images and labels, DICOM test series and a manifest.

    Layout under ``out_dir``: ``imagesTr/`` and ``labelsTr/`` (training and validation
    cases), ``imagesTs/`` and ``labelsTs/`` (test cases; the first ``n_dicom`` test cases are
    DICOM series folders ``imagesTs/<id>/`` instead of NIfTI files), ``manifest.json``
    (``split`` train / val / test) and ``phantoms.json`` (grid and seed of each case).
    Images are int16 HU except one training case stored as float32; labels are uint8.
    Case ``n`` uses the grid ``DEMO_GRIDS[n % 6]``, voxel sizes multiplied by
    ``spacing_scale`` (> 1 makes smaller volumes, e.g. for quick tests).

    Args:
        out_dir: the dataset folder (created).
        n_train: cases in ``imagesTr`` (of which the last ``n_val`` have split ``val``).
        n_test: test cases.
        seed: the dataset's seed; case ``n`` uses seed ``seed * 1000 + n``.
    Returns:
        :class:`DemoDataset`.
    """
    from medresunet.io.dicom_export import write_dicom_series

    if n_train < 1 or n_test < 1 or not 0 <= n_val < n_train or not 0 <= n_dicom <= n_test:
        raise ValueError(f"make_demo_dataset: need n_train >= 1, n_test >= 1, 0 <= n_val < n_train, "
                         f"0 <= n_dicom <= n_test; got {n_train}, {n_test}, {n_val}, {n_dicom}")
    root = Path(out_dir).resolve()
    folders = {name: root / name for name in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    cases, info = [], []
    ids: dict[str, list[str]] = {"train": [], "val": [], "test": [], "dicom": []}
    for n in range(n_train + n_test):
        test = n >= n_train
        kind, spacing = DEMO_GRIDS[n % len(DEMO_GRIDS)]
        spacing = tuple(s * spacing_scale for s in spacing)
        case_seed = seed * 1000 + n
        case_id = f"phantom_{n:03d}"
        img, lab, affine = make_phantom_case(case_seed, spacing=spacing, orientation_kind=kind, modality=modality)
        dicom = test and (n - n_train) < n_dicom
        split = "test" if test else ("val" if n >= n_train - n_val else "train")
        images, labels = (folders["imagesTs"], folders["labelsTs"]) if test else (folders["imagesTr"], folders["labelsTr"])
        if dicom:
            image_path = images / case_id
            if image_path.exists():
                import shutil

                shutil.rmtree(image_path)
            write_dicom_series(img, affine, image_path, modality=modality, patient_id=case_id, seed=case_seed,
                               series_description=f"phantom {kind} {'x'.join(f'{s:g}' for s in spacing)} mm")
            ids["dicom"].append(case_id)
        else:
            image_path = images / f"{case_id}.nii.gz"
            dtype = np.float32 if (n == 0 or modality == "MR") else np.int16
            _save_nifti(image_path, img, affine, dtype)
        label_path = labels / f"{case_id}.nii.gz"
        _save_nifti(label_path, lab, affine, np.uint8)
        ids[split].append(case_id)
        cases.append({"id": case_id, "image": str(image_path.relative_to(root)),
                      "label": str(label_path.relative_to(root)), "split": split})
        info.append({"id": case_id, "seed": case_seed, "orientation": kind, "spacing_mm": list(spacing),
                     "shape": list(lab.shape), "format": "dicom" if dicom else "nifti", "split": split,
                     "volume_ml": {name: float((lab == v).sum() * np.prod(spacing) / 1000.0)
                                   for name, v in LABELS.items() if v}})
        log.info("phantom %s: %s %s mm, %s, %s", case_id, kind, spacing, lab.shape, split)
    from medresunet.io.atomic import write_text_atomic

    labels = {name: v for name, v in LABELS.items()}
    manifest = {"name": "medresunet-phantoms", "channels": [modality], "labels": labels, "cases": cases}
    manifest_path = write_text_atomic(root / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    write_text_atomic(root / "phantoms.json", json.dumps({"seed": seed, "modality": modality, "cases": info},
                                                         indent=2) + "\n")
    return DemoDataset(root=root, manifest=Path(manifest_path), images_test=folders["imagesTs"],
                       labels_test=folders["labelsTs"], train_ids=tuple(ids["train"]),
                       val_ids=tuple(ids["val"]), test_ids=tuple(ids["test"]),
                       dicom_ids=tuple(ids["dicom"]), labels=labels)
