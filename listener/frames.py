"""What a compressed frame says about itself, read from its codestream header without decoding.

The worker's decoders allocate what the codestream declares, not what the DICOM
header says. A frame declaring 60000 x 60000 in a 512 x 512 image is a
decompression bomb for the worker, so the listener refuses any frame whose
codestream disagrees with Rows, Columns, Samples per Pixel and Bits Allocated.
Only marker segments are read (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, the RLE
header); nothing is decompressed here.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from pydicom.uid import UID

from listener.dataset_walk import Malformed

JPEG = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
    }
)
JPEG_2000 = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)
RLE = "1.2.840.10008.1.2.5"
HEADER_BYTES = 64 << 10
"""How much of a frame is read to find its header (marker segments before it are skipped by length)."""

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@dataclass(frozen=True)
class FrameHeader:
    rows: int
    columns: int
    components: int
    precision: int


@dataclass(frozen=True)
class Image:
    """What the DICOM header declares for each frame."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int


def checks_frames(transfer_syntax: UID) -> bool:
    return transfer_syntax in JPEG or transfer_syntax in JPEG_2000 or transfer_syntax == RLE


def check_frame(transfer_syntax: UID, data: bytes, image: Image) -> None:
    """Raise :class:`Malformed` unless the frame's own header matches ``image``."""
    if transfer_syntax == RLE:
        _check_rle(data, image)
        return
    header = _jpeg(data) if transfer_syntax in JPEG else _j2k(data)
    if (header.rows, header.columns) != (image.rows, image.columns):
        raise Malformed(
            f"frame is {header.columns}x{header.rows}, header declares {image.columns}x{image.rows}"
        )
    if header.components != image.samples:
        raise Malformed(f"frame has {header.components} components, header declares {image.samples}")
    if header.precision > image.bits_allocated:
        raise Malformed(f"frame has {header.precision}-bit samples in {image.bits_allocated}-bit pixels")


def _jpeg(data: bytes) -> FrameHeader:
    """JPEG (ISO 10918) and JPEG-LS (ISO 14495): the start-of-frame segment."""
    if data[:2] != b"\xff\xd8":
        raise Malformed("JPEG frame does not start with SOI")
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise Malformed("JPEG marker expected")
        marker = data[offset + 1]
        if marker == 0xFF:
            offset += 1
            continue
        if marker in _STANDALONE:
            offset += 2
            continue
        (length,) = struct.unpack_from(">H", data, offset + 2)
        if marker in _SOF:
            if offset + 10 > len(data):
                break
            precision, rows, columns, components = struct.unpack_from(">BHHB", data, offset + 4)
            if rows == 0:
                raise Malformed("JPEG frame defers its height to a DNL marker")
            return FrameHeader(rows, columns, components, precision)
        if marker in (0xD9, 0xDA):
            break
        offset += 2 + length
    raise Malformed("no JPEG start-of-frame in the first 64 KiB of the frame")


def _j2k(data: bytes) -> FrameHeader:
    """JPEG 2000 / HTJ2K: the SIZ segment that follows SOC (a JP2 wrapper is unwrapped first)."""
    if data.startswith(_JP2_SIGNATURE):
        data = _jp2_codestream(data)
    if data[:4] != b"\xff\x4f\xff\x51" or len(data) < 4 + 38 + 3:
        raise Malformed("JPEG 2000 frame does not start with SOC and SIZ")
    (xsiz, ysiz, xosiz, yosiz) = struct.unpack_from(">LLLL", data, 8)
    (components,) = struct.unpack_from(">H", data, 40)
    if components == 0 or len(data) < 42 + 3 * components:
        raise Malformed("JPEG 2000 SIZ segment is cut short")
    precision = max((data[42 + 3 * c] & 0x7F) + 1 for c in range(components))
    if xsiz <= xosiz or ysiz <= yosiz:
        raise Malformed("JPEG 2000 image area is empty")
    return FrameHeader(ysiz - yosiz, xsiz - xosiz, components, precision)


def _jp2_codestream(data: bytes) -> bytes:
    offset = 0
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">L4s", data, offset)
        header = 8
        if length == 1 and offset + 16 <= len(data):
            (length,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        if kind == b"jp2c":
            return data[offset + header :]
        if length < header:
            break
        offset += length
    raise Malformed("no codestream box in the JP2 frame")


def _check_rle(data: bytes, image: Image) -> None:
    """RLE (PS3.5 G): one segment per byte of each sample, offsets inside the frame."""
    if len(data) < 64:
        raise Malformed("RLE frame shorter than its header")
    segments, *offsets = struct.unpack_from("<16L", data)
    expected = image.samples * ((image.bits_allocated + 7) // 8)
    if segments != expected:
        raise Malformed(f"RLE frame has {segments} segments, header declares {expected}")
    used = offsets[:segments]
    if used[0] != 64 or any(b <= a for a, b in itertools.pairwise(used)):
        raise Malformed("RLE segment offsets out of order")
