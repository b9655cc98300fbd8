"""Velox spectrum streams built from the spec decode to the cubes that were encoded."""

from __future__ import annotations

import time

import numpy as np
import pytest
from emd_support import GATE, encode_spectrum_stream, random_cube
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stemcast.errors import FormatError, ParameterError
from stemcast.readers.emd import decode_spectrum_stream


def test_hand_written_stream_follows_the_spec() -> None:
    # 2 frames of 1x3 pixels, 4 channels: frame 0 = [2,2], [], [0]; frame 1 = [3], [1,1,1], [].
    stream = np.array([2, 2, GATE, GATE, 0, GATE, 3, GATE, 1, 1, 1, GATE, GATE], np.uint16)
    frames = decode_spectrum_stream(stream, (1, 3), 4, sum_frames=False)
    expected = np.zeros((2, 1, 3, 4), np.uint16)
    expected[0, 0, 0, 2] = 2
    expected[0, 0, 2, 0] = 1
    expected[1, 0, 0, 3] = 1
    expected[1, 0, 1, 1] = 3
    np.testing.assert_array_equal(frames, expected)
    np.testing.assert_array_equal(decode_spectrum_stream(stream, (1, 3), 4), expected.sum(0))


@settings(max_examples=60, deadline=None)
@given(
    cube=hnp.arrays(
        np.int64,
        st.tuples(
            st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.sampled_from([4, 8, 16])
        ),
        elements=st.integers(0, 3),
    ),
    omit_final_marker=st.booleans(),
    seed=st.integers(0, 100),
)
def test_any_encoded_cube_decodes_back(
    cube: np.ndarray, omit_final_marker: bool, seed: int
) -> None:
    stream = encode_spectrum_stream(cube, seed=seed, omit_final_marker=omit_final_marker)
    shape = cube.shape[1:3]
    decoded = decode_spectrum_stream(stream, shape, cube.shape[3], sum_frames=False)
    # A stream whose very last pixels are empty and unterminated cannot show them.
    np.testing.assert_array_equal(decoded, cube[: decoded.shape[0]])
    np.testing.assert_array_equal(
        decode_spectrum_stream(stream, shape, cube.shape[3], last_frame=cube.shape[0]),
        cube.sum(axis=0),
    )


@pytest.mark.parametrize(("first", "last"), [(0, 1), (1, 3), (2, 4), (0, 4)])
@pytest.mark.parametrize("sum_frames", [True, False])
@pytest.mark.parametrize("rebin", [1, 2, 8])
def test_frame_range_summing_and_rebinning(
    first: int, last: int, sum_frames: bool, rebin: int
) -> None:
    cube = random_cube((4, 6, 5, 32), seed=3, mean=0.4)
    stream = encode_spectrum_stream(cube)
    decoded = decode_spectrum_stream(
        stream,
        (6, 5),
        32,
        first_frame=first,
        last_frame=last,
        sum_frames=sum_frames,
        rebin_energy=rebin,
        dtype=np.uint32,
    )
    expected = cube[first:last].reshape(last - first, 6, 5, 32 // rebin, rebin).sum(axis=-1)
    np.testing.assert_array_equal(decoded, expected.sum(axis=0) if sum_frames else expected)
    assert decoded.dtype == np.uint32


def test_empty_stream_is_one_frame_of_empty_pixels() -> None:
    decoded = decode_spectrum_stream(np.zeros(0, np.uint16), (2, 3), 8, sum_frames=False)
    np.testing.assert_array_equal(decoded, np.zeros((1, 2, 3, 8)))


def test_counts_wrap_in_the_requested_dtype() -> None:
    cube = np.zeros((1, 1, 2, 4), np.int64)
    cube[0, 0, 0, 1] = 300
    decoded = decode_spectrum_stream(encode_spectrum_stream(cube), (1, 2), 4, dtype=np.uint8)
    assert decoded[0, 0, 1] == 300 % 256


def test_out_of_range_channel_is_a_corrupt_stream() -> None:
    stream = encode_spectrum_stream(random_cube((1, 2, 2, 8), seed=1, mean=1.0))
    stream[np.flatnonzero(stream != GATE)[3]] = 9
    with pytest.raises(FormatError, match=r"element \d+ holds 9.*below 8"):
        decode_spectrum_stream(stream, (2, 2), 8)


def test_rebin_must_divide_the_channels() -> None:
    with pytest.raises(ParameterError, match="divisor"):
        decode_spectrum_stream(np.array([GATE], np.uint16), (1, 1), 10, rebin_energy=3)


def test_ten_million_events_decode_in_seconds() -> None:
    rng = np.random.default_rng(0)
    pixels, events = 128 * 128 * 10, 10_000_000
    counts = rng.multinomial(events, np.full(pixels, 1 / pixels))
    stream = np.full(events + pixels, GATE, np.uint16)
    is_event = np.ones(stream.size, bool)
    is_event[np.cumsum(counts) + np.arange(pixels)] = False
    stream[is_event] = rng.integers(0, 4096, events, dtype=np.uint16)
    start = time.perf_counter()
    cube = decode_spectrum_stream(stream, (128, 128), 4096, dtype=np.uint32)
    elapsed = time.perf_counter() - start
    assert int(cube.sum()) == events
    np.testing.assert_array_equal(cube.sum(axis=-1).ravel(), counts.reshape(10, -1).sum(axis=0))
    # About 0.3 s here; a per-event Python loop would take minutes.
    assert elapsed < 10


@pytest.mark.slow
def test_hundred_million_events_decode_in_seconds() -> None:
    rng = np.random.default_rng(1)
    pixels, events = 256 * 256 * 20, 100_000_000
    counts = rng.poisson(events / pixels, pixels)
    stream = np.full(int(counts.sum()) + pixels, GATE, np.uint16)
    is_event = np.ones(stream.size, bool)
    is_event[np.cumsum(counts) + np.arange(pixels)] = False
    stream[is_event] = rng.integers(0, 4096, int(counts.sum()), dtype=np.uint16)
    del is_event
    start = time.perf_counter()
    cube = decode_spectrum_stream(stream, (256, 256), 4096, dtype=np.uint32)
    elapsed = time.perf_counter() - start
    assert int(cube.sum(dtype=np.int64)) == int(counts.sum())
    assert elapsed < 30
