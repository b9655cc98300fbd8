"""The eager readers' frame arrays: parallel ``sum``/``mean`` equal numpy's, bit for bit.

Expected values come from numpy's own reductions of a plain copy of the same data.
"""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemcast.formats import frame_sums
from stemcast.formats.frame_sums import FrameArray, FrameChunk, FrameMemmap, as_frames

DTYPES = ["u1", ">u2", "<u2", "<u4", ">u4", "<i2", "?"]


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the parallel path for test-sized arrays, with several blocks and threads."""
    monkeypatch.setattr(frame_sums, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(frame_sums, "BLOCK_BYTES", 64)
    monkeypatch.setattr(frame_sums, "_cores", lambda: 3)


@st.composite
def arrays_and_axes(draw: st.DrawFn) -> tuple[np.ndarray, Any, bool]:
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        values = rng.integers(0, 2, size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    flips = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
    values = values[tuple(slice(None, None, -1) if flip else slice(None) for flip in flips)]
    axis = draw(
        st.one_of(
            st.none(),
            st.integers(-ndim, ndim - 1),
            st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple),
        )
    )
    return values, axis, draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(arrays_and_axes(), st.sampled_from([FrameArray, FrameChunk]))
def test_sum_equals_numpy(case: tuple[np.ndarray, Any, bool], kind: type) -> None:
    values, axis, keepdims = case
    expected = np.sum(np.array(values), axis=axis, keepdims=keepdims)
    if values.dtype.kind in "bu":
        axes = frame_sums._axes(values, axis)
        assert frame_sums._fast_sum(values, axes, None, parallel=True) is not None
    result = np.sum(values.view(kind), axis=axis, keepdims=keepdims)
    assert type(result) is type(expected)
    np.testing.assert_array_equal(result, expected, strict=True)


@settings(max_examples=150, deadline=None)
@given(arrays_and_axes())
def test_mean_equals_numpy(case: tuple[np.ndarray, Any, bool]) -> None:
    values, axis, keepdims = case
    expected = np.mean(np.array(values), axis=axis, keepdims=keepdims)
    result = as_frames(values).mean(axis=axis, keepdims=keepdims)
    assert type(result) is type(expected)
    np.testing.assert_array_equal(result, expected, strict=True)


@pytest.mark.parametrize(
    ("shape", "dtype", "axis"),
    [
        ((3, 300, 300), np.uint16, (1, 2)),  # beyond 32 bits over a frame, not along a row
        ((3, 70000), np.uint16, 1),  # beyond 32 bits along the last axis alone
        ((2, 256, 256), np.uint8, (1, 2)),  # rows fit 16 bits, frames 32
        ((5, 4, 3), np.uint32, None),  # no narrower accumulator is safe
    ],
)
def test_largest_values_sum_exactly(shape: tuple[int, ...], dtype: type, axis: Any) -> None:
    values = np.full(shape, np.iinfo(dtype).max, dtype=dtype)
    expected = np.sum(values, axis=axis)
    np.testing.assert_array_equal(as_frames(values).sum(axis=axis), expected, strict=True)
    np.testing.assert_array_equal(values.view(FrameChunk).sum(axis=axis), expected, strict=True)


def test_sum_with_dtype_and_unsupported_arguments_match_numpy() -> None:
    values = np.arange(4 * 5 * 6, dtype=">u2").reshape(4, 5, 6)[:, ::-1]
    frames = as_frames(values)
    plain = np.array(values)
    for dtype in (np.uint32, np.uint8, np.int16, np.float32):
        np.testing.assert_array_equal(
            frames.sum(axis=(1, 2), dtype=dtype), plain.sum(axis=(1, 2), dtype=dtype), strict=True
        )
    np.testing.assert_array_equal(
        frames.sum(axis=1, initial=7), plain.sum(axis=1, initial=7), strict=True
    )
    where = plain % 3 == 0
    np.testing.assert_array_equal(
        frames.sum(axis=2, where=where), plain.sum(axis=2, where=where), strict=True
    )
    out = np.zeros(4, dtype=np.uint64)
    assert frames.sum(axis=(1, 2), out=out) is out
    np.testing.assert_array_equal(out, plain.sum(axis=(1, 2)))
    np.testing.assert_array_equal(
        frames.mean(axis=0, dtype=np.float32), plain.mean(axis=0, dtype=np.float32), strict=True
    )


def test_mean_beyond_exact_floats_is_numpy_own() -> None:
    values = np.full((8, 4), 2**62, dtype=np.uint64)
    expected = np.array(values).mean(axis=0)
    np.testing.assert_array_equal(as_frames(values).mean(axis=0), expected, strict=True)


def test_floating_point_and_signed_data_are_numpy_own() -> None:
    for values in (np.linspace(0, 1, 60, dtype=np.float32), np.arange(-30, 30, dtype=np.int16)):
        assert frame_sums._fast_sum(values, (0,), None, parallel=True) is None
        assert as_frames(values).sum() == np.array(values).sum()


class _CountingPool(ThreadPoolExecutor):
    started: ClassVar[int] = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).started += 1
        super().__init__(*args, **kwargs)


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> type[_CountingPool]:
    _CountingPool.started = 0
    monkeypatch.setattr(frame_sums, "ThreadPoolExecutor", _CountingPool)
    return _CountingPool


def test_large_arrays_are_summed_on_a_pool(pools: type[_CountingPool]) -> None:
    values = np.arange(6 * 8 * 8, dtype=np.uint16).reshape(6, 8, 8)
    assert as_frames(values).sum(axis=(1, 2)).tolist() == values.sum(axis=(1, 2)).tolist()
    assert pools.started == 1


def test_lazy_chunks_stay_on_the_calling_thread(pools: type[_CountingPool]) -> None:
    values = np.arange(6 * 8 * 8, dtype=np.uint16).reshape(6, 8, 8)
    assert values.view(FrameChunk).sum(axis=(1, 2)).tolist() == values.sum(axis=(1, 2)).tolist()
    assert pools.started == 0


def test_one_core_or_small_arrays_use_no_pool(
    pools: type[_CountingPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    values = np.ones((4, 4), dtype=np.uint16)
    monkeypatch.setattr(frame_sums, "_cores", lambda: 1)
    assert as_frames(values).sum() == 16
    monkeypatch.setattr(frame_sums, "_cores", lambda: 3)
    monkeypatch.setattr(frame_sums, "MIN_PARALLEL_BYTES", 1024)
    assert as_frames(values).sum() == 16
    assert pools.started == 0


def test_memmap_stays_a_copy_on_write_map(tmp_path: Path) -> None:
    path = tmp_path / "frames.bin"
    np.arange(6 * 4 * 4, dtype=">u2").tofile(path)
    mapped = np.memmap(path, dtype=">u2", mode="c", shape=(6, 4, 4))
    frames = as_frames(mapped[:, ::-1])
    assert isinstance(frames, FrameMemmap)
    assert isinstance(frames, np.memmap)
    assert frames.filename == mapped.filename
    assert frames.mode == "c"
    assert isinstance(frames[1:3], FrameMemmap)
    assert type(frames[[0, 2]]) is FrameArray
    np.testing.assert_array_equal(
        frames.sum(axis=(1, 2)), np.array(mapped).sum(axis=(1, 2)), strict=True
    )
    assert type(frames + 1) is np.ndarray
    assert type(frames.sum()) is np.uint64
    frames[0, 0, 0] = 9  # copy-on-write: the file is untouched
    del frames, mapped
    assert np.fromfile(path, dtype=">u2")[12] == 12


def test_ufunc_results_are_plain_and_out_is_returned() -> None:
    frames = as_frames(np.arange(24, dtype=np.uint16).reshape(2, 3, 4))
    assert type(frames * 2) is np.ndarray
    assert type(np.add.reduce(frames, axis=None)) is np.uint64
    target = as_frames(np.zeros((2, 3, 4), dtype=np.uint16))
    assert np.add(frames, 1, out=target) is target
    np.testing.assert_array_equal(target, np.arange(24).reshape(2, 3, 4) + 1)


def test_pickles_as_its_values() -> None:
    frames = as_frames(np.arange(24, dtype=">u2").reshape(2, 3, 4))
    again = pickle.loads(pickle.dumps(frames))
    plain_again = pickle.loads(pickle.dumps(np.array(frames)))
    assert type(again) is FrameArray
    assert again.dtype == plain_again.dtype
    np.testing.assert_array_equal(again, frames)


def test_non_arrays_are_returned_unchanged() -> None:
    values = [1, 2, 3]
    assert as_frames(values) is values
