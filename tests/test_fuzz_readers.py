"""Bounded fuzzing of the readers (issue 7): mutated NIfTI headers and bytes, mutated DICOM.

Whatever the bytes, :func:`read_geometry` / :func:`read_volume` either succeed or raise the
project's :class:`~medresunet.errors.ScanError` (one clear message naming the file): never
an IndexError, ValueError, struct.error, MemoryError from a huge mutated dimension, nor a
hang. Marked slow; the example counts keep it to seconds on two cores.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from medresunet.errors import ScanError
from medresunet.io import read_geometry, read_volume
from tests.synthetic import make_affine, write_nifti

_WORK = Path(tempfile.mkdtemp(prefix="medresunet-fuzz-"))


def _tiny_nifti_bytes() -> bytes:
    path = write_nifti(_WORK / "seed.nii", np.arange(24, dtype=np.int16).reshape(4, 3, 2),
                       make_affine("oblique", (1.0, 1.2, 2.0)), dtype=np.int16, slope=2.0, inter=1.0)
    return path.read_bytes()


def _tiny_dicom_folder() -> Path:
    from tests.dicom_fixtures import write_dicom_series

    folder = _WORK / "dicom_seed"
    write_dicom_series(folder, np.arange(4 * 3 * 2, dtype=float).reshape(4, 3, 2) * 10,
                       make_affine("lps", (0.8, 0.8, 2.0)))
    return folder


NIFTI = _tiny_nifti_bytes()
HEADER = 352  # NIfTI-1 header + extension flag
DICOM_SEED = _tiny_dicom_folder()

mutations = st.lists(st.tuples(st.integers(0, HEADER - 1), st.integers(0, 255)), min_size=1, max_size=8)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _mutate(data: bytes, changes, cut: int | None = None) -> bytes:
    out = bytearray(data)
    for offset, value in changes:
        if offset < len(out):
            out[offset] = value
    return bytes(out[:cut] if cut is not None else out)


def _read_both(path: Path) -> None:
    for read in (read_geometry, read_volume):
        try:
            read(path)
        except ScanError as err:
            assert str(path) in str(err), err


@pytest.mark.slow
@FUZZ
@given(changes=mutations, cut=st.one_of(st.none(), st.integers(0, len(NIFTI))), gz=st.booleans())
@example(changes=[(42, 0)], cut=None, gz=False)  # dim[1] = 0: an empty axis
@example(changes=[(259, 63)], cut=None, gz=False)  # quatern_b > 1: no valid quaternion
def test_mutated_nifti_header(changes, cut, gz):
    data = _mutate(NIFTI, changes, cut)
    path = _WORK / ("m.nii.gz" if gz else "m.nii")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    _read_both(path)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(changes=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_gzip_bytes(changes):
    blob = gzip.compress(NIFTI, mtime=0)
    path = _WORK / "b.nii.gz"
    path.write_bytes(_mutate(blob, changes))
    _read_both(path)


@pytest.mark.slow
@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(changes=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6),
       which=st.integers(0, 1), cut=st.one_of(st.none(), st.integers(0, 2000)))
def test_mutated_dicom(changes, which, cut):
    folder = _WORK / "dicom"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(DICOM_SEED, folder)
    victim = sorted(folder.iterdir())[which]
    victim.write_bytes(_mutate(victim.read_bytes(), changes, cut))
    _read_both(folder)


@pytest.mark.parametrize("dims", [(3, 32767, 32767, 32767), (3, 30000, 30000, 1), (4, 4, 3, 2, 32767)])
def test_huge_dimensions_are_refused_before_any_allocation(tmp_path, dims):
    data = bytearray(NIFTI)
    data[40:56] = struct.pack("<8h", *dims, *([1] * (8 - len(dims))))
    for name, blob in (("h.nii", bytes(data)), ("h.nii.gz", gzip.compress(bytes(data), mtime=0))):
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(ScanError, match="truncated NIfTI data|expected a 2D or 3D scan"):
            read_volume(path)
