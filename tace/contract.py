"""The input contract of the checkpoint a gateway runs, as the listener sees it (no torch).

:mod:`tace.model_contract` reads it from the safetensors header; this module
knows which file that is (the configured checkpoint, else the demo one the
worker makes in the data dir) and caches the answer per file size and
modification time, so a replaced checkpoint is seen at the next completion and
a checkpoint not made yet means the legacy contract (any one series).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

from tace.model_contract import LEGACY, ContractError, ModelInputContract, read_input_contract
from tace.storage import Storage

__all__ = ["LEGACY", "ContractError", "ContractSource", "ModelInputContract", "checkpoint_path", "to_dict"]

DEMO_CHECKPOINT = "demo.safetensors"


def checkpoint_path(model_checkpoint: Path | None, data_dir: Path) -> Path:
    """The configured checkpoint, else the demo one the worker makes in the data dir."""
    return model_checkpoint or Storage(data_dir).models_dir / DEMO_CHECKPOINT


def to_dict(contract: ModelInputContract) -> dict[str, Any]:
    """As the checkpoint writes it (an unbounded upper thickness is ``null``), for job records."""
    low, high = contract.slice_thickness_mm
    return {
        "phases": list(contract.phases),
        "slice_thickness_mm": [low, None if math.isinf(high) else high],
        "min_slices": contract.min_slices,
    }


class ContractSource:
    """The contract of the checkpoint at ``path``; raises :class:`ContractError` for an unreadable one."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._contract = LEGACY

    def current(self) -> ModelInputContract:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return LEGACY
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key != self._seen:
                self._contract = read_input_contract(self._path)
                self._seen = key
            return self._contract
