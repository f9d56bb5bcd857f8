"""Reading what a C-STORE delivered: the header, and whether the rest is what the header declares.

Only the header is parsed, after the whole dataset's structure has been walked
by its declared lengths (:mod:`listener.dataset_walk`): a dataset that ends
inside an element, a sequence or the pixel data is refused, whatever a parser
would have made of it. For images the header's Rows x Columns x frames bound
everything else: native pixel data must hold exactly that many bytes, every
compressed frame's own header must agree (:mod:`listener.frames`), and an image
larger than the gateway accepts is refused before anything is allocated for it.

A deflated dataset is inflated as a stream into an unnamed scratch file, never
into memory, and only as far as its header allows: up to the header cap until
the pixel data begins, then up to the declared pixel data plus a small
allowance. A 1 MB stream that would expand to gigabytes is refused after a few
megabytes.
"""

from __future__ import annotations

import itertools
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from listener.dataset_walk import Malformed, Source, Walk
from listener.frames import HEADER_BYTES, Image, check_frame, checks_frames

SLACK_BYTES = 1 << 20
"""Beyond the declared image: padding some writers leave in native pixel data, and what a
deflated dataset may still hold after its pixel data (trailing padding, signatures)."""
INFLATE_INPUT = 256 << 10
INFLATE_OUTPUT = 1 << 20
MAX_META_BYTES = 64 << 10


class UnreadableDataset(ValueError):
    """The bytes are not a usable DICOM dataset (0xC000); the message fits an ErrorComment."""


class TooLarge(ValueError):
    """A well-formed instance larger than the gateway accepts (0xA700)."""


@dataclass(frozen=True)
class Header:
    dataset: Dataset
    transfer_syntax: UID
    has_pixels: bool


