"""Inference: a checkpoint loaded once per process, one study's volume and its labs in, a result out."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model.checkpoint import LoadedCheckpoint, load_checkpoint
from model.config import CLASS_NAMES
from model.device import compile_wanted, inference_precision, resolve_device
from model.image_stats import MAX_VOXELS, volume_statistics
from model.preprocess import AIR_HU, StoredVolume, check_volume_shape, preprocess_stored, preprocess_volume


@dataclass(frozen=True)
class PredictionResult:
    probability: float
    """Probability of disease control (CR + PR + SD), calibrated when the checkpoint says so."""
    label: str
    threshold: float
    """The checkpoint's decision threshold on ``probability``, chosen in cross-validation."""
    model_name: str
    model_version: str
    checkpoint_sha256: str
    demo: bool
    missing_features: list[str] = field(default_factory=list)
    slices_used: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    validation: str | None = None
    """The checkpoint's validated AUC with its CI, in words."""
    image_stats: dict[str, float | None] | None = None
    """Statistics of the volume the model read (``model.image_stats``, thickness unknown here), for drift."""


def _statistics_sample(volume: np.ndarray | Tensor | StoredVolume) -> np.ndarray:
    """HU for the image statistics; of stored values, only the in-plane sample the statistics read."""
    if isinstance(volume, Tensor):
        return volume.cpu().numpy()
    if not isinstance(volume, StoredVolume):
        return np.asarray(volume)
    stride = max(1, math.ceil(math.sqrt(volume.values.size / MAX_VOXELS)))
    sample = StoredVolume(
        values=volume.values[..., ::stride, ::stride],
        slope=volume.slope,
        intercept=volume.intercept,
        padding=volume.padding,
    )
    return sample.hu()


