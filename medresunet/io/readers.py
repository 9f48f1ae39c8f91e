"""MONAI ImageReaders for the project's scan formats, and the loader that registers them.

Both readers delegate to :func:`medresunet.io.reading.read_volume`, so a scan loaded by
``LoadImaged`` has exactly the array and geometry that ``read_volume`` gives:

* :class:`NiftiReader` (a :class:`monai.data.NibabelReader`): ``.nii``/``.nii.gz`` via nibabel,
  scl_slope/inter applied, affine = nibabel's (sform if its code > 0, else qform).
* :class:`SimpleITKReader`: DICOM series folders, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd`` via
  SimpleITK; LPS origin/direction converted to RAS; array in index order (i, j, k).

``MetaTensor.affine`` is voxel -> RAS+ mm, and ``meta["medresunet_geometry"]`` the reader's
whole :class:`~medresunet.io.Geometry` (``Geometry.from_meta``), what the writer needs. A file that cannot be read raises
:class:`~medresunet.errors.ScanError` naming it (``LoadImaged`` itself lets it through;
inside ``Compose`` MONAI wraps it in a RuntimeError whose ``__cause__`` is the ScanError).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader, NibabelReader
from monai.transforms import LoadImaged
from monai.utils import ensure_tuple

from medresunet.errors import ScanError
from medresunet.io.geometry import META_KEY
from medresunet.io.reading import read_volume, scan_kind

_META_AFFINE = "affine"


def _kinds(filename) -> list[str | None]:
    return [scan_kind(f) for f in ensure_tuple(filename)]


class _ReadVolumeMixin:
    """``read``/``get_data`` through :func:`read_volume`; channels stacked on a new axis 0."""

    series_uid: str | None = None

    def read(self, data, **kwargs):
        return [(Path(f), *read_volume(f, self.series_uid)) for f in ensure_tuple(data)]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        items = list(img)
        first_path, first_array, first_geom = items[0]
        for path, _, geom in items[1:]:
            if not first_geom.same_grid(geom):
                raise ScanError(f"{path}: channel grid {geom.describe()} differs from "
                                f"{first_path}: {first_geom.describe()}; resample the "
                                "channels onto one grid first")
        meta = {
            _META_AFFINE: first_geom.affine.copy(),
            "original_affine": first_geom.affine.copy(),
            "spatial_shape": np.asarray(first_geom.shape),
            "space": "RAS",
            "original_channel_dim": float("nan"),
            "medresunet_source": first_geom.source,
            "filename_or_obj": str(first_path),
            META_KEY: first_geom.to_meta(),  # the writer's geometry, as the reader found it
        }
        if len(items) == 1:
            return first_array, meta
        meta["original_channel_dim"] = 0
        dtype = np.result_type(*[a.dtype for _, a, _ in items])
        return np.stack([a.astype(dtype, copy=False) for _, a, _ in items], axis=0), meta


class NiftiReader(_ReadVolumeMixin, NibabelReader):
    """NIfTI (``.nii``, ``.nii.gz``) through nibabel, with ScanError on any failure."""

    def __init__(self, series_uid: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.series_uid = None

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        return all(k == "nifti" for k in _kinds(filename))


class SimpleITKReader(_ReadVolumeMixin, ImageReader):
    """DICOM series folders, NRRD and MHA/MHD through SimpleITK (RAS affine, i,j,k order).

    Args:
        series_uid: SeriesInstanceUID to read from a DICOM folder holding several series
            (default: the series with most slices, logged).
    """

    def __init__(self, series_uid: str | None = None) -> None:
        super().__init__()
        self.series_uid = series_uid

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        kinds = _kinds(filename)
        # Mixed lists (a NIfTI channel next to a DICOM one) are read here too.
        return all(k is not None for k in kinds) and any(k != "nifti" for k in kinds)


def make_loader(keys, series_uid: str | None = None, allow_missing_keys: bool = False,
                dtype=np.float32) -> LoadImaged:
    """``LoadImaged(keys, image_only=True)`` with :class:`NiftiReader` and :class:`SimpleITKReader`.

    Each key holds a path (file or DICOM folder) or a list of paths (channels, stacked on
    a new first axis). The result is a MetaTensor ``(*spatial)`` or ``(C, *spatial)`` with
    ``.affine`` voxel -> RAS+ mm.

    Args:
        keys: dict keys to load.
        series_uid: SeriesInstanceUID to read from DICOM folders with several series.
        allow_missing_keys: skip absent keys instead of raising.
        dtype: array dtype (default float32; None keeps the stored type).
    """
    with warnings.catch_warnings():  # MONAI's optional GPU DICOM reader warns when absent
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        loader = LoadImaged(keys, image_only=True, dtype=dtype,
                            allow_missing_keys=allow_missing_keys)
    loader.register(NiftiReader())
    loader.register(SimpleITKReader(series_uid=series_uid))
    return loader
