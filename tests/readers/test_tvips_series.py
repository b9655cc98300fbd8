"""The TVIPS frame core: header parsing (fuzzed), record layout, series access and batches.

The header parsers are pure functions from bytes, so they are fuzzed without files: a main
header rendered from any valid field values parses back to the same values, and any 256 bytes
either parse or raise a ``stemcast.errors`` exception. Version-1 files are built here byte by
byte from the specification, independently of the writer.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemcast.batch import FrameBatch
from stemcast.errors import StemcastError
from stemcast.readers.tvips import (
    MainHeader,
    TvipsLayout,
    TvipsSeries,
    file_reader,
    format_main_header,
    frame_header_dtype,
    parse_frame_header,
    parse_main_header,
)
from stemcast.writers.tvips import TvipsWriter

U32 = st.integers(0, 2**32 - 1)


@st.composite
def main_headers(draw: st.DrawFn) -> MainHeader:
    version = draw(st.sampled_from([1, 2]))
    return MainHeader(
        version=version,
        dimx=draw(st.integers(1, 2**32 - 1)),
        dimy=draw(st.integers(1, 2**32 - 1)),
        bitsperpixel=draw(st.sampled_from([8, 16, 32, 64])),
        offsetx=draw(U32),
        offsety=draw(U32),
        binx=draw(U32),
        biny=draw(U32),
        pixelsize=draw(U32),
        ht=draw(U32),
        magtotal=draw(U32),
        frameheaderbytes=draw(st.integers(60, 2**32 - 1) if version == 2 else U32),
        dummy=draw(st.binary(min_size=1, max_size=204).filter(lambda raw: raw[-1:] != b"\0")),
    )


@given(main_headers())
def test_main_header_round_trips(header: MainHeader) -> None:
    raw = format_main_header(header)
    assert len(raw) == 256
    assert parse_main_header(raw) == header


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=300))
def test_any_bytes_parse_or_raise_a_stemcast_error(raw: bytes) -> None:
    try:
        header = parse_main_header(raw)
    except StemcastError:
        return
    TvipsLayout.from_main_header(header)


@given(st.integers(60, 400))
def test_version_2_frame_headers_of_any_size(size: int) -> None:
    dtype = frame_header_dtype(size)
    assert dtype.itemsize == size
    names = dtype.names or ()
    assert names[:15] == (
        "num",
        "timestamp",
        "ms",
        "LUTidx",
        "fcurrent",
        "mag",
        "mode",
        "stagex",
        "stagey",
        "stagez",
        "stagea",
        "stageb",
        "rotidx",
        "temperature",
        "objective",
    )
    assert ("scan_y" in names) == (size >= 76)


@given(U32, U32, st.integers(0, 999), st.integers(1, 2), st.floats(-1e3, 1e3, width=32))
def test_frame_header_parses_its_fields(
    num: int, seconds: int, ms: int, mode: int, stage: float
) -> None:
    record = np.zeros(1, frame_header_dtype(64))
    record["num"], record["timestamp"], record["ms"] = num, seconds, ms
    record["mode"], record["stagea"], record["rotidx"] = mode, stage, 5
    header = parse_frame_header(record.tobytes(), 64)
    assert (header.num, header.timestamp, header.ms, header.mode) == (num, seconds, ms, mode)
    assert (header.stagea, header.rotidx) == (stage, 5)


def test_version_1_frame_header_has_three_fields() -> None:
    header = parse_frame_header(struct.pack("<3I", 4, 1_000_000_000, 250), 12)
    assert (header.num, header.timestamp, header.ms, header.mode) == (4, 1_000_000_000, 250, None)
    assert header.utc.isoformat() == "2001-09-09T01:46:40.250000+00:00"


def test_reference_version_1_files_keep_their_long_frame_headers() -> None:
    ours = MainHeader(version=1, dimx=2, dimy=2, bitsperpixel=8, frameheaderbytes=60)
    reference = MainHeader(
        version=1,
        dimx=2,
        dimy=2,
        bitsperpixel=8,
        frameheaderbytes=64,
        dummy=b"HYPERSPY " * 22 + b"HYPERS",
    )
    assert TvipsLayout.from_main_header(ours).header_bytes == 12
    assert TvipsLayout.from_main_header(reference).header_bytes == 64


def write_version_1_by_hand(path: Path, frames: np.ndarray) -> None:
    """A version-1 series as the TVIPS recorder writes it (spec §2 and §3.1)."""
    _, rows, columns = frames.shape
    main = struct.pack("<13I", 256, 1, columns, rows, 8, 0, 0, 1, 1, 3, 300, 1000, 0)
    with open(path, "wb") as stream:
        stream.write(main + b"TVIPS " * 34)
        for index, frame in enumerate(frames):
            stream.write(struct.pack("<3I", index, 1_600_000_000 + index // 4, 250 * (index % 4)))
            stream.write(frame.astype(np.uint8).tobytes())


def test_version_1_series_written_by_hand(tmp_path: Path) -> None:
    frames = np.arange(6 * 3 * 2, dtype=np.uint8).reshape(6, 3, 2)
    write_version_1_by_hand(tmp_path / "rec_000.tvips", frames)
    result = file_reader(tmp_path / "rec.tvips")[0]
    np.testing.assert_array_equal(result["data"], frames)
    time_axis = result["axes"][0]
    assert (time_axis["scale"], time_axis["offset"]) == (0.25, 1_600_000_000.0)
    assert result["metadata"]["General"]["time"] == "12:26:40"
    assert result["metadata"]["Acquisition_instrument"]["TEM"] == {
        "magnification": 1000,
        "beam_energy": 300,
    }
    assert [axis["scale"] for axis in result["axes"][1:]] == [3.0, 3.0]
    scan = file_reader(tmp_path / "rec.tvips", scan_shape=(2, 2), scan_start_frame=1)[0]
    np.testing.assert_array_equal(scan["data"], frames[1:5].reshape(2, 2, 3, 2))


# --------------------------------------------------------------------------------------------
# Series access
# --------------------------------------------------------------------------------------------


@pytest.fixture
def split_series(tmp_path: Path) -> tuple[TvipsSeries, np.ndarray]:
    frames = (np.arange(23 * 6 * 7) * 37 % 65521).astype(np.uint16).reshape(23, 6, 7)
    with TvipsWriter(tmp_path / "s.tvips", (6, 7), max_file_size=256 + 5 * 144) as writer:
        writer.write(frames[:10])
        writer.write(frames[10:])
    series = TvipsSeries.open(tmp_path / "s_000.tvips")
    assert [part.frames for part in series.parts] == [5, 6, 6, 6]
    return series, frames


def test_batches_cover_the_series_across_parts(
    split_series: tuple[TvipsSeries, np.ndarray],
) -> None:
    series, frames = split_series
    batches = list(series.batches(2, 21, batch_frames=4))
    assert all(isinstance(batch, FrameBatch) for batch in batches)
    assert [(batch.start, batch.stop) for batch in batches] == [
        (2, 6),
        (6, 10),
        (10, 14),
        (14, 18),
        (18, 21),
    ]
    np.testing.assert_array_equal(np.concatenate([b.frames for b in batches]), frames[2:21])
    headers = np.concatenate([batch.headers for batch in batches])
    assert headers["num"].tolist() == list(range(2, 21))


def test_frames_view_maps_one_part_without_copy(
    split_series: tuple[TvipsSeries, np.ndarray],
) -> None:
    series, frames = split_series
    view = series.frames_view(6, 10)
    assert not view.flags.writeable
    np.testing.assert_array_equal(view, frames[6:10])
    across = series.frames_view(3, 12)
    assert across.flags.writeable
    np.testing.assert_array_equal(across, frames[3:12])


def test_read_frames_gathers_in_any_order(split_series: tuple[TvipsSeries, np.ndarray]) -> None:
    series, frames = split_series
    order = [22, 0, 5, 5, 11, 4, 17, 16]
    np.testing.assert_array_equal(series.read_frames(order), frames[order])


def test_lazy_chunks_follow_the_files(split_series: tuple[TvipsSeries, np.ndarray]) -> None:
    series, frames = split_series
    result = file_reader(series.path, lazy=True, rechunking=False)[0]
    assert result["data"].chunks[0] == (5, 6, 6, 6)
    np.testing.assert_array_equal(result["data"].compute(), frames)
    scan = file_reader(series.path, lazy=True, scan_shape=(4, 5), scan_start_frame=2)[0]
    np.testing.assert_array_equal(
        scan["data"][1:3, ::2, 1:4].compute(), frames[2:22].reshape(4, 5, 6, 7)[1:3, ::2, 1:4]
    )


def test_series_is_picklable(split_series: tuple[TvipsSeries, np.ndarray]) -> None:
    import pickle

    series, _ = split_series
    assert pickle.loads(pickle.dumps(series)) == series


def test_auto_chunks_end_where_the_files_end(split_series: tuple[TvipsSeries, np.ndarray]) -> None:
    series, frames = split_series
    stack = file_reader(series.path, lazy=True)[0]["data"]
    assert set(np.cumsum(stack.chunks[0])) >= {5, 11, 17, 23}
    # Scan lines of 4 frames from frame 1: the files end inside lines 1, 2 and 4.
    scan = file_reader(series.path, lazy=True, scan_shape=(5, 4), scan_start_frame=1)[0]["data"]
    assert scan.chunks[0] == (1, 1, 1, 1, 1)
    np.testing.assert_array_equal(scan.compute(), frames[1:21].reshape(5, 4, 6, 7))
