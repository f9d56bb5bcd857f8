"""A CT series on disk -> one HU volume ordered along the slice normal, or a readable refusal.

Real series break naive readers: instance numbers that disagree with anatomy,
two orientations in one series (a scout, a reformat), duplicate positions from a
resend, missing slices, per-slice rescale values, signed storage, padding
outside the field of view. highdicom's spatial helpers decide whether positions
form a regular volume and in which order; this module explains each refusal in
words an administrator can act on, and decodes the slices in parallel.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import highdicom
import numpy as np
import pydicom
from highdicom.spatial import get_volume_positions
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
)

from model.preprocess import StoredVolume
from tace import phi

_NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_PIXEL_THREADS = 4
MULTIFRAME_CT = (EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
CT_CLASSES = (CTImageStorage, *MULTIFRAME_CT)
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE = 1e-3


class VolumeError(ValueError):
    """The series cannot be read as one CT volume; the message says why."""


@dataclass(frozen=True)
class SeriesVolume:
    pixels: StoredVolume
    """(slices, rows, columns) stored values and their rescale, ordered along the slice normal."""
    spacing: tuple[float, float, float]
    """(between slices, between rows, between columns) in mm."""
    affine: np.ndarray
    sop_instance_uids: list[str]
    study_instance_uid: str
    series_instance_uid: str
    headers: list[Dataset]
    """The source datasets without pixel data, in volume order: the SR's evidence."""

    @cached_property
    def hu(self) -> np.ndarray:
        """(slices, rows, columns) float32 HU, made on the CPU on first use (phase alignment)."""
        return self.pixels.hu()


def _orientation_key(ds: Dataset) -> tuple[float, ...]:
    return tuple(
        round(float(v) / _ORIENTATION_TOLERANCE) * _ORIENTATION_TOLERANCE for v in ds.ImageOrientationPatient
    )


def _describe_orientation(key: tuple[float, ...]) -> str:
    normal = np.cross(np.array(key[:3]), np.array(key[3:]))
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) > 0.999:
        return ("sagittal", "coronal", "axial")[axis]
    return "oblique"


def _read(path: Path) -> Dataset:
    try:
        dataset = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - the parser raises many types on bad files
        raise VolumeError(
            f"{path.name}: not a readable DICOM file ({exc.__class__.__name__}: {exc})"
        ) from None
    phi.protect_dataset(dataset)
    return dataset


def _padding(ds: Dataset) -> tuple[int, int] | None:
    padding = ds.get("PixelPaddingValue")
    if padding is None:
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    low, high = sorted((int(padding), int(limit))) if limit is not None else (int(padding), int(padding))
    return low, high


def _stored_slice(ds: Dataset) -> np.ndarray:
    """The stored values as the decoder gives them (compressed and unusual encodings)."""
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder errors vary by plugin
        raise VolumeError(
            f"instance {ds.SOPInstanceUID}: pixel data cannot be decoded "
            f"({ds.file_meta.TransferSyntaxUID.name}: {exc})"
        ) from None


def _header(ds: Dataset) -> Dataset:
    """Drop the pixel data (decoded already) so evidence lists stay small."""
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _check_consistency(datasets: Sequence[Dataset]) -> None:
    series = {ds.SeriesInstanceUID for ds in datasets}
    if len(series) > 1:
        raise VolumeError(f"files belong to {len(series)} different series")
    orientations = Counter(_orientation_key(ds) for ds in datasets if "ImageOrientationPatient" in ds)
    missing_geometry = [
        ds for ds in datasets if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds
    ]
    if missing_geometry:
        raise VolumeError(
            f"{len(missing_geometry)} slice(s) lack ImagePositionPatient/ImageOrientationPatient"
        )
    if len(orientations) > 1:
        parts = ", ".join(
            f"{count} {_describe_orientation(key)}" for key, count in orientations.most_common()
        )
        raise VolumeError(
            f"mixed orientation: {len(orientations)} orientations in one series ({parts} slices)"
        )
    sizes = Counter((int(ds.Rows), int(ds.Columns)) for ds in datasets)
    if len(sizes) > 1:
        raise VolumeError(f"mixed image sizes: {dict(sizes)}")
    spacings = Counter(tuple(round(float(v), 4) for v in ds.PixelSpacing) for ds in datasets)
    if len(spacings) > 1:
        raise VolumeError(
            f"mixed pixel spacing: {', '.join(f'{s[0]}x{s[1]} mm ({n} slices)' for s, n in spacings.items())}"
        )


