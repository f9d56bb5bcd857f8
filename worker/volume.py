"""A CT series on disk -> one HU volume ordered along the slice normal, or a readable refusal.

Real series break naive readers: instance numbers that disagree with anatomy,
two orientations in one series (a scout, a reformat), duplicate positions from a
resend, missing slices, per-slice rescale values, signed storage, padding
outside the field of view. highdicom's spatial helpers decide whether positions
form a regular volume and in which order; this module explains each refusal in
words an administrator can act on, and decodes the slices in parallel.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import highdicom
import numpy as np
import pydicom
from highdicom.spatial import get_series_volume_positions
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage

from tace import phi

AIR_HU = -1000.0
MULTIFRAME_CT = (EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
CT_CLASSES = (CTImageStorage, *MULTIFRAME_CT)
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE = 1e-3


class VolumeError(ValueError):
    """The series cannot be read as one CT volume; the message says why."""


@dataclass(frozen=True)
class SeriesVolume:
    hu: np.ndarray
    """(slices, rows, columns) float32 HU, ordered along the slice normal."""
    spacing: tuple[float, float, float]
    """(between slices, between rows, between columns) in mm."""
    affine: np.ndarray
    sop_instance_uids: list[str]
    study_instance_uid: str
    series_instance_uid: str
    headers: list[Dataset]
    """The source datasets without pixel data, in volume order: the SR's evidence."""


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


def _hu_slice(ds: Dataset) -> np.ndarray:
    """Stored values -> HU with this slice's own rescale; padding becomes air."""
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder errors vary by plugin
        raise VolumeError(
            f"instance {ds.SOPInstanceUID}: pixel data cannot be decoded "
            f"({ds.file_meta.TransferSyntaxUID.name}: {exc})"
        ) from None
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    hu = stored.astype(np.float32)
    if slope != 1.0:
        hu *= slope
    if intercept:
        hu += intercept
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        limit = ds.get("PixelPaddingRangeLimit")
        low, high = sorted((int(padding), int(limit))) if limit is not None else (int(padding), int(padding))
        hu[(stored >= low) & (stored <= high)] = AIR_HU
    return hu


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
class _Loaded:
    """One file's header (pixel data removed) and its HU slice, or why it could not be decoded."""

    header: Dataset
    hu: np.ndarray | None
    error: str | None


def _load(path: Path) -> _Loaded:
    """Per-file work, picklable so a process pool can run it: read, decode, rescale."""
    ds = _read(path)
    if ds.SOPClassUID in MULTIFRAME_CT or ds.SOPClassUID not in CT_CLASSES:
        return _Loaded(ds, None, None)
    try:
        hu = _hu_slice(ds)
    except VolumeError as exc:
        return _Loaded(_header(ds), None, str(exc))
    return _Loaded(_header(ds), hu, None)


def read_volume(paths: Sequence[Path], executor: Executor | None = None, min_slices: int = 1) -> SeriesVolume:
    """Read, check and decode one series; ``executor`` (threads or processes) runs the per-file work."""
    if not paths:
        raise VolumeError("no files in the series")
    own = executor is None
    pool = executor or ThreadPoolExecutor(max_workers=4)
    try:
        loaded = list(pool.map(_load, paths, chunksize=8))
    finally:
        if own:
            pool.shutdown()
    images = [item for item in loaded if item.header.SOPClassUID in CT_CLASSES]
    if not images:
        classes = sorted({str(item.header.SOPClassUID.name) for item in loaded})
        raise VolumeError(f"no CT images in the series (found {', '.join(classes)})")
    enhanced = [item.header for item in images if item.header.SOPClassUID in MULTIFRAME_CT]
    if enhanced:
        if len(images) != 1:
            raise VolumeError(f"series mixes {len(enhanced)} enhanced CT object(s) with other CT images")
        array, volume = _enhanced_volume(enhanced[0])
        between_slices, between_rows, between_columns = (float(v) for v in volume.spacing)
        return SeriesVolume(
            hu=array,
            spacing=(between_slices, between_rows, between_columns),
            affine=volume.affine,
            sop_instance_uids=[enhanced[0].SOPInstanceUID],
            study_instance_uid=enhanced[0].StudyInstanceUID,
            series_instance_uid=enhanced[0].SeriesInstanceUID,
            headers=[_header(enhanced[0])],
        )
    headers = [item.header for item in images]
    _check_consistency(headers)
    if len(images) < min_slices:
        raise VolumeError(f"{len(images)} slice(s), at least {min_slices} needed")
    spacing, indices = get_series_volume_positions(headers, rtol=0.05, perpendicular_tol=1e-3)
    if spacing is None or indices is None:
        raise VolumeError(_explain_irregular(headers))
    undecodable = next((item.error for item in images if item.error), None)
    if undecodable:
        raise VolumeError(undecodable)
    ordered = [item for _, item in sorted(zip(indices, images, strict=True), key=lambda pair: pair[0])]
    first = ordered[0].header
    slices = []
    for item in ordered:
        assert item.hu is not None, "a slice without pixels has an error, refused above"
        slices.append(item.hu)
    hu = np.stack(slices)
    volume = highdicom.Volume.from_attributes(
        array=hu,
        image_position=first.ImagePositionPatient,
        image_orientation=first.ImageOrientationPatient,
        pixel_spacing=first.PixelSpacing,
        spacing_between_slices=spacing,
        frame_of_reference_uid=first.get("FrameOfReferenceUID"),
        coordinate_system="PATIENT",
    )
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    return SeriesVolume(
        hu=hu,
        spacing=(float(spacing), row_spacing, column_spacing),
        affine=volume.affine,
        sop_instance_uids=[item.header.SOPInstanceUID for item in ordered],
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=first.SeriesInstanceUID,
        headers=[item.header for item in ordered],
    )


def read_series_folder(folder: Path) -> np.ndarray:
    """The HU array of the series in ``folder`` (every ``*.dcm`` file, or every file)."""
    paths = sorted(folder.glob("*.dcm")) or sorted(p for p in folder.iterdir() if p.is_file())
    return read_volume(paths).hu
