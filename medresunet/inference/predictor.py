"""Predictor: a checkpoint + a scan -> the label volume on the scan's original grid.

The flow (DESIGN.md section 3): the checkpoint's own preprocessing (never a config) ->
Gaussian sliding-window logits -> softmax probabilities (averaged over flips with TTA) ->
the recorded preprocessing inverted on the probabilities (linear interpolation of
probabilities, as nnU-Net resamples them: slab by slab with separable interpolation in
:mod:`medresunet.inference.resample_back`, else MONAI ``Invertd``) -> argmax -> optional
postprocessing. The result has exactly the scan's shape; the writer takes the geometry
that the reader returned (carried in the loaded image's metadata, not read again), so only
the array content depends on the inversion.

Loading (:meth:`Predictor.load`) and predicting (:meth:`Predictor.predict_loaded`) are separate
steps so that a caller can preprocess the next scan in a thread while the current one runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medresunet.errors import CheckpointError, ScanError
from medresunet.inference import memory as mem
from medresunet.inference.postprocess import postprocess
from medresunet.inference.resample_back import invert_to_scan
from medresunet.inference.sliding import fallback_for, sliding_window_logits
from medresunet.inference.tta import predict_probabilities, tta_axes

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


@dataclass
class LoadedScan:
    """A preprocessed scan ready for the network.

    Attributes:
        paths: the input files (one per channel).
        data: the transform output; ``data["image"]`` is a MetaTensor ``(C, *spatial)`` with
            its applied operations recorded for the inversion.
        geometry: the first channel's :class:`~medresunet.io.Geometry` (the output grid).
        seconds: time spent loading and preprocessing.
        transforms: the ``Compose`` that produced ``data`` (inverted afterwards).
    """

    paths: tuple[Path, ...]
    data: dict[str, Any]
    geometry: Any
    seconds: float
    transforms: Any = None


@dataclass
class Prediction:
    """Labels ``(*geometry.shape)`` and optionally probabilities ``(K, *geometry.shape)``.

    ``memory`` says how the scan ran: window batch, where the stitching buffer lived
    (``host`` or the compute ``device``), its dtype, and the out-of-memory fallbacks this scan
    took.
    """

    labels: np.ndarray
    geometry: Any
    probabilities: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)


def _scan_error(err: BaseException) -> ScanError | None:
    """The ScanError in ``err``'s cause/context chain (MONAI wraps reader errors)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ScanError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a timing covers it (no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _infer_defaults(checkpoint: dict[str, Any]) -> dict[str, Any]:
    infer = checkpoint.get("infer") or {}
    return {
        "overlap": float(infer.get("overlap", 0.5)),
        "sw_batch_size": int(infer.get("sw_batch_size", 2)),
        "tta": bool(infer.get("tta", False)),
        "precision": str(infer.get("precision", "auto")),
        "largest_component": bool(infer.get("largest_component", False)),
        "min_component_ml": float(infer.get("min_component_ml", 0.0)),
    }


