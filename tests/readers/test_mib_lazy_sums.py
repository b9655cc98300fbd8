"""Lazy Merlin arrays: sums over whole frames read from the records, everything else dask's.

Expected values are numpy's sums of the frames the tests wrote, in the reader's orientation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from mib_helpers import write_stored
from stemcast.formats.mib.lazy_sums import LazyFrames
from stemcast.readers import mib as ours
from stemcast.writers.mib import MibWriter, write_mib

DTYPES = {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}


def random_frames(count: int, shape: tuple[int, int], depth: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**depth, size=(count, *shape), endpoint=False).astype(DTYPES[depth])


@pytest.mark.parametrize(
    ("depth", "raw"), [(1, True), (6, False), (12, False), (12, True), (24, False)]
)
def test_a_virtual_image_of_a_lazy_array_is_numpys(tmp_path: Path, depth: int, raw: bool) -> None:
    frames = random_frames(24, (64, 64), depth)
    path = write_stored(
        tmp_path / "run.mib", frames.reshape(4, 6, 64, 64), counter_depth=depth, raw=raw
    )
    data = ours.file_reader(str(path), lazy=True, chunks=(2, 6, 64, 64))[0]["data"]
    assert isinstance(data, LazyFrames)
    oriented = frames[:, ::-1].reshape(4, 6, 64, 64)
    expected = oriented.sum(axis=(-2, -1))
    for axis in ((-2, -1), (2, 3), (3, 2)):
        summed = data.sum(axis=axis)
        assert summed.name.startswith("mib-frame-sums-")  # from the records, not decoded
        result = summed.compute()
        assert result.dtype == expected.dtype
        np.testing.assert_array_equal(result, expected)
    kept = data.sum(axis=(-2, -1), keepdims=True).compute()
    np.testing.assert_array_equal(kept, oriented.sum(axis=(-2, -1), keepdims=True))


def test_other_sums_and_derived_arrays_are_dasks_own(tmp_path: Path) -> None:
    frames = random_frames(24, (16, 16), 12, seed=2)
    path = write_mib(
        tmp_path / "scan.mib", frames.reshape(4, 6, 16, 16), counter_depth=12, hdr_scan_size=True
    )
    data = ours.file_reader(str(path), lazy=True)[0]["data"]
    stack = frames.reshape(4, 6, 16, 16)
    np.testing.assert_array_equal(data.sum(axis=(0, 1)).compute(), stack.sum(axis=(0, 1)))
    np.testing.assert_array_equal(data.sum().compute(), stack.sum())
    np.testing.assert_array_equal(
        data.sum(axis=(-2, -1), dtype=np.float64).compute(),
        stack.sum(axis=(-2, -1), dtype=np.float64),
    )
    part = data[1:3, 2:5]
    assert type(part) is da.Array
    np.testing.assert_array_equal(part.sum(axis=(-2, -1)).compute(), stack[1:3, 2:5].sum((2, 3)))
    np.testing.assert_array_equal(data.compute(), stack)


def test_blocks_across_scan_lines_are_summed_by_dask(tmp_path: Path) -> None:
    frames = random_frames(24, (16, 16), 12, seed=3)
    path = write_mib(
        tmp_path / "scan.mib", frames.reshape(4, 6, 16, 16), counter_depth=12, hdr_scan_size=True
    )
    # Blocks of 2 x 3 scan positions are not consecutive frames.
    data = ours.file_reader(str(path), lazy=True, chunks=(2, 3, 16, 16))[0]["data"]
    summed = data.sum(axis=(-2, -1))
    assert not summed.name.startswith("mib-frame-sums-")
    np.testing.assert_array_equal(summed.compute(), frames.reshape(4, 6, 16, 16).sum((-2, -1)))


def test_a_frame_range_is_summed_from_its_first_frame(tmp_path: Path) -> None:
    frames = random_frames(20, (16, 16), 12, seed=4)
    path = write_mib(tmp_path / "stack.mib", frames, counter_depth=12)
    data = ours.file_reader(str(path), lazy=True, first_frame=5, last_frame=17)[0]["data"]
    summed = data.sum(axis=(-2, -1))
    assert summed.name.startswith("mib-frame-sums-")
    np.testing.assert_array_equal(summed.compute(), frames[5:17].sum(axis=(-2, -1)))


def test_a_run_without_a_complete_frame_sums_to_nothing(tmp_path: Path) -> None:
    with MibWriter(tmp_path / "cut.mib", frame_shape=(8, 8), frames_expected=8) as writer:
        # The camera stopped within the first record: its header is there, not its pixels.
        writer.write_partial(np.zeros((8, 8), np.uint16), writer.layout.record_size - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = ours.file_reader(str(tmp_path / "cut.mib"), lazy=True)[0]["data"]
    assert data.shape == (0, 8, 8)
    result = data.sum(axis=(-2, -1)).compute()
    assert result.shape == (0,)
    assert result.dtype == np.zeros((0, 8, 8), np.uint16).sum(axis=(-2, -1)).dtype
