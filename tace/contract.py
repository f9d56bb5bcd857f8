"""The model's input contract, read from the checkpoint header without torch.

The listener decides when a study is ready (every phase the model needs has a
complete eligible series) but must never import torch or the model package.
A checkpoint is a safetensors file: an 8-byte little-endian header length, then
a JSON header whose ``__metadata__`` carries the checkpoint's JSON meta. Reading
that header directly costs one small read, needs no sidecar file that could
drift from the weights, and sees a replaced checkpoint at the next look (the
result is cached per file size and modification time).
"""

from __future__ import annotations

import json
import math
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tace.storage import Storage

ANY = "any"
KNOWN_PHASES = ("arterial", "portal_venous", "delayed", "non_contrast")
DEMO_CHECKPOINT = "demo.safetensors"
_META_KEY = "tace_checkpoint"
_MAX_HEADER = 100 * 1024 * 1024


class ContractError(ValueError):
    """The checkpoint's contract cannot be read; the message names the file and why."""


@dataclass(frozen=True)
class InputContract:
    phases: tuple[str, ...] = (ANY,)
    """Phases in channel order; ``("any",)``: one phase, any eligible series (legacy checkpoints)."""
    slice_thickness_mm: tuple[float, float] = (0.0, math.inf)
    """Closed range seen in training; ``inf``: no upper limit (JSON ``null``)."""
    min_slices: int = 1

    @property
    def legacy(self) -> bool:
        return self.phases == (ANY,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phases": list(self.phases),
            "slice_thickness_mm": [
                self.slice_thickness_mm[0],
                None if math.isinf(self.slice_thickness_mm[1]) else self.slice_thickness_mm[1],
            ],
            "min_slices": self.min_slices,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> InputContract:
        """Defensive: a checkpoint without a contract (or with parts missing) is a legacy one."""
        if not data:
            return cls()
        phases = tuple(str(p) for p in data.get("phases") or (ANY,))
        unknown = [p for p in phases if p not in (*KNOWN_PHASES, ANY)]
        if unknown or (ANY in phases and len(phases) > 1):
            raise ContractError(f"input contract names unknown phases {phases}")
        low, high = data.get("slice_thickness_mm") or (0.0, None)
        low, high = float(low), math.inf if high is None else float(high)
        return cls(phases, (low, high), int(data.get("min_slices") or 1))


def checkpoint_path(model_checkpoint: Path | None, data_dir: Path) -> Path:
    """The configured checkpoint, else the demo one the worker makes in the data dir."""
    return model_checkpoint or Storage(data_dir).models_dir / DEMO_CHECKPOINT


def read_contract(path: Path) -> InputContract:
    """The contract in ``path``'s header; raises :class:`ContractError` for an unreadable file."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > _MAX_HEADER:
                raise ContractError(f"{path}: safetensors header of {length} bytes is implausible")
            header = json.loads(handle.read(length))
        meta = json.loads(header.get("__metadata__", {}).get(_META_KEY) or "{}")
    except (OSError, struct.error, ValueError, AttributeError) as exc:
        raise ContractError(f"{path}: checkpoint header unreadable ({exc})") from None
    return InputContract.from_dict(meta.get("input_contract"))


class ContractSource:
    """The contract of the checkpoint at ``path``; a checkpoint not made yet means legacy."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._contract = InputContract()

    def current(self) -> InputContract:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return InputContract()
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key != self._seen:
                self._contract = read_contract(self._path)
                self._seen = key
            return self._contract
