"""The TVIPS writer: files the reference reads identically, streaming, splitting, metadata.

Every file the writer makes for a combination of its parameters (version 2 frame headers
padded or not, split or not, stacks and scans, 8 to 64 bits, numpy / dask / iterator input)
is read by the reference reader (rosettasciio) with the same data and axes as by stemcast's
reader. Version-1 files, which the reference refuses, are read back by stemcast.
"""

from __future__ import annotations

import tracemalloc
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest

from stemcast.errors import ParameterError
from stemcast.readers.tvips import TvipsSeries, file_reader
from stemcast.writers.tvips import TvipsWriter, file_writer, writer_base
from tvips_helpers import (
    assert_same_read,
    machine_time_zone,
    ref_read,
    ref_write,
    signal_dict,
)


@pytest.fixture(autouse=True)
def _utc_machine() -> Iterator[None]:
    with machine_time_zone("UTC"):
        yield


def write(path: Path, signal: dict[str, Any], **kwargs: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file_writer(path, signal, show_progressbar=False, **kwargs)


def read(path: Path, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return file_reader(path, **kwargs)[0]


def ramp(shape: tuple[int, ...], dtype: str = "uint16") -> np.ndarray:
    # A multiplicative hash: every byte of every pixel varies (astype wraps).
    values = np.arange(int(np.prod(shape)), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return (values >> np.uint64(64 - 8 * np.dtype(dtype).itemsize)).astype(dtype).reshape(shape)


def as_input(data: np.ndarray, kind: str) -> Any:
    if kind == "numpy":
        return data
    if kind == "dask":
        return da.from_array(data, chunks=(1,) * (data.ndim - 2) + data.shape[-2:])
    flat = data.reshape(-1, *data.shape[-2:])
    return (flat[i] for i in range(len(flat)))


SHAPES = [(5, 3, 4), (2, 3, 4, 5), (2, 2, 3, 3, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64"])
@pytest.mark.parametrize("extra", [0, 7, 48])
@pytest.mark.parametrize("max_file_size", [None, 1, 700])
@pytest.mark.parametrize("kind", ["numpy", "dask", "iterator"])
def test_reference_reads_what_we_write(
    tmp_path: Path,
    shape: tuple[int, ...],
    dtype: str,
    extra: int,
    max_file_size: int | None,
    kind: str,
) -> None:
    data = ramp(shape, dtype)
    signal = signal_dict(as_input(data, kind), shape=shape)
    write(
        tmp_path / "ours.tvips", signal, frame_header_extra_bytes=extra, max_file_size=max_file_size
    )
    first = tmp_path / "ours_000.tvips"
    kwargs: dict[str, Any] = {"scan_shape": shape[:-2]} if len(shape) > 3 else {}
    ours, reference = read(first, **kwargs), ref_read(first, **kwargs)
    np.testing.assert_array_equal(reference["data"], data)
    assert_same_read(ours, reference)
    assert_same_read(read(first, lazy=True), ref_read(first, lazy=True))


@pytest.mark.parametrize("max_file_size", [None, 1, 700])
@pytest.mark.parametrize("extra", [0, 9])
def test_split_matches_the_reference_file_sizes(
    tmp_path: Path, max_file_size: int | None, extra: int
) -> None:
    signal = signal_dict(ramp((3, 4, 5, 6), "uint32"))
    write(
        tmp_path / "ours.tvips", signal, max_file_size=max_file_size, frame_header_extra_bytes=extra
    )
    ref_write(
        tmp_path / "ref.tvips", signal, max_file_size=max_file_size, frame_header_extra_bytes=extra
    )
    ours = sorted((p.name[4:], p.stat().st_size) for p in tmp_path.glob("ours_*"))
    reference = sorted((p.name[3:], p.stat().st_size) for p in tmp_path.glob("ref_*"))
    assert ours == reference


def test_too_small_max_file_size_is_raised_to_one_record_with_a_warning(tmp_path: Path) -> None:
    # 3x4 scan of 5x6 uint32: records of 60 + 120 bytes; 256 + 180 = 436 at least.
    with pytest.warns(UserWarning, match="using 436"):
        file_writer(
            tmp_path / "s.tvips",
            signal_dict(ramp((3, 4, 5, 6), "uint32")),
            max_file_size=100,
            show_progressbar=False,
        )
    sizes = [p.stat().st_size for p in sorted(tmp_path.glob("s_*.tvips"))]
    assert sizes == [436] + [360] * 5 + [180]


@pytest.mark.parametrize("max_file_size", [None, 300])
def test_version_1_files_read_back(tmp_path: Path, max_file_size: int | None) -> None:
    data = ramp((7, 4, 5))
    write(tmp_path / "v1.tvips", signal_dict(data), version=1, max_file_size=max_file_size)
    series = TvipsSeries.open(tmp_path / "v1_000.tvips")
    assert series.layout.header_bytes == 12
    assert series.main_header.version == 1
    ours = read(tmp_path / "v1_000.tvips")
    np.testing.assert_array_equal(ours["data"], data)
    assert ours["axes"][0]["scale"] == pytest.approx(0.001)
    assert ours["axes"][1]["units"] == "nm"  # version 1 records no mode
    with pytest.raises(ValueError, match="frame header"):
        ref_read(tmp_path / "v1_000.tvips")


def test_names_get_000_and_the_extension(tmp_path: Path) -> None:
    assert writer_base(tmp_path / "a_000.tvips") == (tmp_path / "a", ".tvips")
    assert writer_base(tmp_path / "a.tvips") == (tmp_path / "a", ".tvips")
    assert writer_base(tmp_path / "a.TVIPS") == (tmp_path / "a", ".TVIPS")
    assert writer_base(tmp_path / "a") == (tmp_path / "a", ".tvips")
    assert writer_base(tmp_path / "a_001.tvips") == (tmp_path / "a_001", ".tvips")


def test_earlier_series_parts_are_replaced(tmp_path: Path) -> None:
    write(tmp_path / "s.tvips", signal_dict(ramp((9, 4, 4))), max_file_size=400)
    assert len(list(tmp_path.glob("s_*.tvips"))) > 2
    write(tmp_path / "s.tvips", signal_dict(ramp((2, 4, 4))))
    assert [p.name for p in tmp_path.glob("s_*")] == ["s_000.tvips"]
    np.testing.assert_array_equal(read(tmp_path / "s.tvips")["data"], ramp((2, 4, 4)))


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    def frames() -> Iterator[np.ndarray]:
        yield np.zeros((4, 4), np.uint16)
        yield np.full((4, 4), 2, np.uint16)
        raise RuntimeError("camera gone")

    signal = signal_dict(frames(), shape=(3, 4, 4))
    with pytest.raises(RuntimeError, match="camera gone"):
        write(tmp_path / "f.tvips", signal, max_file_size=300)
    assert list(tmp_path.iterdir()) == []


def test_iterator_input_holds_only_a_few_frames(tmp_path: Path) -> None:
    frame = np.ones((128, 128), np.uint16)
    count = 400  # 13 MB of frames; only one frame exists at a time
    signal = signal_dict((frame for _ in range(count)), shape=(count, 128, 128))
    tracemalloc.start()
    try:
        write(tmp_path / "big.tvips", signal, max_file_size=2_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000
    series = TvipsSeries.open(tmp_path / "big.tvips")
    assert series.frames == count
    assert len(series.parts) == 7


def test_numpy_input_is_written_a_few_mib_at_a_time(tmp_path: Path) -> None:
    data = np.ones((2, 200, 128, 128), np.uint16)[:, ::2]  # not contiguous: gathered per batch
    tracemalloc.start()
    try:
        write(tmp_path / "nc.tvips", signal_dict(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    np.testing.assert_array_equal(read(tmp_path / "nc.tvips", scan_shape=(2, 100))["data"], data)


# --------------------------------------------------------------------------------------------
# Growing writer
# --------------------------------------------------------------------------------------------


def test_growing_series_can_be_followed_while_written(tmp_path: Path) -> None:
    frames = ramp((10, 8, 8))
    record = 60 + 128
    with TvipsWriter(tmp_path / "live.tvips", (8, 8), max_file_size=256 + 3 * record) as writer:
        series = TvipsSeries.open(tmp_path / "live_000.tvips")
        assert series.frames == 0
        seen: list[np.ndarray] = []
        for start in range(0, 10, 4):
            writer.write(frames[start : start + 4])
            series = series.refresh()
            seen += [batch.frames for batch in series.batches(sum(map(len, seen)), batch_frames=3)]
        # _000 holds 3 records, the others (256 + 3 * 188) // 188 = 4.
        assert [part.frames for part in series.parts] == [3, 4, 3]
    np.testing.assert_array_equal(np.concatenate(seen), frames)


def test_growing_writer_takes_header_fields_per_frame(tmp_path: Path) -> None:
    start = datetime(2024, 5, 6, 7, 8, 9, 500_000, tzinfo=UTC)
    with TvipsWriter(
        tmp_path / "g.tvips",
        (2, 2),
        np.uint8,
        start_time=start,
        frame_interval_s=0.25,
        frame_fields={"mode": 1, "fcurrent": 2.5},
    ) as writer:
        writer.write(np.zeros((3, 2, 2), np.uint8), rotidx=[0, 5, 6])
        writer.write(np.zeros((2, 2), np.uint8), num=77)
    headers = TvipsSeries.open(tmp_path / "g.tvips").headers()
    assert headers["rotidx"].tolist() == [0, 5, 6, 4]
    assert headers["num"].tolist() == [0, 1, 2, 77]
    assert headers["mode"].tolist() == [1] * 4
    times = headers["timestamp"].astype(np.int64) * 1000 + headers["ms"]
    assert np.diff(times).tolist() == [250] * 3
    ours = read(tmp_path / "g.tvips")
    assert ours["metadata"]["General"]["time"] == "07:08:09.500"
    assert ours["axes"][0]["scale"] == 0.25


def test_writer_scan_shape_restarts_the_rotator_for_each_scan(tmp_path: Path) -> None:
    data = ramp((2, 3, 4, 4, 4))  # two scans of 3 x 4
    write(tmp_path / "t.tvips", signal_dict(data), frame_header_extra_bytes=16)
    headers = TvipsSeries.open(tmp_path / "t.tvips").headers()
    assert headers["rotidx"].tolist() == list(range(1, 13)) * 2
    assert headers["scan_x"].tolist() == [0, 1, 2, 3] * 6
    auto = read(tmp_path / "t.tvips", scan_shape="auto")
    assert auto["original_metadata"]["scan_shape"]["shape"] == (4, 3, 2)
    np.testing.assert_array_equal(auto["data"], data)


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def test_metadata_round_trips(tmp_path: Path) -> None:
    metadata = {
        "General": {"date": "2022-12-31", "time": "23:59:59.750", "time_zone": "UTC"},
        "Acquisition_instrument": {
            "TEM": {
                "beam_energy": 200.0,
                "magnification": 80.0,
                "beam_current": 23.0,
                "Stage": {"tilt_alpha": 10.5, "tilt_beta": -3.0, "x": 1.0, "y": 2.0, "z": 3.0},
            }
        },
        "Signal": {"signal_type": "diffraction"},
    }
    signal = signal_dict(
        ramp((4, 3, 3)),
        metadata=metadata,
        nav_units="s",
        nav_scale=0.002,
        sig_scale=2.0,
        sig_offset=3.0,
    )
    write(tmp_path / "m.tvips", signal)
    ours = read(tmp_path / "m.tvips")
    tem = ours["metadata"]["Acquisition_instrument"]["TEM"]
    assert ours["metadata"]["General"]["time"] == "23:59:59.750"
    assert tem["Stage"] == metadata["Acquisition_instrument"]["TEM"]["Stage"]
    assert (tem["beam_energy"], tem["magnification"], tem["beam_current"]) == (200, 80, 23.0)
    assert ours["metadata"]["Signal"]["signal_type"] == "diffraction"
    time_axis, dy, dx = ours["axes"]
    assert time_axis["scale"] == pytest.approx(0.002)
    expected_start = datetime(2022, 12, 31, 23, 59, 59, 750_000, tzinfo=UTC).timestamp()
    assert time_axis["offset"] == pytest.approx(expected_start)
    assert (dy["scale"], dy["offset"], dy["units"], dx["offset"]) == (2.0, 3.0, "1/nm", 3.0)
    reference = ref_read(tmp_path / "m_000.tvips")
    assert_same_read(ours, reference)


@pytest.mark.parametrize(
    ("zone", "utc_time"),
    [
        ("UTC", "12:34:56"),
        ("Europe/Berlin", "11:34:56"),
        ("CET", "11:34:56"),
        ("+02:00", "10:34:56"),
        ("America/New_York", "17:34:56"),
    ],
)
def test_time_zone_is_converted_to_utc(tmp_path: Path, zone: str, utc_time: str) -> None:
    metadata = {"General": {"date": "2020-01-15", "time": "12:34:56", "time_zone": zone}}
    write(tmp_path / "z.tvips", signal_dict(ramp((2, 2, 2)), metadata=metadata))
    assert read(tmp_path / "z.tvips")["metadata"]["General"]["time"] == utc_time


def test_unknown_time_zone_is_taken_as_utc_with_a_warning(tmp_path: Path) -> None:
    metadata = {"General": {"date": "2020-01-15", "time": "12:34:56", "time_zone": "Mars/Base"}}
    with pytest.warns(UserWarning, match="Mars/Base"):
        file_writer(
            tmp_path / "z.tvips",
            signal_dict(ramp((2, 2, 2)), metadata=metadata),
            show_progressbar=False,
        )
    assert read(tmp_path / "z.tvips")["metadata"]["General"]["time"] == "12:34:56"


@pytest.mark.parametrize(
    ("units", "scale", "mode", "pixelsize"),
    [
        ("nm", 2.0, 1, 2),
        ("m", 3e-9, 1, 3),
        ("1/nm", 4.0, 2, 4),
        ("1/m", 5e9, 2, 5),
        ("nm^-1", 6.0, 2, 6),
        ("1/Å", 0.7, 2, 7),
        ("µm", 0.008, 1, 8),
    ],
)
def test_mode_and_pixel_size_from_the_signal_units(
    tmp_path: Path, units: str, scale: float, mode: int, pixelsize: int
) -> None:
    write(tmp_path / "u.tvips", signal_dict(ramp((2, 2, 2)), sig_units=units, sig_scale=scale))
    series = TvipsSeries.open(tmp_path / "u.tvips")
    assert series.main_header.pixelsize == pixelsize
    assert series.headers()["mode"].tolist() == [mode, mode]


def test_unknown_units_warn_and_default_to_diffraction(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="could not be converted"):
        file_writer(
            tmp_path / "u.tvips",
            signal_dict(ramp((2, 2, 2)), sig_units="foo"),
            show_progressbar=False,
        )
    assert TvipsSeries.open(tmp_path / "u.tvips").headers()["mode"].tolist() == [2, 2]


def test_mode_argument_wins_over_units(tmp_path: Path) -> None:
    write(tmp_path / "u.tvips", signal_dict(ramp((2, 2, 2)), sig_units="1/nm"), mode=1)
    assert read(tmp_path / "u.tvips")["axes"][1]["units"] == "nm"


def test_pixel_size_is_taken_from_the_signal_axis_not_the_first_axis(tmp_path: Path) -> None:
    signal = signal_dict(ramp((3, 2, 2)), nav_units="s", nav_scale=0.5, sig_scale=7.0)
    write(tmp_path / "p.tvips", signal)
    assert TvipsSeries.open(tmp_path / "p.tvips").main_header.pixelsize == 7


def test_inexact_and_negative_calibrations_warn(tmp_path: Path) -> None:
    signal = signal_dict(ramp((2, 2, 2)), sig_scale=0.05, sig_offset=-1.5)
    with (
        pytest.warns(UserWarning, match="pixel size 0.05 is stored as 0"),
        pytest.warns(UserWarning, match="offset -1.5 is negative"),
    ):
        file_writer(tmp_path / "c.tvips", signal, show_progressbar=False)
    header = TvipsSeries.open(tmp_path / "c.tvips").main_header
    assert (header.pixelsize, header.offsetx, header.offsety) == (0, 0, 0)


def test_signed_integers_without_negative_values_are_written(tmp_path: Path) -> None:
    data = (ramp((3, 4, 4)) // 2).astype(np.int16)
    write(tmp_path / "i.tvips", signal_dict(data))
    ours = read(tmp_path / "i.tvips")
    assert ours["data"].dtype == np.uint16
    np.testing.assert_array_equal(ours["data"], data)


def test_single_image_is_a_one_frame_series(tmp_path: Path) -> None:
    data = ramp((4, 5))
    signal = signal_dict(data[np.newaxis])
    signal.update(data=data, axes=signal["axes"][1:])
    for index, axis in enumerate(signal["axes"]):
        axis["index_in_array"] = index
    write(tmp_path / "one.tvips", signal)
    ours = read(tmp_path / "one.tvips")
    np.testing.assert_array_equal(ours["data"], data[np.newaxis])
    assert ours["axes"][0]["scale"] == 1.0


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"version": 3}, "version"),
        ({"version": True}, "version"),
        ({"frame_header_extra_bytes": -1}, "frame_header_extra_bytes"),
        ({"frame_header_extra_bytes": 1.5}, "frame_header_extra_bytes"),
        ({"version": 1, "frame_header_extra_bytes": 4}, "frame_header_extra_bytes"),
        ({"mode": 3}, "mode"),
        ({"max_file_size": 0}, "max_file_size"),
        ({"max_file_size": "1GB"}, "max_file_size"),
    ],
)
def test_nonsense_parameters_are_refused(
    tmp_path: Path, kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ParameterError, match=f"parameter '{parameter}'"):
        file_writer(
            tmp_path / "x.tvips", signal_dict(ramp((2, 2, 2))), show_progressbar=False, **kwargs
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.zeros((2, 3, 3), np.float32), "unsigned integers"),
        (np.full((2, 3, 3), -1, np.int16), "outside 0..65535"),
    ],
)
def test_data_tvips_cannot_hold_is_refused(tmp_path: Path, data: np.ndarray, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        file_writer(tmp_path / "x.tvips", signal_dict(data), show_progressbar=False)
    assert list(tmp_path.iterdir()) == []


def test_signal_with_one_signal_axis_is_refused(tmp_path: Path) -> None:
    signal = signal_dict(ramp((2, 3, 3)))
    signal["axes"][1]["navigate"] = True
    with pytest.raises(ParameterError, match="1 signal axes, not 2"):
        file_writer(tmp_path / "x.tvips", signal, show_progressbar=False)


def test_frames_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    with TvipsWriter(tmp_path / "w.tvips", (4, 4)) as writer:
        with pytest.raises(ParameterError, match="do not match the frame shape"):
            writer.write(np.zeros((3, 4), np.uint16))
        with pytest.raises(ParameterError, match="not a frame header field"):
            writer.write(np.zeros((4, 4), np.uint16), rotation=1)
