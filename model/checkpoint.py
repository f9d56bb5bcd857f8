"""Checkpoints: one safetensors file whose header carries the JSON metadata.

Weights and everything needed to use them (network config, preprocessing,
feature schema with its fitted normalization, the decision threshold and the
calibrator chosen in cross-validation, version, training metrics, the demo flag,
the training data's provenance and the validated AUC with its CI) travel
together, so a checkpoint cannot be run with the wrong settings, and every
report it makes can say how far to trust it. The metadata records a sha256 over
the tensors; loading recomputes it and refuses a file whose weights were altered or damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from model.calibration import Calibrator
from model.config import MODEL_NAME, CLDCAConfig, PreprocessConfig
from model.contract import InputContract
from model.network import CLDCA
from model.schema import FeatureSchema, Normalization, SchemaError

FORMAT = "tace-cldca/1"
_META_KEY = "tace_checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file and why, in one line."""


@dataclass(frozen=True)
class CheckpointMeta:
    version: str
    config: CLDCAConfig
    preprocess: PreprocessConfig
    schema: FeatureSchema
    normalization: Normalization
    demo: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.5
    """Disease control is predicted when its (calibrated) probability reaches this."""
    calibration: dict[str, Any] | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    """How the model was validated: ``auc`` {value, low, high}, ``method``, ``cases``, baseline."""
    warnings: list[str] = field(default_factory=list)
    training_distribution: dict[str, Any] | None = None
    """The training cohort's clinical inputs per feature (model.drift); None in older checkpoints."""
    model_name: str = MODEL_NAME
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    weights_sha256: str = ""
    input_contract: InputContract = field(default_factory=InputContract.legacy)
    """The series the model needs; its phases are ``config.phases`` (checked here)."""

    def __post_init__(self) -> None:
        if self.input_contract.phases != self.config.phases:
            raise ValueError(
                f"input_contract.phases {self.input_contract.phases!r} differ from "
                f"config.phases {self.config.phases!r}; the channels are declared once, in the config"
            )

    @property
    def calibrator(self) -> Calibrator | None:
        return Calibrator.from_dict(self.calibration) if self.calibration else None

    @property
    def validation_statement(self) -> str | None:
        """The validated AUC with its CI in one sentence, for reports and the SR."""
        auc = self.validation.get("auc")
        if not auc:
            return None
        return (
            f"{self.validation.get('method', 'validated')} AUC {auc['value']:.2f} "
            f"(95% CI {auc['low']:.2f}-{auc['high']:.2f}) on {self.validation.get('cases', '?')} "
            f"{'synthetic ' if self.demo else ''}cases"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_name": self.model_name,
            "version": self.version,
            "demo": self.demo,
            "created_at": self.created_at,
            "config": self.config.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "schema": self.schema.to_dict(),
            "normalization": self.normalization.to_dict(),
            "metrics": self.metrics,
            "training": self.training,
            "threshold": self.threshold,
            "calibration": self.calibration,
            "validation": self.validation,
            "warnings": self.warnings,
            "weights_sha256": self.weights_sha256,
            **({"training_distribution": self.training_distribution} if self.training_distribution else {}),
            "input_contract": self.input_contract.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {FORMAT!r}")
        return cls(
            version=str(data["version"]),
            config=CLDCAConfig.from_dict(data["config"]),
            preprocess=PreprocessConfig.from_dict(data["preprocess"]),
            schema=FeatureSchema.from_dict(data["schema"]),
            normalization=Normalization.from_dict(data["normalization"]),
            demo=bool(data.get("demo", False)),
            metrics=dict(data.get("metrics", {})),
            training=dict(data.get("training", {})),
            threshold=float(data.get("threshold", 0.5)),
            calibration=dict(data["calibration"]) if data.get("calibration") else None,
            validation=dict(data.get("validation", {})),
            warnings=[str(w) for w in data.get("warnings", [])],
            model_name=str(data.get("model_name", MODEL_NAME)),
            created_at=str(data.get("created_at", "")),
            weights_sha256=str(data.get("weights_sha256", "")),
            training_distribution=dict(data["training_distribution"])
            if data.get("training_distribution")
            else None,
            # Checkpoints older than the contract read any one series of any thickness.
            input_contract=InputContract.from_dict(data["input_contract"])
            if "input_contract" in data
            else InputContract.legacy(),
        )


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of names, dtypes, shapes and bytes, independent of file layout."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path: Path, model: CLDCA, meta: CheckpointMeta) -> str:
    """Write atomically; returns the file's sha256 (the checkpoint hash reports cite)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    full = CheckpointMeta(**{**meta.__dict__, "weights_sha256": tensors_sha256(state)})
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    save_file(state, str(staging), metadata={_META_KEY: json.dumps(full.to_dict())})
    with staging.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(staging, path)
    return file_sha256(path)


def read_meta(path: Path) -> CheckpointMeta:
    """Metadata only, without loading the weights."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from None
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without TACE checkpoint metadata")
    try:
        return CheckpointMeta.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError, SchemaError) as exc:
        raise CheckpointError(f"{path}: unusable checkpoint metadata ({exc})") from None


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: CLDCA
    meta: CheckpointMeta
    sha256: str


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    meta = read_meta(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: weights unreadable ({exc})") from None
    if meta.weights_sha256 and tensors_sha256(state) != meta.weights_sha256:
        raise CheckpointError(f"{path}: weights do not match their recorded sha256 (damaged or edited)")
    model = CLDCA(meta.config)
    expected = model.state_dict()
    for name in expected:
        if name not in state:
            raise CheckpointError(f"{path}: parameter {name!r} missing for a {meta.config.variant} model")
    for name, tensor in state.items():
        if name not in expected:
            raise CheckpointError(f"{path}: unexpected parameter {name!r} for a {meta.config.variant} model")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{path}: parameter {name!r} has shape {tuple(tensor.shape)}, "
                f"the config needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True)
    model.eval().to(device)
    return LoadedCheckpoint(model=model, meta=meta, sha256=file_sha256(path))
