"""The stored-integer decode path against the float HU path it replaced.

The worker now reads headers, then the pixel bytes at their offset into one
int16 volume, and the model's device rescales. These tests rebuild the former
result (pydicom ``pixel_array`` per slice, rescaled and padded to float32 HU on
the CPU) and require the same numbers, for native and compressed files.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from model.config import PreprocessConfig
from model.preprocess import AIR_HU, preprocess_stored, preprocess_volume
from tace.app.synthetic_ct import SeriesSpec, write_series
from worker import volume as volume_module
from worker.volume import read_volume


def _former_hu(paths: list[Path], order: list[str]) -> np.ndarray:
    """What the reader returned before: each slice's pixel_array to float32 HU, padding as air."""
    by_uid = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
        hu = stored.astype(np.float32)
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        if slope != 1.0:
            hu *= slope
        if intercept:
            hu += intercept
        padding = ds.get("PixelPaddingValue")
        if padding is not None:
            hu[stored == int(padding)] = AIR_HU
        by_uid[ds.SOPInstanceUID] = hu
    return np.stack([by_uid[uid] for uid in order])


def _series(tmp_path: Path, **spec: object) -> list[Path]:
    folder = tmp_path / "series"
    write_series(
        SeriesSpec(slices=6, rows=64, columns=64, shuffle_instance_numbers=True, seed=5, **spec),  # type: ignore[arg-type]  # the spec fields vary per test
        folder,
    )
    return sorted(folder.glob("*.dcm"))


@pytest.mark.parametrize(
    ("signed", "slope", "intercept", "dtype"),
    [(True, 0.5, -1000.0, np.int16), (False, 1.25, -1024.0, np.uint16)],
)
def test_stored_values_rescaled_on_the_device_equal_the_former_float_path(
    tmp_path: Path, signed: bool, slope: float, intercept: float, dtype: type
) -> None:
    paths = _series(tmp_path, signed=signed, rescale_slope=slope, rescale_intercept=intercept)
    volume = read_volume(paths)
    assert volume.pixels.values.dtype == dtype, "the volume stays 16-bit integers until the device"
    former = _former_hu(paths, volume.sop_instance_uids)
    assert np.array_equal(volume.hu, former)

    config = PreprocessConfig(image_size=32, max_slices=4)
    device = torch.device("cpu")
    new = preprocess_stored(volume.pixels, config, device)
    old = preprocess_volume(torch.from_numpy(former), config)
    assert new.shape == old.shape == (4, 3, 32, 32)
    assert torch.allclose(new, old, atol=1e-6)


def test_padding_becomes_air_per_slice_in_the_stored_path(tmp_path: Path) -> None:
    paths = _series(tmp_path, signed=True, rescale_slope=2.0, rescale_intercept=-1000.0)
    padded = paths[1]
    ds = pydicom.dcmread(padded)
    ds.add_new(0x00280120, "SS", int(ds.pixel_array[0, 0]))
    ds.save_as(padded)
    volume = read_volume(paths)
    assert volume.pixels.padding is not None
    former = _former_hu(paths, volume.sop_instance_uids)
    assert np.array_equal(volume.hu, former)
    assert (volume.hu == AIR_HU).any()


def test_compressed_slices_take_the_decoder_and_give_the_same_values(tmp_path: Path) -> None:
    native = _series(tmp_path / "native", signed=True, rescale_slope=0.5, rescale_intercept=-1000.0)
    rle = _series(
        tmp_path / "rle", signed=True, rescale_slope=0.5, rescale_intercept=-1000.0, compression="rle"
    )
    decoded = [volume_module._read_header(path) for path in rle]
    assert all(item.raw is None and item.decoded is not None for item in decoded)
    assert all(volume_module._read_header(path).raw is not None for path in native)
    assert np.array_equal(read_volume(rle).hu, read_volume(native).hu)


def test_a_process_pool_parses_headers_and_no_pixels_cross_the_process_boundary(tmp_path: Path) -> None:
    paths = _series(tmp_path, signed=True, rescale_slope=0.5, rescale_intercept=-1000.0)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as processes:
        headers = list(processes.map(volume_module._read_header, paths))
        from_processes = read_volume(paths, executor=processes)
    assert all(item.decoded is None and "PixelData" not in item.header for item in headers)
    with ThreadPoolExecutor(2) as threads:
        from_threads = read_volume(paths, executor=threads)
    assert np.array_equal(from_processes.pixels.values, from_threads.pixels.values)
    assert from_processes.sop_instance_uids == from_threads.sop_instance_uids


def test_truncated_pixel_data_is_a_readable_refusal(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 100])
    with pytest.raises(volume_module.VolumeError) as caught:
        read_volume(paths)
    assert paths[2].name in str(caught.value)
