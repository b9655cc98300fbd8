"""Bad TVIPS input gets a clear ``stemcast.errors`` exception naming the file, byte or parameter.

Missing ``_000``, gaps in the part numbers, headers that do not match their records, parts of
another recording, nonsense parameters; and the one case that is not an error: a truncated last
record, which is a run cut short (skipped with a warning, or simply not yet complete for a
series that is still being written).
"""

from __future__ import annotations

import os
import shutil
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stemcast.errors import FormatError, ParameterError, TruncatedError, UnsupportedError
from stemcast.readers.tvips import TvipsSeries, file_reader
from stemcast.writers.tvips import TvipsWriter

FRAME = (4, 5)
RECORD = 60 + 4 * 5 * 2


def make_series(
    path: Path,
    frames: int = 6,
    *,
    max_file_size: int | None = None,
    value: int = 7,
    start: datetime | None = None,
) -> list[Path]:
    with TvipsWriter(path, FRAME, max_file_size=max_file_size, start_time=start) as writer:
        writer.write(np.full((frames, *FRAME), value, np.uint16))
        return list(writer.paths)


def patch(path: Path, offset: int, value: int) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        stream.write(struct.pack("<I", value))


# --------------------------------------------------------------------------------------------
# Names and parts
# --------------------------------------------------------------------------------------------


def test_wrong_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"extension is '\.bla'"):
        file_reader(tmp_path / "scan_000.bla")


def test_later_part_is_refused_with_the_name_of_the_first(tmp_path: Path) -> None:
    make_series(tmp_path / "scan.tvips", max_file_size=400)
    with pytest.raises(FormatError, match=r"scan_000\.tvips, which holds the main header"):
        file_reader(tmp_path / "scan_001.tvips")


def test_missing_000_is_named(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "scan.tvips", max_file_size=400)
    paths[0].unlink()
    with pytest.raises(FormatError) as caught:
        file_reader(tmp_path / "scan.tvips")
    assert caught.value.path == str(paths[0])
    assert "first part of the series" in str(caught.value)


def test_gap_in_the_part_numbers_is_refused(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "scan.tvips", frames=10, max_file_size=400)
    assert len(paths) == 4  # 1 + 4 + 4 + 1 records
    paths[2].unlink()
    with pytest.raises(FormatError, match="part _002 of the series is missing but part _003"):
        file_reader(tmp_path / "scan_000.tvips")


def test_part_of_another_recording_is_refused(tmp_path: Path) -> None:
    make_series(tmp_path / "new.tvips", max_file_size=400, start=datetime(2024, 1, 2, tzinfo=UTC))
    old = make_series(
        tmp_path / "old.tvips", frames=10, max_file_size=400, start=datetime(2024, 1, 1, tzinfo=UTC)
    )
    shutil.copyfile(old[3], tmp_path / "new_002.tvips")
    with pytest.raises(FormatError, match=r"before the last frame of new_001\.tvips") as caught:
        file_reader(tmp_path / "new.tvips")
    assert caught.value.path == str(tmp_path / "new_002.tvips")


# --------------------------------------------------------------------------------------------
# Headers that do not match their records
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "value", "error", "match"),
    [
        (0, 255, FormatError, "main header size field is 255"),
        (4, 3, UnsupportedError, "TVIPS format version 3"),
        (16, 12, FormatError, "12 bits per pixel"),
        (8, 0, FormatError, "empty frames of 0 x 4"),
        (48, 40, FormatError, "version-2 frame headers of 40 bytes"),
    ],
)
def test_bad_main_header_is_refused(
    tmp_path: Path, offset: int, value: int, error: type[Exception], match: str
) -> None:
    (path,) = make_series(tmp_path / "s.tvips")
    patch(path, offset, value)
    with pytest.raises(error, match=match) as caught:
        file_reader(path)
    assert f"byte {offset}" in str(caught.value)


@pytest.mark.parametrize("size", [0, 100])
def test_main_header_cut_short(tmp_path: Path, size: int) -> None:
    (path,) = make_series(tmp_path / "s.tvips")
    os.truncate(path, size)
    with pytest.raises(TruncatedError, match=f"main header cut short: {size} of 256"):
        file_reader(path)


def test_frame_size_that_does_not_match_the_records_is_refused(tmp_path: Path) -> None:
    (path,) = make_series(tmp_path / "s.tvips", value=5000)
    patch(path, 8, FRAME[1] + 1)  # dimx 6 instead of 5: records are read out of step
    with pytest.raises(FormatError, match="record 4 is not a frame header") as caught:
        file_reader(path)
    assert "byte" in str(caught.value)


