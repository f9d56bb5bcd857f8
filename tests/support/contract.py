"""Checkpoints that declare an input contract, made from the test demo checkpoint by editing its header."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def with_contract(source: Path, target: Path, contract: dict[str, Any]) -> Path:
    """A copy of ``source`` whose checkpoint meta carries ``input_contract`` (weights untouched)."""
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    meta = json.loads(header["__metadata__"]["tace_checkpoint"])
    meta["input_contract"] = contract
    header["__metadata__"]["tace_checkpoint"] = json.dumps(meta)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])
    return target
