"""The geometry of a scan: its voxel grid and where that grid lies in the world (RAS+ mm).

A :class:`Geometry` travels with every array read from disk, and a segmentation written
with it overlays the scan in any viewer: same shape, same voxel -> world affine, and for
NIfTI input the same qform/sform and codes. It is the one round-trip type between reader
and writer (nnU-Net's ``props``): ``read_volume`` returns it, ``write_segmentation`` takes
it, and a scan loaded through MONAI carries it in its metadata (:meth:`Geometry.to_meta`,
:meth:`Geometry.from_meta`), so the output geometry is never re-read from the header.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOURCES = ("nifti", "dicom", "itk")
META_KEY = "medresunet_geometry"
"""The MetaTensor metadata key under which a loaded scan carries its reader's Geometry."""

# SimpleITK / DICOM describe the world in LPS; RAS = diag(-1, -1, 1) @ LPS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Geometry:
    """Voxel grid and voxel -> RAS+ mm transform of one scan.

    Attributes:
        shape: spatial shape in file voxel order (2 or 3 dims).
        affine: ``(4, 4)`` voxel index -> RAS+ world mm (a 2D file gets a 4x4 too; its
            third column is then unused).
        source: ``"nifti"``, ``"dicom"`` or ``"itk"`` (NRRD, MHA/MHD).
        qform: NIfTI qform matrix ``(4, 4)`` or None (non-NIfTI input or no qform).
        qform_code: NIfTI qform code (0 for non-NIfTI input).
        sform: NIfTI sform matrix ``(4, 4)`` or None.
        sform_code: NIfTI sform code (0 for non-NIfTI input).
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    source: str
    qform: np.ndarray | None = None
    qform_code: int = 0
    sform: np.ndarray | None = None
    sform_code: int = 0

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ValueError(f"Geometry.shape must have 2 or 3 positive dims, got {self.shape}")
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"Geometry.affine must be 4x4, got shape {affine.shape}")
        if self.source not in SOURCES:
            raise ValueError(f"Geometry.source must be one of {SOURCES}, got {self.source!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", affine)
        for name in ("qform", "sform"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.array(value, dtype=np.float64))
        object.__setattr__(self, "qform_code", int(self.qform_code))
        object.__setattr__(self, "sform_code", int(self.sform_code))

    @property
    def ndim(self) -> int:
        """Number of spatial dims (2 or 3)."""
        return len(self.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per voxel axis (norms of the affine's columns), ``ndim`` values."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(n) for n in norms[: self.ndim])

    def same_grid(self, other: Geometry, atol: float = 1e-4) -> bool:
        """True if ``other`` has the same shape and (within ``atol`` mm) the same affine."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def to_meta(self) -> dict:
        """The geometry as plain values (lists, arrays, str, int) for a MetaTensor's metadata."""
        return {"shape": list(self.shape), "affine": self.affine.copy(), "source": self.source,
                "qform": None if self.qform is None else self.qform.copy(), "qform_code": self.qform_code,
                "sform": None if self.sform is None else self.sform.copy(), "sform_code": self.sform_code}

    @classmethod
    def from_meta(cls, meta: dict) -> Geometry:
        """The reader's geometry from a loaded scan's metadata (``meta[META_KEY]``).

        Raises:
            KeyError: the metadata was not written by the project's readers.
        """
        values = dict(meta[META_KEY])
        return cls(shape=tuple(int(s) for s in values["shape"]), affine=np.asarray(values["affine"]),
                   source=str(values["source"]), qform=values.get("qform"),
                   qform_code=int(values.get("qform_code", 0)), sform=values.get("sform"),
                   sform_code=int(values.get("sform_code", 0)))

    def describe(self) -> str:
        """One line for messages: shape, spacing (mm) and origin (RAS mm)."""
        sp = "x".join(f"{s:.4g}" for s in self.spacing)
        org = ", ".join(f"{v:.4g}" for v in self.affine[:3, 3])
        return f"shape {self.shape}, spacing {sp} mm, origin ({org}) RAS mm"


def has_shear(affine: np.ndarray, atol: float = 1e-5) -> bool:
    """True if the ``(4, 4)`` affine is not rotation x scaling (its columns are not orthogonal).

    A gantry-tilted CT series is the common case: its slices stack obliquely to their
    normal. A NIfTI qform (a quaternion and per-axis spacing) cannot represent such an
    affine; only the sform can.
    """
    cols = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    if np.any(norms == 0):
        return True
    unit = cols / norms
    return not np.allclose(unit.T @ unit, np.eye(3), atol=atol)


def affine_from_lps(direction: np.ndarray, spacing, origin) -> np.ndarray:
    """A 4x4 voxel -> RAS affine from ITK/DICOM LPS direction (d x d), spacing and origin.

    Args:
        direction: ``(d, d)`` direction cosines (columns are the voxel axes), LPS.
        spacing: ``d`` voxel sizes in mm.
        origin: ``d`` world LPS mm of voxel 0.

    Returns:
        ``(4, 4)`` affine in RAS+ mm; for ``d == 2`` the third axis is the unit S axis.
    """
    direction = np.asarray(direction, dtype=np.float64)
    d = direction.shape[0]
    lps = np.eye(4)
    lps[:d, :d] = direction @ np.diag(np.asarray(spacing, dtype=np.float64))
    lps[:d, 3] = np.asarray(origin, dtype=np.float64)[:d]
    return LPS_TO_RAS @ lps
