"""Reading scans, writing segmentations in the scan's geometry, finding scans in a folder.

Importing this package imports no torch or MONAI: the MONAI readers live in
:mod:`medresunet.io.readers` (``make_loader`` here imports it on first call).
"""

from __future__ import annotations

from medresunet.io.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from medresunet.io.dicom import SeriesInfo, find_series, select_series
from medresunet.io.discovery import ScanRef, case_id_from_path, discover_scans
from medresunet.io.geometry import Geometry
from medresunet.io.reading import read_geometry, read_volume, scan_kind
from medresunet.io.writing import write_probabilities, write_segmentation


def make_loader(keys, series_uid: str | None = None, allow_missing_keys: bool = False,
                **kwargs):
    """MONAI ``LoadImaged`` with the project's readers; see :func:`medresunet.io.readers.make_loader`."""
    from medresunet.io.readers import make_loader as _make_loader

    return _make_loader(keys, series_uid=series_uid, allow_missing_keys=allow_missing_keys,
                        **kwargs)


__all__ = [
    "Geometry", "ScanRef", "SeriesInfo", "atomic_path", "case_id_from_path", "discover_scans",
    "find_series", "make_loader", "read_geometry", "read_volume", "scan_kind",
    "select_series", "write_bytes_atomic", "write_probabilities", "write_segmentation",
    "write_text_atomic",
]
