"""Walking a received dataset by its declared lengths, without reading the values.

A parser reads what is there: a text element or sequence that declares 4 GiB at
the end of the file is read short and the dataset looks whole. This walk checks
every declared length against the bytes present and against the sequence or
item that encloses it, follows sequences and items of undefined length to their
delimiters, walks the fragments of encapsulated pixel data, and bounds what a
header may cost (bytes, elements, nesting) before any parser allocates for it.

The walk is resumable: while a deflated dataset is being inflated it advances
over what has arrived and reports where the pixel data begins, so the caller can
bound the rest of the inflation by the size the header declares.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
MAX_HEADER_BYTES = 32 << 20
MAX_ELEMENTS = 100_000
MAX_DEPTH = 32
MAX_FRAGMENTS = 100_000
WINDOW = 64 << 10


class Malformed(ValueError):
    """The dataset's structure does not hold together; the message fits an ErrorComment."""


class Source:
    """Random access to a file by offset, through one cached window (headers are read in small steps)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._start = 0
        self._data = b""

    def read(self, offset: int, count: int) -> bytes:
        start = offset - self._start
        if start < 0 or start + count > len(self._data):
            self._start = offset
            self._data = os.pread(self._fd, max(count, WINDOW), offset)
            start = 0
        return self._data[start : start + count]


@dataclass(frozen=True)
class PixelData:
    tag: int
    value_offset: int
    length: int | None
    """None for encapsulated pixel data (undefined length)."""


@dataclass
class _Frame:
    kind: str
    """"sequence", "item" or "fragments"."""
    end: int | None
    implicit: bool


@dataclass
class Walk:
    """The walk of one dataset; ``advance`` moves it over the bytes that have arrived."""

    source: Source
    start: int
    implicit: bool
    little: bool
    position: int = 0
    header_end: int | None = None
    pixel: PixelData | None = None
    fragments: list[tuple[int, int]] = field(default_factory=list)
    """(offset, length) of each item of encapsulated pixel data, the offset table first."""
    done: bool = False
    _stack: list[_Frame] = field(default_factory=list)
    _elements: int = 0

    def __post_init__(self) -> None:
        self.position = self.start
        self._u16 = struct.Struct("<H" if self.little else ">H").unpack_from
        self._u32 = struct.Struct("<L" if self.little else ">L").unpack_from
        self._tag = struct.Struct("<HH" if self.little else ">HH").unpack_from

    def advance(self, available: int, *, final: bool) -> None:
        """Walk as far as ``available`` bytes allow; with ``final`` the dataset ends there."""
        while not self.done:
            if not self._step(available, final):
                return

    def _bound(self, available: int, final: bool) -> int | None:
        for frame in reversed(self._stack):
            if frame.end is not None:
                return frame.end
        return available if final else None

    def _step(self, available: int, final: bool) -> bool:
        top = self._stack[-1] if self._stack else None
        if top is not None and top.end is not None and self.position >= top.end:
            if self.position > top.end:
                raise Malformed("an element crosses the end of its sequence or item")
            self._stack.pop()
            return True
        if self.position > available:
            if final:
                raise Malformed(f"truncated: {self.position - available} declared bytes missing")
            return False
        if self.position == available and final:
            if self._stack:
                raise Malformed(f"truncated: a {self._stack[-1].kind} has no end")
            self.done = True
            if self.header_end is None:
                self.header_end = self.position
            self._check_header_size(self.position)
            return False
        if self.position + 8 > available:
            if final:
                raise Malformed("truncated inside an element header")
            return False
        head = self.source.read(self.position, 12)
        if len(head) < 8:
            raise Malformed("truncated inside an element header")
        group, element = self._tag(head)
        tag = group << 16 | element
        if group == 0xFFFE:
            self._delimiter(tag, self._u32(head, 4)[0], top, available, final)
            return True
        if top is not None and top.kind == "fragments":
            raise Malformed("encapsulated pixel data holds something other than items")
        self._elements += 1
        if self._elements > MAX_ELEMENTS:
            raise Malformed(f"more than {MAX_ELEMENTS} elements")
        implicit = top.implicit if top is not None else self.implicit
        if implicit:
            vr, length, header = None, self._u32(head, 4)[0], 8
        else:
            vr = head[4:6]
            if len(vr) < 2 or not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                raise Malformed(f"element ({group:04X},{element:04X}) has no valid VR")
            if vr in LONG_VRS:
                if len(head) < 12:
                    if final:
                        raise Malformed("truncated inside an element header")
                    return False
                length, header = self._u32(head, 8)[0], 12
            else:
                length, header = self._u16(head, 6)[0], 8
        at_top = top is None
        pixel = at_top and tag in PIXEL_TAGS and self.pixel is None
        if pixel:
            self.header_end = self.position
        value = self.position + header
        if length == UNDEFINED:
            self._open(tag, vr, value, implicit, pixel)
            return True
        end = value + length
        if self.header_end is None:
            self._check_header_size(end)
        bound = self._bound(available, final)
        if bound is not None and end > bound:
            present = max(bound - value, 0)
            name = f"({group:04X},{element:04X})"
            raise Malformed(f"truncated: {name} declares {length} bytes, {present} present")
        if pixel:
            self.pixel = PixelData(tag, value, length)
        if vr == b"SQ":
            self._push(_Frame("sequence", end, implicit))
            self.position = value
        else:
            self.position = end
        return True

    def _open(self, tag: int, vr: bytes | None, value: int, implicit: bool, pixel: bool) -> None:
        if pixel:
            self.pixel = PixelData(tag, value, None)
            self._push(_Frame("fragments", None, implicit))
        elif vr is None or vr == b"SQ":
            self._push(_Frame("sequence", None, implicit))
        elif vr == b"UN":
            self._push(_Frame("sequence", None, True))
        else:
            raise Malformed(f"undefined length on a {vr.decode()} element")
        self.position = value

    def _delimiter(self, tag: int, length: int, top: _Frame | None, available: int, final: bool) -> None:
        value = self.position + 8
        if tag == ITEM:
            if top is None or top.kind == "item":
                raise Malformed("an item outside a sequence")
            if length == UNDEFINED:
                if top.kind == "fragments":
                    raise Malformed("a pixel data fragment of undefined length")
                self._push(_Frame("item", None, top.implicit))
                self.position = value
                return
            if self.header_end is None:
                self._check_header_size(value + length)
            bound = self._bound(available, final)
            if bound is not None and value + length > bound:
                present = max(bound - value, 0)
                raise Malformed(f"truncated: an item declares {length} bytes, {present} present")
            if top.kind == "fragments":
                if len(self.fragments) >= MAX_FRAGMENTS:
                    raise Malformed(f"more than {MAX_FRAGMENTS} pixel data fragments")
                self.fragments.append((value, length))
                self.position = value + length
            else:
                self._push(_Frame("item", value + length, top.implicit))
                self.position = value
        elif tag == ITEM_END:
            if top is None or top.kind != "item" or top.end is not None:
                raise Malformed("an item delimiter without an open item")
            self._stack.pop()
            self.position = value
        elif tag == SEQUENCE_END:
            if top is None or top.kind == "item" or top.end is not None:
                raise Malformed("a sequence delimiter without an open sequence")
            self._stack.pop()
            self.position = value
        else:
            raise Malformed(f"unknown delimiter ({tag >> 16:04X},{tag & 0xFFFF:04X})")

    def _push(self, frame: _Frame) -> None:
        if len(self._stack) >= MAX_DEPTH:
            raise Malformed(f"sequences nested deeper than {MAX_DEPTH}")
        self._stack.append(frame)

    def _check_header_size(self, offset: int) -> None:
        if offset - self.start > MAX_HEADER_BYTES:
            raise Malformed(f"header larger than {MAX_HEADER_BYTES >> 20} MiB")
