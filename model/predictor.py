"""Inference: a checkpoint loaded once per process, one study's volume and its labs in, a result out."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model.checkpoint import LoadedCheckpoint, load_checkpoint
from model.config import CLASS_NAMES
from model.device import inference_precision, resolve_device
from model.image_stats import volume_statistics
from model.preprocess import check_volume_shape, preprocess_volume


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


class Predictor:
    """Holds the model on its device; ``predict`` is safe to call for many series in turn."""

    def __init__(
        self,
        loaded: LoadedCheckpoint,
        device: torch.device,
        *,
        bf16: bool = True,
        compile_backbone: bool = False,
        slice_batch: int = 64,
    ) -> None:
        self.meta = loaded.meta
        self.calibrator = loaded.meta.calibrator
        self.checkpoint_sha256 = loaded.sha256
        self.device = device
        self.model = loaded.model.to(device).eval()
        self.bf16 = bf16
        self.slice_batch = slice_batch
        if compile_backbone and device.type == "cuda" and self.model.backbone is not None:
            self.model.backbone = torch.compile(self.model.backbone)  # type: ignore[assignment]  # the compiled wrapper runs as the ResNet50 it wraps

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> Predictor:
        resolved = resolve_device(device)
        return cls(load_checkpoint(path, resolved), resolved)

    def _slice_features(self, volume_hu: Tensor) -> Tensor:
        slices = preprocess_volume(volume_hu, self.meta.preprocess, self.meta.config.phases)
        backbone = self.model.backbone
        assert backbone is not None
        parts = [backbone(slices[i : i + self.slice_batch]) for i in range(0, len(slices), self.slice_batch)]
        return torch.cat(parts).float().unsqueeze(0)

    def predict(self, volume_hu: np.ndarray | Tensor, clinical: Mapping[str, object]) -> PredictionResult:
        """``volume_hu`` in HU, slices ordered along the slice normal.

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
                check_volume_shape(tuple(volume_hu.shape), self.meta.config.phases)
                volume = torch.as_tensor(volume_hu, dtype=torch.float32).to(self.device, non_blocking=True)
                features = self._slice_features(volume)
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
            hu = volume_hu.cpu().numpy() if isinstance(volume_hu, Tensor) else np.asarray(volume_hu)
            image_stats = volume_statistics(hu, None)
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