def test_part_that_is_not_whole_records_is_refused(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "s.tvips", frames=9, max_file_size=400)
    with open(paths[1], "ab") as stream:
        stream.write(b"\0" * 10)
    with pytest.raises(FormatError, match="records never straddle files") as caught:
        file_reader(paths[0])
    assert caught.value.path == str(paths[1])
    assert caught.value.offset == 4 * RECORD


def test_series_without_frames_is_refused_by_the_reader(tmp_path: Path) -> None:
    (path,) = make_series(tmp_path / "s.tvips", frames=0)
    assert TvipsSeries.open(path).frames == 0
    with pytest.raises(TruncatedError, match="no complete frame record"):
        file_reader(path)


# --------------------------------------------------------------------------------------------
# A run cut short is not an error
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_file_size", [None, 400])
def test_truncated_last_record_is_skipped_with_a_warning(
    tmp_path: Path, max_file_size: int | None
) -> None:
    paths = make_series(tmp_path / "s.tvips", frames=7, max_file_size=max_file_size)
    os.truncate(paths[-1], paths[-1].stat().st_size - 11)
    with pytest.warns(UserWarning, match=f"last {RECORD - 11} bytes are an incomplete"):
        result = file_reader(paths[0], lazy=True)[0]
    assert result["data"].shape == (6, *FRAME)
    assert result["data"].compute().max() == 7


def test_growing_series_reads_only_complete_records(tmp_path: Path) -> None:
    with TvipsWriter(tmp_path / "g.tvips", FRAME, max_file_size=400) as writer:
        writer.write(np.ones((3, *FRAME), np.uint16))
        series = TvipsSeries.open(tmp_path / "g.tvips")
        with open(writer.paths[-1], "ab") as stream:  # the camera is mid-record
            stream.write(b"\1" * 30)
        now = series.refresh()
        assert (now.frames, now.partial_bytes) == (3, 30)
        assert [len(batch) for batch in now.batches(batch_frames=2)] == [2, 1]


def test_replaced_series_is_noticed_on_refresh(tmp_path: Path) -> None:
    make_series(tmp_path / "r.tvips", frames=5)
    series = TvipsSeries.open(tmp_path / "r.tvips")
    make_series(tmp_path / "r.tvips", frames=2)
    with pytest.raises(FormatError, match="replaced by another recording"):
        series.refresh()


# --------------------------------------------------------------------------------------------
# Nonsense parameters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter", "match"),
    [
        ({"scan_shape": "square"}, "scan_shape", "neither 'auto' nor a tuple"),
        ({"scan_shape": (0, 3)}, "scan_shape", "size below 1"),
        ({"scan_shape": ()}, "scan_shape", "size below 1"),
        ({"scan_shape": (2.5, 2)}, "scan_shape", "tuple of int"),
        ({"scan_shape": 6}, "scan_shape", "tuple of int"),
        ({"scan_shape": (2, 4)}, "scan_shape", "needs frames 0..7, but the series has 6"),
        ({"scan_shape": (2, 2), "scan_start_frame": 3}, "scan_shape", "needs frames 3..6"),
        ({"scan_start_frame": -1}, "scan_start_frame", "negative"),
        ({"scan_start_frame": "1"}, "scan_start_frame", "expected an int"),
        ({"winding_scan_axis": "z"}, "winding_scan_axis", "Invalid winding scan axis"),
        ({"winding_scan_axis": True}, "winding_scan_axis", "Invalid winding scan axis"),
        ({"hysteresis": 1.5}, "hysteresis", "expected an int"),
    ],
)
def test_nonsense_parameters_are_refused(
    tmp_path: Path, kwargs: dict[str, Any], parameter: str, match: str
) -> None:
    (path,) = make_series(tmp_path / "s.tvips")
    with pytest.raises(ParameterError, match=match) as caught:
        file_reader(path, **kwargs)
    assert caught.value.parameter == parameter


def test_winding_without_a_scan_is_ignored_with_a_warning(tmp_path: Path) -> None:
    (path,) = make_series(tmp_path / "s.tvips")
    with pytest.warns(UserWarning, match="winding_scan_axis needs a scan"):
        result = file_reader(path, winding_scan_axis="x")[0]
    assert result["data"].shape == (6, *FRAME)


def test_batches_refuse_a_bad_range(tmp_path: Path) -> None:
    (path,) = make_series(tmp_path / "s.tvips")
    series = TvipsSeries.open(path)
    with pytest.raises(ParameterError, match="batch_frames"):
        next(series.batches(batch_frames=0))
    with pytest.raises(ParameterError, match="outside 0:6"):
        next(series.batches(2, 9))