def _volume_positions(headers: Sequence[Dataset]) -> tuple[float | None, list[int] | None]:
    """highdicom's ``get_series_volume_positions`` for headers known to be single-frame CT.

    Its own per-dataset multi-frame check looks each one up in the IOD tables
    (0.8 ms a slice, twice the whole decode budget); the CT SOP class settles it.
    """
    if len(headers) == 1:
        return 1.0, [0]
    orientation = headers[0].ImageOrientationPatient
    if any(ds.ImageOrientationPatient != orientation for ds in headers[1:]):
        return None, None
    return get_volume_positions(
        image_positions=[ds.ImagePositionPatient for ds in headers],
        image_orientation=orientation,
        rtol=0.05,
        perpendicular_tol=1e-3,
    )


def _explain_irregular(datasets: Sequence[Dataset]) -> str:
    row = np.array(datasets[0].ImageOrientationPatient[:3], dtype=float)
    col = np.array(datasets[0].ImageOrientationPatient[3:], dtype=float)
    normal = np.cross(row, col)
    depth = np.sort(
        np.array([float(np.array(ds.ImagePositionPatient, dtype=float) @ normal) for ds in datasets])
    )
    steps = np.diff(depth)
    duplicates = int((np.abs(steps) < _SPACING_TOLERANCE).sum())
    if duplicates:
        at = depth[1:][np.abs(steps) < _SPACING_TOLERANCE]
        return (
            f"duplicate slice positions: {duplicates} slice(s) share a position "
            f"(first at {at[0]:.2f} mm along the normal)"
        )
    typical = float(np.median(steps))
    gaps = np.flatnonzero(steps > typical * 1.5)
    if len(gaps):
        first = gaps[0]
        return (
            f"missing slices: {len(gaps)} gap(s) in the stack, the first of {steps[first]:.2f} mm "
            f"between {depth[first]:.2f} and {depth[first + 1]:.2f} mm (slice spacing {typical:.2f} mm)"
        )
    perpendicular = np.array(datasets[-1].ImagePositionPatient, dtype=float) - np.array(
        datasets[0].ImagePositionPatient, dtype=float
    )
    if (
        np.linalg.norm(perpendicular) > 0
        and abs(abs(perpendicular @ normal) / np.linalg.norm(perpendicular) - 1) > 1e-3
    ):
        return "slices are not stacked along their normal (gantry tilt or a sheared series)"
    return f"slice spacing varies from {steps.min():.2f} to {steps.max():.2f} mm"


def _enhanced_volume(ds: Dataset) -> tuple[np.ndarray, highdicom.Volume]:
    try:
        volume = highdicom.Image.from_dataset(ds, copy=False).get_volume(
            dtype=np.float32, apply_modality_transform=True
        )
    except (ValueError, RuntimeError) as exc:
        raise VolumeError(f"enhanced CT {ds.SOPInstanceUID}: frames do not form a volume ({exc})") from None
    return volume.array.astype(np.float32), volume


@dataclass(frozen=True)
class _Header:
    """One file's header and where its stored values come from, or why they cannot be decoded."""

    header: Dataset
    raw: tuple[int, np.dtype] | None = None
    """(file offset, little-endian dtype) of uncompressed pixel bytes, read straight into the volume."""
    decoded: np.ndarray | None = None
    """Stored values decoded by pydicom (compressed or unusual encodings)."""
    error: str | None = None


