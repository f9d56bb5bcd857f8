"""The checkpoint's input contract, read without torch or the model package.

The listener decides whether a study is ready from the phases the model needs,
but never imports torch (nor ``model``). A checkpoint is one safetensors file: an
8-byte little-endian header length, then a JSON header whose ``__metadata__``
holds the checkpoint metadata as a JSON string (``model.checkpoint``). Reading
that header is plain file and JSON work, so this module does it, and mirrors
``model.contract.InputContract`` (a test checks that both read a checkpoint alike).
A checkpoint written before contracts existed reads as any one series, any
thickness, at least one slice.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHASES = ("arterial", "portal_venous", "delayed", "non_contrast")
ANY_PHASE = "any"
_META_KEY = "tace_checkpoint"
_MAX_HEADER = 100 * 1024 * 1024
"""safetensors' own limit on the header size."""


class ContractError(ValueError):
    """A checkpoint whose contract cannot be read; the message names the file and why."""


@dataclass(frozen=True)
class ModelInputContract:
    phases: tuple[str, ...]
    """Channel order; ``("any",)``: any one eligible series."""
    slice_thickness_mm: tuple[float, float]
    """Closed range; ``inf`` as the upper end: no limit."""
    min_slices: int

    @property
    def any_phase(self) -> bool:
        return self.phases == (ANY_PHASE,)

    @property
    def required_phases(self) -> tuple[str, ...]:
        """The phases a study must hold: none named for an any-phase model."""
        return () if self.any_phase else self.phases

    def accepts_thickness(self, thickness_mm: float | None) -> bool:
        """Unknown thickness is accepted; the range is the training cohort's."""
        if thickness_mm is None:
            return True
        low, high = self.slice_thickness_mm
        return low <= thickness_mm <= high


LEGACY = ModelInputContract((ANY_PHASE,), (0.0, math.inf), 1)


def contract_from_metadata(meta: dict[str, Any]) -> ModelInputContract:
    """The contract in a checkpoint's metadata dict; ``ValueError`` saying what is wrong."""
    raw = meta.get("input_contract")
    if raw is None:
        return LEGACY
    if not isinstance(raw, dict):
        raise ValueError(f"input_contract is not an object: {raw!r}")
    phases = raw.get("phases")
    if not isinstance(phases, list) or not phases or not all(isinstance(p, str) for p in phases):
        raise ValueError(f"input_contract.phases must be a list of names, got {phases!r}")
    if phases != [ANY_PHASE] and any(p not in PHASES for p in phases):
        raise ValueError(f"input_contract.phases has unknown names: {phases!r}")
    thickness = raw.get("slice_thickness_mm")
    if not isinstance(thickness, list) or len(thickness) != 2:
        raise ValueError(f"input_contract.slice_thickness_mm must be [low, high], got {thickness!r}")
    low, high = thickness
    if not isinstance(low, int | float) or not (high is None or isinstance(high, int | float)):
        raise ValueError(f"input_contract.slice_thickness_mm must be numbers, got {thickness!r}")
    min_slices = raw.get("min_slices")
    if not isinstance(min_slices, int) or isinstance(min_slices, bool) or min_slices < 1:
        raise ValueError(f"input_contract.min_slices must be a positive integer, got {min_slices!r}")
    return ModelInputContract(
        tuple(phases), (float(low), math.inf if high is None else float(high)), min_slices
    )


def read_checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The TACE metadata dict from a safetensors checkpoint's header, without the weights."""
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ContractError(f"{path}: not a safetensors checkpoint (too short)")
            (size,) = struct.unpack("<Q", prefix)
            if size > _MAX_HEADER:
                raise ContractError(f"{path}: not a safetensors checkpoint (header of {size} bytes)")
            header = handle.read(size)
    except OSError as exc:
        raise ContractError(f"{path}: unreadable ({exc.strerror or exc})") from None
    try:
        parsed = json.loads(header)
        raw = parsed.get("__metadata__", {}).get(_META_KEY)
        if raw is None:
            raise ContractError(f"{path}: safetensors file without TACE checkpoint metadata")
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ContractError(f"{path}: not a safetensors checkpoint ({exc})") from None
    if not isinstance(meta, dict):
        raise ContractError(f"{path}: checkpoint metadata is not an object")
    return meta


def read_input_contract(path: Path) -> ModelInputContract:
    """What the checkpoint at ``path`` needs from a study; ``ContractError`` names the file."""
    meta = read_checkpoint_metadata(path)
    try:
        return contract_from_metadata(meta)
    except ValueError as exc:
        raise ContractError(f"{path}: {exc}") from None
