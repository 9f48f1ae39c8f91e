"""Checks of a dataset's files before training: readable, on one grid, valid label values.

:func:`check_cases` reads every image and every label volume once and raises a
single :class:`~medresunet.errors.ManifestError` listing every bad case with its file and
the problem (expected vs got), so that a user fixes the whole dataset in one pass instead
of meeting the problems one crash at a time mid-training. Imports no torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from medresunet.errors import ManifestError, ScanError
from medresunet.io.geometry import Geometry
from medresunet.manifest import Case

log = logging.getLogger(__name__)

AFFINE_ATOL_MM = 1e-3
_MAX_LISTED = 50
_MAX_VALUES = 8


def _grid_problem(geo: Geometry, ref: Geometry, ref_name: str) -> str | None:
    """Why ``geo`` is not on ``ref``'s grid (shape, affine within 1e-3 mm), or None."""
    if tuple(geo.shape) != tuple(ref.shape):
        return f"expected the grid of {ref_name} (shape {tuple(ref.shape)}), got shape {tuple(geo.shape)}"
    diff = float(np.max(np.abs(np.asarray(geo.affine) - np.asarray(ref.affine))))
    if diff > AFFINE_ATOL_MM:
        return (f"expected the grid of {ref_name} (affine equal within {AFFINE_ATOL_MM} mm), got an "
                f"affine differing by up to {diff:.4g} mm: {np.round(geo.affine, 4).tolist()} vs "
                f"{np.round(ref.affine, 4).tolist()}")
    return None


def _show(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:_MAX_VALUES])
    return f"[{shown}{', ...' if len(values) > _MAX_VALUES else ''}]"


def _label_value_problems(array: np.ndarray, allowed: set[int]) -> list[str]:
    problems = []
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        return [f"expected an integer label volume, got dtype {array.dtype}"]
    values = np.unique(array)
    if array.dtype.kind == "f":
        fractional = values[values != np.round(values)]
        if fractional.size:
            problems.append(f"expected integer label values, got non-integer values {_show(fractional)} "
                            f"(dtype {array.dtype}); save the label with an integer type")
            values = values[values == np.round(values)]
    outside = np.array([v for v in values if int(v) not in allowed])
    if outside.size:
        problems.append(f"expected values in the label map {sorted(allowed)}, got {_show(outside)}; "
                        "add them to 'labels' or fix the label file")
    return problems


def _check_case(case: Case, allowed: set[int], n_channels: int) -> list[str]:
    from medresunet.io.reading import read_volume

    problems: list[str] = []
    if len(case.images) != n_channels:
        problems.append(f"expected {n_channels} image(s), one per channel, got {len(case.images)}")
    ref: Geometry | None = None
    ref_name = ""
    for index, image in enumerate(case.images):
        try:
            array, geo = read_volume(image)  # in full: truncated/corrupt data, NaN/Inf voxels
        except ScanError as err:
            problems.append(f"image {image}: unreadable: {err}")
            continue
        if array.size and np.ptp(array) == 0:  # suspicious, not fatal: warn and go on
            log.warning("case %r: image %s: every voxel has the value %g; expected a scan with "
                        "contrast (an empty or failed export?)", case.case_id, image, array.flat[0])
        del array
        if ref is None:
            ref, ref_name = geo, f"image {image}"
            continue
        why = _grid_problem(geo, ref, ref_name)
        if why:
            problems.append(f"image {image} (channel {index}): {why}; resample the channels onto one grid")
    if case.label is None:
        return problems
    try:
        array, geo = read_volume(case.label)
    except ScanError as err:
        problems.append(f"label {case.label}: unreadable: {err}")
        return problems
    if ref is not None:
        why = _grid_problem(geo, ref, ref_name)
        if why:
            problems.append(f"label {case.label}: {why}; resample the label onto the image grid")
    problems += [f"label {case.label}: {p}" for p in _label_value_problems(array, allowed)]
    return problems


def check_cases(cases: Sequence[Case], labels: Mapping[str, int], n_channels: int,
                progress: bool = False) -> None:
    """Check the files of ``cases`` against each other and the label map.

    Checks, per case: the number of images is ``n_channels``; every image (file or DICOM
    folder) and the label are readable; all channels share one grid (same shape, affines
    equal within 1e-3 mm); the label lies on the image grid; label values are integers
    and in ``labels``. Images and labels are read in full, so that truncated or corrupt
    voxel data, NaN/Inf intensities are found before training (an all-constant image is
    logged as a warning).

    Args:
        cases: the cases to check (e.g. ``Manifest.cases`` or a training split).
        labels: label name -> integer value (the manifest's map).
        n_channels: expected number of input channels per case.
        progress: show a progress bar on stderr.

    Raises:
        ManifestError: one error listing every bad case, its file and its problem.
    """
    from tqdm.auto import tqdm

    allowed = {int(v) for v in labels.values()}
    bad: list[str] = []
    n_bad = 0
    for case in tqdm(cases, desc="checking cases", unit="case", disable=not progress):
        problems = _check_case(case, allowed, n_channels)
        if problems:
            n_bad += 1
            bad += [f"case {case.case_id!r}: {p}" for p in problems]
    if len(bad) == 1:  # one problem: one line
        raise ManifestError(f"1 of {len(cases)} case(s) failed the dataset checks: {bad[0]}")
    if bad:
        shown = bad[:_MAX_LISTED]
        more = [f"... and {len(bad) - len(shown)} more"] if len(bad) > len(shown) else []
        lines = "\n  ".join(shown + more)
        raise ManifestError(f"{n_bad} of {len(cases)} case(s) failed the dataset checks:\n  {lines}")
    log.info("dataset checks passed for %d case(s)", len(cases))