def _raw_layout(ds: Dataset, file: BinaryIO) -> tuple[int, np.dtype] | None:
    """Offset and dtype of native 16-bit single-frame pixel bytes, ``file`` at the Pixel Data tag.

    Such bytes are the stored values as they are: a header-only parse plus one read
    gives what ``pixel_array`` would, without building a full dataset. Anything else
    (compressed, big endian, 8 or 32 bits, colour, several frames) returns None.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if (
        syntax not in _NATIVE_SYNTAXES
        or ds.get("BitsAllocated") != 16
        or ds.get("SamplesPerPixel", 1) != 1
        or int(ds.get("NumberOfFrames") or 1) != 1
        or ds.get("PixelRepresentation") not in (0, 1)
    ):
        return None
    start = file.tell()
    element = file.read(12)
    if len(element) < 8 or struct.unpack("<HH", element[:4]) != (0x7FE0, 0x0010):
        return None
    if syntax == ImplicitVRLittleEndian:
        (length,), value_at = struct.unpack("<I", element[4:8]), 8
    elif len(element) == 12 and element[4:6] in (b"OW", b"OB"):
        (length,), value_at = struct.unpack("<I", element[8:12]), 12
    else:
        return None
    if length == 0xFFFFFFFF or length < int(ds.Rows) * int(ds.Columns) * 2:
        return None
    return start + value_at, np.dtype("<i2" if ds.PixelRepresentation == 1 else "<u2")


def _read_header(path: Path) -> _Header:
    """Per-file work of the first pass, picklable for a process pool: headers, no pixels.

    Only a file whose pixels cannot be read as they are is decoded here, and then as
    its stored integers; no float array ever crosses a process boundary.
    """
    try:
        with path.open("rb") as file:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
            raw = _raw_layout(ds, file) if ds.get("SOPClassUID") == CTImageStorage else None
    except Exception as exc:  # noqa: BLE001 - the parser raises many types on bad files
        raise VolumeError(
            f"{path.name}: not a readable DICOM file ({exc.__class__.__name__}: {exc})"
        ) from None
    phi.protect_dataset(ds)
    if ds.SOPClassUID in MULTIFRAME_CT:
        return _Header(_read(path))
    if ds.SOPClassUID not in CT_CLASSES or raw is not None:
        return _Header(ds, raw)
    try:
        return _Header(ds, decoded=_stored_slice(_read(path)))
    except VolumeError as exc:
        return _Header(ds, error=str(exc))


def _fill(target: np.ndarray, path: Path, item: _Header) -> None:
    """Stored values of one slice into its place in the volume (numpy and file reads release the GIL)."""
    if item.decoded is not None:
        target[...] = item.decoded
        return
    assert item.raw is not None, "a CT slice is either decoded or read raw"
    offset, dtype = item.raw
    with path.open("rb", buffering=0) as file:
        file.seek(offset)
        if dtype == target.dtype:
            done = file.readinto(target.reshape(-1).view(np.uint8).data)
            complete = done == target.nbytes
        else:
            data = file.read(target.size * dtype.itemsize)
            complete = len(data) == target.size * dtype.itemsize
            if complete:
                target[...] = np.frombuffer(data, dtype=dtype).reshape(target.shape)
    if not complete:
        raise VolumeError(f"{path.name}: pixel data ends before {target.shape[0]}x{target.shape[1]} values")


def _stored_dtype(items: Sequence[_Header]) -> np.dtype:
    """The series' own dtype when every slice shares it (int16 for CT), else one that holds them all."""
    dtypes = {item.raw[1].newbyteorder("=") for item in items if item.raw is not None}
    dtypes.update(item.decoded.dtype for item in items if item.decoded is not None)
    return np.result_type(*dtypes)


def _stored_volume(ordered: Sequence[tuple[Path, _Header]], pool: Executor) -> StoredVolume:
    """The second pass: stored values straight into one preallocated array, in threads."""
    first = ordered[0][1].header
    values = np.empty(
        (len(ordered), int(first.Rows), int(first.Columns)),
        dtype=_stored_dtype([item for _, item in ordered]),
    )
    readers = ThreadPoolExecutor(_PIXEL_THREADS) if isinstance(pool, ProcessPoolExecutor) else pool
    try:
        list(readers.map(_fill, values, *zip(*ordered, strict=True)))
    finally:
        if readers is not pool:
            readers.shutdown()
    headers = [item.header for _, item in ordered]
    paddings = [_padding(ds) for ds in headers]
    return StoredVolume(
        values=values,
        slope=np.array([float(ds.get("RescaleSlope", 1.0) or 1.0) for ds in headers], dtype=np.float32),
        intercept=np.array(
            [float(ds.get("RescaleIntercept", 0.0) or 0.0) for ds in headers], dtype=np.float32
        ),
        padding=None
        if all(p is None for p in paddings)
        else np.array([p if p is not None else (1, 0) for p in paddings], dtype=np.int64),
    )