class Predictor:
    """Holds the model on its device; ``predict`` is safe to call for many series in turn.

    On CUDA the backbone runs bf16 autocast on channels-last weights (about 1.5x
    the contiguous layout on an H200) and, compiled, always sees batches of
    ``slice_batch`` slices (the last one padded) so one compiled graph serves every
    series: :meth:`warm_up` compiles it before the first job.
    """

    def __init__(
        self,
        loaded: LoadedCheckpoint,
        device: torch.device,
        *,
        bf16: bool = True,
        compile_backbone: bool | None = None,
        channels_last: bool | None = None,
        slice_batch: int = 64,
    ) -> None:
        self.meta = loaded.meta
        self.calibrator = loaded.meta.calibrator
        self.checkpoint_sha256 = loaded.sha256
        self.device = device
        self.model = loaded.model.to(device).eval()
        self.bf16 = bf16
        self.slice_batch = slice_batch
        self.channels_last = device.type == "cuda" if channels_last is None else channels_last
        self.compiled = device.type == "cuda" if compile_backbone is None else compile_backbone
        self.warm_ups = 0
        """Forward passes :meth:`warm_up` has run (a worker runs one at start)."""
        backbone = self.model.backbone
        if backbone is None:
            self.compiled = False
            return
        if self.channels_last:
            backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format; the stubs omit it
        if self.compiled:
            self.model.backbone = torch.compile(backbone, dynamic=False)  # type: ignore[assignment]  # the compiled wrapper runs as the ResNet50 it wraps

    @classmethod
    def load(cls, path: Path, device: str = "auto", compile_mode: str = "off") -> Predictor:
        """``compile_mode`` auto|on|off; off by default: only a long-lived worker earns back a compile."""
        resolved = resolve_device(device)
        return cls(
            load_checkpoint(path, resolved), resolved, compile_backbone=compile_wanted(compile_mode, resolved)
        )

    def _slice_features(self, slices: Tensor) -> Tensor:
        if self.channels_last:
            slices = slices.contiguous(memory_format=torch.channels_last)
        backbone = self.model.backbone
        assert backbone is not None
        parts = []
        for start in range(0, len(slices), self.slice_batch):
            chunk = slices[start : start + self.slice_batch]
            if self.compiled and len(chunk) < self.slice_batch:
                padded = chunk.new_zeros((self.slice_batch, *chunk.shape[1:]))
                if self.channels_last:
                    padded = padded.contiguous(memory_format=torch.channels_last)
                padded[: len(chunk)] = chunk
                parts.append(backbone(padded)[: len(chunk)])
            else:
                parts.append(backbone(chunk))
        return torch.cat(parts).float().unsqueeze(0)

    def _model_input(self, volume_hu: np.ndarray | Tensor | StoredVolume) -> Tensor:
        phases = self.meta.config.phases
        if isinstance(volume_hu, StoredVolume):
            return preprocess_stored(volume_hu, self.meta.preprocess, self.device, phases)
        check_volume_shape(tuple(volume_hu.shape), phases)
        volume = torch.as_tensor(volume_hu, dtype=torch.float32).to(self.device, non_blocking=True)
        return preprocess_volume(volume, self.meta.preprocess, phases)

    def warm_up(self) -> float:
        """One prediction on a blank series (seconds taken), so the first job runs as fast as the rest.

        Compilation, cuDNN's algorithm search and the allocator's growth all
        happen on the first forward pass; a worker runs this at start instead.
        """
        start = time.perf_counter()
        size = self.meta.preprocess.image_size
        slices = self.meta.preprocess.max_slices or self.slice_batch
        phases = self.meta.config.phases
        if len(phases) == 1:
            volume: np.ndarray | StoredVolume = StoredVolume(
                values=np.zeros((slices, size, size), dtype=np.int16),
                slope=np.ones(slices, dtype=np.float32),
                intercept=np.full(slices, AIR_HU, dtype=np.float32),
            )
        else:
            volume = np.full((slices, len(phases), size, size), AIR_HU, dtype=np.float32)
        self.predict(volume, {})
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warm_ups += 1
        return time.perf_counter() - start

    def predict(
        self, volume_hu: np.ndarray | Tensor | StoredVolume, clinical: Mapping[str, object]
    ) -> PredictionResult:
        """``volume_hu`` in HU (or stored values with their rescale), slices ordered along the slice normal.

        (slices, rows, columns) for a single-phase checkpoint; (slices, 3, rows,
        columns) for a three-phase one, channels in ``meta.config.phases`` order
        (the phases resampled onto one set of slice positions). Any other shape is a
        ``ValueError`` naming it and the shape the checkpoint needs.
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        encoded = self.meta.schema.encode(clinical, self.meta.normalization)
        clinical_input = torch.from_numpy(encoded.network_input(self.meta.config.feed_missing_mask))
        clinical_input = clinical_input.unsqueeze(0).to(self.device)
        variant = self.meta.config.variant
        slices_used = 0
        with inference_precision(self.device, self.bf16):
            features = lengths = None
            if variant.uses_image:
                features = self._slice_features(self._model_input(volume_hu))
                slices_used = int(features.shape[1])
                lengths = torch.tensor([slices_used], device=self.device)
                timings["backbone"] = time.perf_counter() - start
            logits = self.model.forward_head(
                self.model.forward_features(
                    features, lengths, clinical_input if variant.uses_clinical else None
                )
            )
            probability = float(torch.softmax(logits.float(), dim=-1)[0, 1])
        if self.calibrator is not None:
            probability = float(self.calibrator.apply(np.asarray([probability]))[0])
        timings["model"] = time.perf_counter() - start
        image_stats = None
        if variant.uses_image:
            image_stats = volume_statistics(_statistics_sample(volume_hu), None)
        threshold = self.meta.threshold
        return PredictionResult(
            probability=probability,
            label=CLASS_NAMES[1] if probability >= threshold else CLASS_NAMES[0],
            threshold=threshold,
            model_name=self.meta.model_name,
            model_version=self.meta.version,
            checkpoint_sha256=self.checkpoint_sha256,
            demo=self.meta.demo,
            missing_features=encoded.missing_features,
            slices_used=slices_used,
            timings=timings,
            validation=self.meta.validation_statement,
            image_stats=image_stats,
        )
