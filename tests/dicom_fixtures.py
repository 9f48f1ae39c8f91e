"""Tiny DICOM series for tests: the library's writer, plus the faults the reader must refuse.

A volume is given in index order ``(I, J, K)`` (columns, rows, slices) with a 4x4
voxel -> RAS mm affine, exactly like a NIfTI twin written with ``synthetic.write_nifti``;
so voxel ``(i, j, k)`` of the series lies at ``affine @ (i, j, k, 1)`` as long as the
affine is right-handed (readers stack slices along ``row x column``). The slices come from
:func:`medresunet.io.dicom_export.series_slices` (the project's one DICOM series writer);
this module only drops or tilts slices, names the files in a shuffled order and lets
several series share a folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medresunet.io.dicom_export import SeriesIdentity, series_slices


def write_dicom_series(folder, volume, affine, *, series_uid: str | None = None,
                       study_uid: str | None = None, modality: str = "CT",
                       description: str = "test series", skip_slices=(),
                       tilt_slice: int | None = None, prefix: str = "IM") -> list[Path]:
    """Write ``volume (I, J, K)`` as a single-frame DICOM series, one file a slice, into ``folder``.

    Args:
        folder: output folder (created; may hold other series already).
        volume: intensities (HU for CT, non-negative for MR) in index order ``(I, J, K)``.
        affine: 4x4 voxel -> RAS mm (a sheared one writes a gantry-tilted series).
        series_uid, study_uid: default: new random UIDs.
        modality: ``CT`` (rescaled HU) or ``MR`` (no rescale tags).
        skip_slices: slice indices not written (makes a gap).
        tilt_slice: a slice index written with a rotated ImageOrientationPatient.
        prefix: file name prefix (files are named in a shuffled order on purpose).

    Returns:
        The written files.
    """
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    identity = SeriesIdentity(modality=modality, patient_id="PHANTOM", series_description=description,
                              series_uid=series_uid or generate_uid(), study_uid=study_uid or generate_uid())
    slices = series_slices(np.asarray(volume), affine, identity)
    order = np.random.default_rng(0).permutation(len(slices))  # file names not in slice order
    paths = []
    for k, ds in enumerate(slices):
        if k in skip_slices:
            continue
        if tilt_slice is not None and k == tilt_slice:
            c, s = np.cos(0.2), np.sin(0.2)
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in (c, s, 0.0, -s, c, 0.0)]
        path = folder / f"{prefix}{order[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