class Predictor:
    """Segment scans with a trained checkpoint.

    Args:
        checkpoint: the dict from :func:`medresunet.training.checkpoint.load_checkpoint`.
        device: ``auto|cpu|cuda|cuda:N`` or a ``torch.device``.
        overlap: sliding-window overlap in ``[0, 1)`` (default: the checkpoint's ``infer``).
        sw_batch_size: windows per forward pass (default: the checkpoint's).
        tta: average over mirror flips (default: the checkpoint's).
        precision: ``auto|fp32|bf16|fp16`` (default: the checkpoint's; resolved per device).
        stitch_device: ``auto|cpu|same``, see :func:`sliding_window_logits`.
        stitch_dtype: ``auto|fp32|fp16``: the stitching buffer's and flip accumulation's dtype
            (``auto``: float16 on CUDA for large ``classes x voxels``).
        memory: the out-of-memory fallback state (default: a new one for ``stitch_device``);
            the Predictor keeps it across scans, so a fallback taken once holds for the batch.
        largest_component: keep the largest component per label (default: the checkpoint's).
        min_component_ml: drop components below this volume in mL (default: the checkpoint's).
        model: a network to use instead of the checkpoint's weights (tests, custom models);
            it maps ``(B, C, *window)`` to logits ``(B, K, *window)``.
        progress: show MONAI's per-window progress bar.

    Raises:
        CheckpointError: the checkpoint's preprocessing or model cannot be rebuilt.
    """

    def __init__(self, checkpoint: dict[str, Any], device: Any = "auto", overlap: float | None = None,
                 sw_batch_size: int | None = None, tta: bool | None = None,
                 precision: str | None = None, stitch_device: str = "auto",
                 largest_component: bool | None = None, min_component_ml: float | None = None,
                 model: Any = None, progress: bool = False, stitch_dtype: str = "auto",
                 memory: mem.OomFallback | None = None) -> None:
        from medresunet.data.preprocessing import Preprocessing
        from medresunet.data.transforms import background_value, inference_transforms
        from medresunet.devices import resolve_device, resolve_precision

        defaults = _infer_defaults(checkpoint)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.overlap = defaults["overlap"] if overlap is None else float(overlap)
        self.sw_batch_size = defaults["sw_batch_size"] if sw_batch_size is None else int(sw_batch_size)
        self.tta = defaults["tta"] if tta is None else bool(tta)
        self.precision = resolve_precision(defaults["precision"] if precision is None else precision,
                                           self.device)
        self.largest_component = (defaults["largest_component"] if largest_component is None
                                  else bool(largest_component))
        self.min_component_ml = (defaults["min_component_ml"] if min_component_ml is None
                                 else float(min_component_ml))
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap: expected a value in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size: expected >= 1, got {self.sw_batch_size}")
        self.stitch_device = stitch_device
        self.memory = fallback_for(stitch_device, self.sw_batch_size, memory)
        mem.stitch_dtype(stitch_dtype, 0, self.device)  # validates the choice
        self.stitch_dtype = stitch_dtype
        self.progress = progress
        try:
            self.preprocessing = Preprocessing.from_dict(checkpoint["preprocessing"])
            self.labels = {str(k): int(v) for k, v in dict(checkpoint["labels"]).items()}
            self.input_channels = [str(c) for c in checkpoint["input_channels"]]
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint preprocessing/labels/input_channels are invalid: {err}") from err
        self.network_dims = int(self.preprocessing.spatial_dims)
        self.patch_size = tuple(int(p) for p in self.preprocessing.patch_size)
        if model is None:
            from medresunet.training.checkpoint import model_from_checkpoint

            model = model_from_checkpoint(checkpoint)
            if self.device.type == "cpu":
                # oneDNN runs channels-last convolutions 1.6x faster than NC(D)HW here
                # (benchmarks/RESULTS.md); the network converts its input to match. CUDA
                # keeps the default layout: not measured there yet.
                fmt = torch.channels_last_3d if self.network_dims == 3 else torch.channels_last
                model = model.to(memory_format=fmt)
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one window size: each shape is timed once
        self.model = model
        self._inference_transforms = inference_transforms
        self._background_value = background_value
        self._transforms: dict[str | None, Any] = {}

    def transforms(self, series_uid: str | None = None) -> Any:
        """The checkpoint's inference ``Compose`` (one per DICOM series choice, cached)."""
        if series_uid not in self._transforms:
            self._transforms[series_uid] = self._inference_transforms(self.preprocessing,
                                                                      series_uid=series_uid)
        return self._transforms[series_uid]

    @classmethod
    def from_file(cls, path: PathLike, **kwargs: Any) -> Predictor:
        """Load a checkpoint file (:func:`load_checkpoint`) and build a Predictor on it."""
        from medresunet.training.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        try:
            return cls(checkpoint, **kwargs)
        except CheckpointError as err:  # the dict does not know its file; the user does
            if str(path) in str(err):
                raise
            raise CheckpointError(f"{path}: {err}") from err

    def settings(self) -> dict[str, Any]:
        """The inference settings as plain values (for run records)."""
        return {"device": str(self.device), "precision": self.precision, "overlap": self.overlap,
                "sw_batch_size": self.sw_batch_size, "tta": self.tta, "stitch_device": self.stitch_device,
                "largest_component": self.largest_component, "min_component_ml": self.min_component_ml}

    @property
    def n_classes(self) -> int:
        """Number of output classes (background included)."""
        return max(self.labels.values()) + 1 if self.labels else 0

    # ------------------------------------------------------------------ loading
    def load(self, image_paths: Sequence[PathLike] | PathLike, series_uid: str | None = None) -> LoadedScan:
        """Read and preprocess one case (one path per input channel).

        Raises:
            ScanError: unreadable file, wrong channel count, wrong dimensionality, NaN voxels,
                or a preprocessing failure; the message starts with the path.
        """
        from medresunet.io import read_geometry
        from medresunet.io.geometry import Geometry

        if isinstance(image_paths, (str, os.PathLike)):
            image_paths = [image_paths]
        paths = tuple(Path(p) for p in image_paths)
        if not paths:
            raise ValueError("Predictor.load: expected one image path per input channel, got none")
        first = paths[0]
        n = len(self.input_channels)
        if len(paths) != n:
            raise ScanError(
                f"{first}: wrong channel count: the model expects {n} input channel(s) "
                f"({', '.join(self.input_channels)}), got {len(paths)} image(s); give one image per "
                "channel (a manifest for multi-channel cases)")
        start = time.perf_counter()
        try:
            transforms = self.transforms(series_uid)
            data = transforms({"image": [str(p) for p in paths]})
        except Exception as err:  # MONAI wraps reader errors in RuntimeError
            read_geometry(first, series_uid)  # a header problem: named as the header read names it
            inner = _scan_error(err)
            if inner is not None:
                raise ScanError(str(inner)) from err
            reason = " ".join(str(err).split())[-300:]
            raise ScanError(f"{first}: preprocessing failed ({type(err).__name__}: {reason})") from err
        image = data["image"]
        geometry = Geometry.from_meta(image.meta)  # what the reader returned: no second header read
        spatial = tuple(image.shape[1:])
        if image.ndim - 1 not in (2, 3) or image.shape[0] != n:
            raise ScanError(
                f"{first}: wrong channel count or dimensionality: expected {n} channel(s) of a 2D or "
                f"3D scan, got a preprocessed array of shape {tuple(image.shape)}; give 3D (or 2D) "
                "scans with one file per channel")
        if not bool(torch.isfinite(torch.as_tensor(image)).all()):
            raise ScanError(f"{first}: NaN or infinite voxel values after preprocessing; expected "
                            "finite intensities")
        if min(spatial) < 1:
            raise ScanError(f"{first}: empty image after preprocessing (shape {spatial})")
        flat = torch.as_tensor(image).reshape(n, -1)
        low, high = torch.aminmax(flat, dim=1)  # one pass over the image
        for c in torch.nonzero(low == high).flatten().tolist():
            # not an error (an empty phantom, a blank slab), but nothing to segment either
            log.warning("%s: channel %d (%s) is constant after preprocessing (every voxel %.4g): "
                        "the segmentation carries no information; check the scan", paths[min(c, len(paths) - 1)],
                        c, self.input_channels[c], float(flat[c, 0]))
        return LoadedScan(paths, data, geometry, time.perf_counter() - start, transforms)

    # --------------------------------------------------------------- prediction
    def background(self, image: Any) -> list[float]:
        """Normalised background per channel: the image's own where its normalisation recorded
        one (z-score), else the checkpoint's (CT: the clipped air value)."""
        return [float(self._background_value(self.preprocessing, c, image))
                for c in range(len(self.input_channels))]

    def _logits(self, image: torch.Tensor, cval: Sequence[float], plan: mem.MemoryPlan) -> torch.Tensor:
        """``(1, C, *spatial)`` -> ``(1, K, *spatial)`` logits on the plan's stitching device."""
        squeeze = image.ndim - 2 == 2 and self.network_dims == 3
        if squeeze:
            image = image.unsqueeze(-1)
        out = sliding_window_logits(
            image, self.model, self.patch_size, network_dims=self.network_dims, overlap=self.overlap,
            sw_batch_size=plan.sw_batch_size, cval=cval, device=self.device, precision=self.precision,
            stitch_dtype=self.stitch_dtype, progress=self.progress, plan=plan)
        return out[..., 0] if squeeze else out

    def _probabilities_on(self, image: torch.Tensor, plan: mem.MemoryPlan) -> torch.Tensor:
        """``(K, *spatial)`` probabilities on the plan's device (float32 or float16): one attempt."""
        cval = self.background(image)
        batch = torch.as_tensor(image).as_subclass(torch.Tensor).float()[None]
        axes = tta_axes(batch.ndim - 2, self.network_dims) if self.tta else ()
        return predict_probabilities(lambda x: self._logits(x, cval, plan), batch, axes)[0]

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(K, *spatial)`` (CPU, float32) of a preprocessed image.

        Args:
            image: ``(C, *spatial)`` preprocessed tensor.
        """
        n_voxels = int(np.prod(image.shape[1:]))
        return mem.run_with_fallback(lambda plan: self._probabilities_on(image, plan).cpu().float(),
                                     self.memory, n_voxels, self.device)

    def _attempt(self, scan: LoadedScan, plan: mem.MemoryPlan,
                 return_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """Network, softmax, flips, inversion and argmax of one scan under ``plan``."""
        start = time.perf_counter()
        probs = self._probabilities_on(scan.data["image"], plan)
        _synchronize(self.device)
        network = time.perf_counter() - start
        start = time.perf_counter()
        try:  # on probs' device: the slab-wise path runs on the GPU too
            labels, full = invert_to_scan(probs, scan.data["image"], scan.transforms or self.transforms(),
                                          tuple(scan.geometry.shape), return_probabilities)
        except ValueError as err:
            raise ScanError(f"{scan.paths[0]}: {err}") from err
        info = {"network": network, "invert": time.perf_counter() - start, "dtype": str(probs.dtype)}
        return labels, full, info

    def predict_loaded(self, scan: LoadedScan, return_probabilities: bool = False) -> Prediction:
        """Predict a scan from :meth:`load`; labels on the scan's original grid.

        Out of memory on the GPU, the scan is run again with a smaller window batch, then with
        the stitching on the host (:mod:`medresunet.inference.memory`); the choice holds for
        the following scans of this Predictor.
        """
        n_events = len(self.memory.events)
        used: list[mem.MemoryPlan] = []

        def attempt(plan: mem.MemoryPlan) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
            used.append(plan)
            return self._attempt(scan, plan, return_probabilities)

        n_voxels = int(np.prod(scan.data["image"].shape[1:]))
        labels, full, info = mem.run_with_fallback(attempt, self.memory, n_voxels, self.device,
                                                   scan.paths[0].name)
        times = {"load": scan.seconds, "network": info["network"], "invert": info["invert"]}
        memory = {"sw_batch_size": used[-1].sw_batch_size,
                  "stitching": "host" if used[-1].on_host else "device",
                  "stitch_dtype": info["dtype"].replace("torch.", ""),
                  "fallbacks": self.memory.events[n_events:]}
        if self.largest_component or self.min_component_ml > 0:
            start = time.perf_counter()
            spacing = tuple(float(s) for s in np.linalg.norm(scan.geometry.affine[:3, :3], axis=0))
            labels = postprocess(labels, spacing, largest_component=self.largest_component,
                                 min_component_ml=self.min_component_ml)
            times["postprocess"] = time.perf_counter() - start
        return Prediction(labels, scan.geometry, full, times, memory)

    def predict(self, image_paths: Sequence[PathLike] | PathLike, series_uid: str | None = None,
                return_probabilities: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Label volume of one case on its original grid.

        Args:
            image_paths: one scan (file or DICOM folder) per input channel.
            series_uid: the DICOM series to read from folders holding several.
            return_probabilities: also return ``(K, *shape)`` float32 probabilities.

        Returns:
            ``labels`` with ``shape == read_geometry(image_paths[0]).shape`` (uint8), or
            ``(labels, probabilities)``.
        """
        result = self.predict_loaded(self.load(image_paths, series_uid), return_probabilities)
        if return_probabilities:
            return result.labels, result.probabilities
        return result.labels