def read_header(path: Path, *, max_instance_bytes: int, image: bool = True) -> Header:
    """Walk, parse and check one received file; ``image`` adds the pixel checks (CT instances).

    pydicom converts element values lazily; every element is converted here, inside
    the guard, so a malformed value is a refusal now rather than an error later.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return _read(fd, path.parent, max_instance_bytes, image)
        finally:
            os.close(fd)
    except (UnreadableDataset, TooLarge):
        raise
    except Malformed as exc:
        raise UnreadableDataset(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the parser raises many types on garbage
        raise UnreadableDataset(f"unparseable dataset ({exc.__class__.__name__})") from None


def _read(fd: int, scratch_dir: Path, max_instance_bytes: int, image: bool) -> Header:
    size = os.fstat(fd).st_size
    meta, start = _file_meta(fd, size)
    syntax = meta.get("TransferSyntaxUID")
    if not isinstance(syntax, str) or not syntax:
        raise UnreadableDataset("no transfer syntax in file meta")
    syntax = UID(syntax)
    if syntax.is_deflated:
        with tempfile.TemporaryFile(dir=scratch_dir, prefix=".inflated-") as scratch:
            return _read_deflated(fd, start, scratch.fileno(), meta, syntax, max_instance_bytes, image)
    walk = Walk(Source(fd), start, _implicit(fd, start, syntax), syntax.is_little_endian)
    walk.advance(size, final=True)
    dataset = _parse(fd, walk, meta)
    if image:
        _check_image(fd, dataset, walk, syntax, max_instance_bytes)
    return Header(dataset=dataset, transfer_syntax=syntax, has_pixels=walk.pixel is not None)


def _implicit(fd: int, start: int, syntax: UID) -> bool:
    """Implicit VR if the syntax says so, or if the first element has no VR where one belongs.

    Some writers encode implicit VR under an explicit syntax; pydicom reads such
    datasets the same way (its "Expected explicit VR, but found implicit VR").
    """
    if syntax.is_implicit_VR:
        return True
    vr = os.pread(fd, 2, start + 4)
    return len(vr) == 2 and not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90)


def _file_meta(fd: int, size: int) -> tuple[FileMetaDataset, int]:
    """The file meta group as pynetdicom wrote it: preamble, DICM, group length first."""
    head = os.pread(fd, 144, 0)
    if len(head) < 144 or head[128:132] != b"DICM":
        raise Malformed("no DICOM file preamble")
    if head[132:138] != b"\x02\x00\x00\x00UL":
        raise Malformed("file meta group length missing")
    (length,) = struct.unpack_from("<L", head, 140)
    start = 144 + length
    if length > MAX_META_BYTES or start > size:
        raise Malformed("file meta group length out of range")
    raw = head[132:] + os.pread(fd, length, 144)
    return FileMetaDataset(read_dataset(BytesIO(raw), False, True)), start


def _parse(fd: int, walk: Walk, meta: FileMetaDataset) -> Dataset:
    assert walk.header_end is not None
    raw = os.pread(fd, walk.header_end - walk.start, walk.start)
    dataset = read_dataset(BytesIO(raw), walk.implicit, walk.little)
    dataset.file_meta = meta
    for _ in dataset.iterall():
        pass
    return dataset


def _read_deflated(
    fd: int,
    start: int,
    out: int,
    meta: FileMetaDataset,
    syntax: UID,
    max_instance_bytes: int,
    image: bool,
) -> Header:
    walk = Walk(Source(out), 0, implicit=False, little=True)
    dataset: Dataset | None = None
    cap: int | None = None
    written = 0
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    for piece in _inflate(fd, start, inflater):
        if cap is not None and written + len(piece) > cap:
            raise Malformed("deflated data expands beyond the declared image size")
        os.pwrite(out, piece, written)
        written += len(piece)
        walk.advance(written, final=False)
        if dataset is None and walk.pixel is not None:
            dataset = _parse(out, walk, meta)
            if image:
                _check_image(out, dataset, walk, syntax, max_instance_bytes)
            cap = walk.pixel.value_offset + _pixel_bytes(dataset, max_instance_bytes) + SLACK_BYTES
    if not inflater.eof:
        raise Malformed("deflated stream is cut short")
    walk.advance(written, final=True)
    if dataset is None:
        dataset = _parse(out, walk, meta)
    return Header(dataset=dataset, transfer_syntax=syntax, has_pixels=walk.pixel is not None)


def _inflate(fd: int, offset: int, inflater: zlib._Decompress) -> Iterator[bytes]:
    """The inflated stream in pieces of at most INFLATE_OUTPUT bytes (never all of it at once)."""
    while not inflater.eof:
        chunk = os.pread(fd, INFLATE_INPUT, offset)
        if not chunk:
            return
        offset += len(chunk)
        while chunk and not inflater.eof:
            piece = inflater.decompress(chunk, INFLATE_OUTPUT)
            chunk = inflater.unconsumed_tail
            if piece:
                yield piece


def _positive(dataset: Dataset, keyword: str, default: int | None = None) -> int:
    value = dataset.get(keyword, default)
    try:
        number = int(value) if value not in (None, "") else 0
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise Malformed(f"{keyword} missing or not a positive number")
    return number


def _image(dataset: Dataset) -> tuple[Image, int]:
    """What each frame is, and how many frames."""
    image = Image(
        rows=_positive(dataset, "Rows"),
        columns=_positive(dataset, "Columns"),
        samples=_positive(dataset, "SamplesPerPixel", 1),
        bits_allocated=_positive(dataset, "BitsAllocated"),
    )
    return image, _positive(dataset, "NumberOfFrames", 1)


def _declared_bytes(image: Image, frames: int, photometric: str) -> int:
    bits = image.rows * image.columns * image.samples * image.bits_allocated * frames
    declared = (bits + 7) // 8
    if photometric == "YBR_FULL_422":
        declared = declared * 2 // 3
    return declared


def _pixel_bytes(dataset: Dataset, fallback: int) -> int:
    """The native pixel data the header declares (``fallback`` when it declares nothing usable)."""
    try:
        image, frames = _image(dataset)
    except Malformed:
        return fallback
    return _declared_bytes(image, frames, str(dataset.get("PhotometricInterpretation", "")))


def _check_image(fd: int, dataset: Dataset, walk: Walk, syntax: UID, max_instance_bytes: int) -> None:
    pixel = walk.pixel
    if pixel is None:
        return
    image, frames = _image(dataset)
    declared = _declared_bytes(image, frames, str(dataset.get("PhotometricInterpretation", "")))
    if declared > max_instance_bytes:
        raise TooLarge(f"image of {declared >> 20} MiB exceeds the {max_instance_bytes >> 20} MiB limit")
    if pixel.length is not None:
        if pixel.tag == 0x7FE00010 and not declared <= pixel.length <= declared + SLACK_BYTES:
            raise Malformed(f"pixel data holds {pixel.length} bytes, header declares {declared}")
        return
    if checks_frames(syntax):
        for fragments in _frame_fragments(fd, walk, frames):
            check_frame(syntax, _frame_start(fd, fragments), image)


def _frame_fragments(fd: int, walk: Walk, frames: int) -> list[list[tuple[int, int]]]:
    """The fragments of each frame that can be told apart (PS3.5 A.4); the first frame at least."""
    if not walk.fragments:
        raise Malformed("encapsulated pixel data has no offset table")
    table, fragments = walk.fragments[0], walk.fragments[1:]
    if not fragments:
        raise Malformed("encapsulated pixel data has no frames")
    if frames == 1:
        return [fragments]
    if len(fragments) == frames:
        return [[fragment] for fragment in fragments]
    offset, length = table
    if length and length % 4 == 0:
        starts = np.frombuffer(os.pread(fd, length, offset), dtype="<u4")
        first = fragments[0][0] - 8
        by_start = {value_offset - 8 - first: index for index, (value_offset, _) in enumerate(fragments)}
        indices = [by_start.get(int(start)) for start in starts]
        if len(indices) == frames and all(i is not None for i in indices):
            bounds = [*[i for i in indices if i is not None], len(fragments)]
            return [fragments[a:b] for a, b in itertools.pairwise(bounds)]
    return [fragments]


def _frame_start(fd: int, fragments: list[tuple[int, int]]) -> bytes:
    """The first HEADER_BYTES of a frame, across its fragments."""
    parts = []
    wanted = HEADER_BYTES
    for offset, length in fragments:
        part = os.pread(fd, min(length, wanted), offset)
        parts.append(part)
        wanted -= len(part)
        if wanted <= 0:
            break
    return b"".join(parts)


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