def read_volume(paths: Sequence[Path], executor: Executor | None = None, min_slices: int = 1) -> SeriesVolume:
    """Read, check and decode one series; ``executor`` (threads or processes) parses the headers.

    Two passes: headers first (the part that holds the GIL, so a process pool
    spreads it over cores), then, once the slice order is known, the pixel bytes
    straight into one int16 array by threads.
    """
    if not paths:
        raise VolumeError("no files in the series")
    pool: Executor = executor if executor is not None else ThreadPoolExecutor(max_workers=_PIXEL_THREADS)
    try:
        loaded = list(pool.map(_read_header, paths, chunksize=8))
        for item in loaded[:1]:
            phi.protect_dataset(item.header)
        return _assemble(paths, loaded, pool, min_slices)
    finally:
        if executor is None:
            pool.shutdown()


def _assemble(
    paths: Sequence[Path], loaded: Sequence[_Header], pool: Executor, min_slices: int
) -> SeriesVolume:
    images = [
        (path, item)
        for path, item in zip(paths, loaded, strict=True)
        if item.header.SOPClassUID in CT_CLASSES
    ]
    if not images:
        classes = sorted({str(item.header.SOPClassUID.name) for item in loaded})
        raise VolumeError(f"no CT images in the series (found {', '.join(classes)})")
    enhanced = [item.header for _, item in images if item.header.SOPClassUID in MULTIFRAME_CT]
    if enhanced:
        if len(images) != 1:
            raise VolumeError(f"series mixes {len(enhanced)} enhanced CT object(s) with other CT images")
        array, volume = _enhanced_volume(enhanced[0])
        between_slices, between_rows, between_columns = (float(v) for v in volume.spacing)
        return SeriesVolume(
            pixels=StoredVolume(
                values=array,
                slope=np.ones(len(array), dtype=np.float32),
                intercept=np.zeros(len(array), dtype=np.float32),
            ),
            spacing=(between_slices, between_rows, between_columns),
            affine=volume.affine,
            sop_instance_uids=[enhanced[0].SOPInstanceUID],
            study_instance_uid=enhanced[0].StudyInstanceUID,
            series_instance_uid=enhanced[0].SeriesInstanceUID,
            headers=[_header(enhanced[0])],
        )
    headers = [item.header for _, item in images]
    _check_consistency(headers)
    if len(images) < min_slices:
        raise VolumeError(f"{len(images)} slice(s), at least {min_slices} needed")
    spacing, indices = _volume_positions(headers)
    if spacing is None or indices is None:
        raise VolumeError(_explain_irregular(headers))
    undecodable = next((item.error for _, item in images if item.error), None)
    if undecodable:
        raise VolumeError(undecodable)
    ordered = [pair for _, pair in sorted(zip(indices, images, strict=True), key=lambda pair: pair[0])]
    first = ordered[0][1].header
    pixels = _stored_volume(ordered, pool)
    volume = highdicom.Volume.from_attributes(
        array=pixels.values,
        image_position=first.ImagePositionPatient,
        image_orientation=first.ImageOrientationPatient,
        pixel_spacing=first.PixelSpacing,
        spacing_between_slices=spacing,
        frame_of_reference_uid=first.get("FrameOfReferenceUID"),
        coordinate_system="PATIENT",
    )
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    return SeriesVolume(
        pixels=pixels,
        spacing=(float(spacing), row_spacing, column_spacing),
        affine=volume.affine,
        sop_instance_uids=[item.header.SOPInstanceUID for _, item in ordered],
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=first.SeriesInstanceUID,
        headers=[item.header for _, item in ordered],
    )


def read_series_folder(folder: Path) -> np.ndarray:
    """The HU array of the series in ``folder`` (every ``*.dcm`` file, or every file)."""
    paths = sorted(folder.glob("*.dcm")) or sorted(p for p in folder.iterdir() if p.is_file())
    return read_volume(paths).hu
