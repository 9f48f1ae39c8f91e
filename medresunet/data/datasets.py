"""Cached MONAI datasets of training / validation cases (the training loop builds its DataLoader).

The deterministic part of each chain (load, orient, resample, crop, normalise, pad)
runs once per case: ``CacheDataset`` keeps its output in memory (``data.cache:
memory``), ``PersistentDataset`` on disk (``disk``, in a sub-folder named by a hash of
the preprocessing, so a changed preprocessing never reuses stale files); ``none``
recomputes it every epoch. Both datasets stop caching at the first random transform
(MONAI does the split), so patches and augmentation are drawn anew each epoch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from medresunet.config import DataConfig
from medresunet.data.preprocessing import Preprocessing
from medresunet.data.transforms import IMAGE, LABEL, train_transforms, val_transforms
from medresunet.errors import ConfigError

CASE_ID = "case_id"


def case_dicts(cases: Sequence) -> list[dict]:
    """MONAI data dicts ``{"image": [str path per channel], "label": str, "case_id": str}``.

    Args:
        cases: :class:`medresunet.manifest.Case` objects; a case without label gets no
            ``"label"`` key.
    """
    out = []
    for case in cases:
        item = {IMAGE: [str(p) for p in case.images], CASE_ID: case.case_id}
        if case.label is not None:
            item[LABEL] = str(case.label)
        out.append(item)
    return out


def preprocessing_hash(prep: Preprocessing) -> str:
    """A short stable hash of ``prep.to_dict()`` (names the disk-cache folder)."""
    text = json.dumps(prep.to_dict(), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _dataset(items: list[dict], transforms: list, cache: str, cache_dir: str | Path | None,
             prep: Preprocessing, num_workers: int, progress: bool):
    from monai.data import CacheDataset, Dataset, PersistentDataset
    from monai.transforms import Compose

    compose = Compose(transforms)
    if cache == "memory":
        return CacheDataset(items, compose, num_workers=max(1, num_workers or 0), progress=progress)
    if cache == "disk":
        if cache_dir is None:
            raise ConfigError("data.cache is 'disk' but no cache folder is given; set data.cache_dir "
                              "or use data.cache: memory")
        folder = Path(cache_dir) / f"prep-{preprocessing_hash(prep)}"
        folder.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, compose, cache_dir=folder)
    if cache == "none":
        return Dataset(items, compose)
    raise ConfigError(f"data.cache: expected one of ['memory', 'disk', 'none'], got {cache!r}")


def make_train_dataset(cases: Sequence, prep: Preprocessing, data_cfg: DataConfig,
                       cache_dir: str | Path | None = None, progress: bool = False,
                       n_classes: int | None = None):
    """Training dataset: cached preprocessing, then random patches and augmentation.

    Args:
        cases: labelled :class:`medresunet.manifest.Case` objects.
        prep: the preprocessing (from :func:`medresunet.data.fingerprint.fingerprint`).
        data_cfg: ``cache`` (memory | disk | none), ``cache_dir``, patch sampling,
            augmentation, ``num_workers`` (threads filling the memory cache).
        cache_dir: overrides ``data_cfg.cache_dir`` for the disk cache.
        progress: progress bar while filling the memory cache.
        n_classes: classes, background included (needed by ``data.sampling: classes``).

    Returns:
        A MONAI dataset; item ``i`` is a list of ``samples_per_volume`` dicts
        ``{"image": (C, *patch), "label": (1, *patch), "case_id": str}``.
    """
    missing = [c.case_id for c in cases if c.label is None]
    if missing:
        raise ValueError(f"make_train_dataset: cases without a label: {missing}")
    det, rnd = train_transforms(prep, data_cfg, n_classes)
    return _dataset(case_dicts(cases), det + rnd, data_cfg.cache, cache_dir or data_cfg.cache_dir,
                    prep, data_cfg.num_workers, progress)


def make_val_dataset(cases: Sequence, prep: Preprocessing, cache: str = "memory",
                     cache_dir: str | Path | None = None, num_workers: int = 0,
                     progress: bool = False):
    """Validation dataset of whole preprocessed volumes (cached; no random transforms).

    Returns:
        A MONAI dataset; items ``{"image": MetaTensor (C, X, Y, Z), "label": MetaTensor
        (1, X, Y, Z), "case_id": str}`` in the preprocessed space.
    """
    return _dataset(case_dicts(cases), val_transforms(prep), cache, cache_dir, prep, num_workers, progress)
