"""Device choice and the GPU execution path (bf16 autocast, optional torch.compile)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class DeviceError(ValueError):
    pass


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but no CUDA device is available")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise DeviceError(f"device {name!r} is not auto, cpu or cuda")
    return torch.device(name)


def compile_wanted(mode: str, device: torch.device) -> bool:
    """``auto`` compiles on CUDA only: on a CPU the minutes of compiling outweigh what they save."""
    if mode == "auto":
        return device.type == "cuda"
    if mode in ("on", "off"):
        return mode == "on"
    raise DeviceError(f"compile mode {mode!r} is not auto, on or off")


@contextlib.contextmanager
def inference_precision(device: torch.device, bf16: bool) -> Iterator[None]:
    """bf16 autocast on CUDA when asked; always fp32 on the CPU."""
    with torch.inference_mode():
        if device.type == "cuda" and bf16:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
