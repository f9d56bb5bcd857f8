"""Reading what a C-STORE delivered: the header, and whether the pixel data is all there.

Only the header is parsed (the pixel data is never decoded here). A dataset that
ends inside its pixel data would still parse up to the pixels, so the pixel
data element is walked by its declared lengths to catch truncation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_END = (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF


class UnreadableDataset(ValueError):
    """The bytes are not a usable DICOM dataset; the message fits an ErrorComment."""


@dataclass(frozen=True)
class Header:
    dataset: Dataset
    transfer_syntax: UID


def read_header(path: Path) -> Header:
    """Parse everything but the pixel data, and check the pixel data is complete.

    pydicom converts element values lazily; every element is converted here, inside
    the guard, so a malformed value is a refusal now rather than an error later.
    """
    try:
        with path.open("rb") as handle:
            dataset = pydicom.dcmread(handle, stop_before_pixels=True)
            transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
            if not isinstance(transfer_syntax, str) or not transfer_syntax:
                raise UnreadableDataset("no transfer syntax in file meta")
            transfer_syntax = UID(transfer_syntax)
            position = handle.tell()
            size = path.stat().st_size
            if position < size and not transfer_syntax.is_deflated:
                _check_pixel_data(handle, position, size, transfer_syntax)
            for _ in dataset.iterall():
                pass
    except UnreadableDataset:
        raise
    except Exception as exc:  # noqa: BLE001 - the parser raises many types on garbage
        raise UnreadableDataset(f"unparseable dataset ({exc.__class__.__name__})") from None
    return Header(dataset=dataset, transfer_syntax=transfer_syntax)


def _check_pixel_data(handle: BinaryIO, position: int, size: int, transfer_syntax: UID) -> None:
    handle.seek(position)
    little = transfer_syntax.is_little_endian
    group, element = struct.unpack("<HH" if little else ">HH", handle.read(4))
    if (group, element) not in _PIXEL_TAGS:
        return
    if transfer_syntax.is_implicit_VR:
        (length,) = struct.unpack("<I", handle.read(4))
    else:
        vr = handle.read(2)
        if vr in _LONG_VRS:
            handle.read(2)
            (length,) = struct.unpack("<I" if little else ">I", handle.read(4))
        else:
            (length,) = struct.unpack("<H" if little else ">H", handle.read(2))
    start = handle.tell()
    if length != _UNDEFINED:
        if start + length > size:
            raise UnreadableDataset(f"truncated: pixel data needs {length} bytes, {size - start} present")
        return
    _check_fragments(handle, start, size)


def _check_fragments(handle: BinaryIO, start: int, size: int) -> None:
    """Encapsulated pixel data: every item in bounds, ending with a sequence delimiter."""
    offset = start
    while offset + 8 <= size:
        handle.seek(offset)
        group, element, length = struct.unpack("<HHI", handle.read(8))
        if (group, element) == _SEQUENCE_END:
            return
        if (group, element) != _ITEM or length == _UNDEFINED:
            raise UnreadableDataset("malformed encapsulated pixel data")
        offset += 8 + length
    raise UnreadableDataset("truncated: encapsulated pixel data has no end")


def image_plane(dataset: Dataset) -> str | None:
    """axial, coronal, sagittal or oblique, from ImageOrientationPatient."""
    orientation = dataset.get("ImageOrientationPatient")
    if orientation is None:
        shared = dataset.get("SharedFunctionalGroupsSequence")
        planes = shared[0].get("PlaneOrientationSequence") if shared else None
        orientation = planes[0].get("ImageOrientationPatient") if planes else None
    if orientation is None or len(orientation) != 6:
        return None
    try:
        row = np.array([float(v) for v in orientation[:3]])
        column = np.array([float(v) for v in orientation[3:]])
    except (TypeError, ValueError):
        return None
    normal = np.cross(row, column)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return None
    axis = int(np.argmax(np.abs(normal / norm)))
    if abs(normal[axis] / norm) < 0.95:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]
