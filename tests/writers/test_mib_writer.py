"""The Merlin writer: exact round trips, files the reference reads, headers laid out per spec."""

from __future__ import annotations

import re
import warnings
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stemcast.errors import ParameterError
from stemcast.readers import mib as ours
from stemcast.writers.mib import MibWriter, write_mib

START = datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
DTYPES = {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}
STORED = {1: "U08", 6: "U08", 12: "U16", 24: "U32"}
ITEMSIZE = {1: 1, 6: 1, 12: 2, 24: 4}

# (name, frame_shape, writer options)
GEOMETRIES = [
    ("single", (256, 256), {}),
    ("roi128", (128, 256), {}),
    ("roi64", (64, 256), {}),
    ("quad", (512, 512), {"quad": True}),
    ("quad-gap", (514, 514), {"quad": True, "gap": True}),
]


def read(path: Path | str, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ours.file_reader(str(path), **kwargs)[0]


def ref_read(path: Path | str, **kwargs: Any) -> dict[str, Any]:
    rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rsciio_qd.file_reader(str(path), **kwargs)[0]


def random_frames(seed: int, depth: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 2**depth, size=shape, dtype=np.int64).astype(DTYPES[depth])
    frames.flat[0] = 2**depth - 1  # the extreme values are always present
    frames.flat[1] = 0
    return frames


def _round_trip_cases() -> list[Any]:
    cases = []
    for name, shape, options in GEOMETRIES:
        for depth in (1, 6, 12, 24):
            for raw in (False, True):
                if raw and depth == 24 and options.get("quad"):
                    continue  # unsupported, see test_mib_raw
                for mode in ("at-once", "frame-by-frame"):
                    label = f"{name}-{depth}bit-{'raw' if raw else 'processed'}-{mode}"
                    cases.append(pytest.param(shape, options, depth, raw, mode, id=label))
    return cases


@pytest.mark.parametrize(("shape", "options", "depth", "raw", "mode"), _round_trip_cases())
def test_round_trip_is_exact(
    tmp_path: Path,
    shape: tuple[int, int],
    options: dict[str, Any],
    depth: int,
    raw: bool,
    mode: str,
) -> None:
    frames = random_frames(depth, depth, (3, *shape))  # as stored in the file
    path = tmp_path / "rt.mib"
    if mode == "at-once":
        # write_mib takes frames as file_reader returns them: flipped vertically.
        write_mib(path, frames[:, ::-1, :], counter_depth=depth, raw=raw, **options)
    else:
        with MibWriter(path, frame_shape=shape, counter_depth=depth, raw=raw, **options) as w:
            for frame in frames:
                w.write(frame)
            assert w.frames_written == 3
    expected = frames.copy()
    if raw and options.get("gap"):
        expected[:, 256:258, :] = 0  # RAW does not store gap pixels
        expected[:, :, 256:258] = 0
    result = read(path)
    data = result["data"]
    assert data.shape == (3, *shape)
    assert data.dtype.newbyteorder("=") == DTYPES[depth]
    np.testing.assert_array_equal(data, expected[:, ::-1, :])  # file_reader flips rows
    np.testing.assert_array_equal(ours.load_mib_data(str(path)), expected)
    np.testing.assert_array_equal(read(path, lazy=True)["data"].compute(), expected[:, ::-1])
    props = result["original_metadata"]["mib_properties"]
    assert props["raw"] is raw
    assert props["head_size"] == (768 if options.get("quad") else 384)


def test_frame_by_frame_and_at_once_give_the_same_bytes(tmp_path: Path) -> None:
    frames = random_frames(1, 12, (5, 128, 256))
    write_mib(tmp_path / "once.mib", frames[:, ::-1], counter_depth=12, start_time=START)
    with MibWriter(
        tmp_path / "each.mib",
        frame_shape=(128, 256),
        counter_depth=12,
        start_time=START,
        frames_expected=5,
    ) as writer:
        for frame in frames:
            writer.write(frame)
    assert (tmp_path / "each.mib").read_bytes() == (tmp_path / "once.mib").read_bytes()
    assert (tmp_path / "each.hdr").read_bytes() == (tmp_path / "once.hdr").read_bytes()


def test_write_mib_accepts_an_iterable_of_frames_and_batches(tmp_path: Path) -> None:
    frames = random_frames(2, 6, (6, 256, 256))
    batches = [frames[0], frames[1:4], frames[4], frames[5:]]
    write_mib(tmp_path / "it.mib", iter(batches), counter_depth=6, frame_shape=(256, 256))
    np.testing.assert_array_equal(read(tmp_path / "it.mib")["data"], frames)
    hdr = ours.parse_hdr_file(tmp_path / "it.hdr")
    assert hdr["Frames in Acquisition (Number)"] == "6"


def test_write_mib_leaves_only_the_final_files(tmp_path: Path) -> None:
    write_mib(tmp_path / "a.mib", random_frames(3, 1, (2, 256, 256)), counter_depth=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdr", "a.mib"]


def test_write_mib_of_a_4d_array_writes_the_scan_size(tmp_path: Path) -> None:
    frames = random_frames(4, 12, (3, 4, 64, 256))  # (y, x, rows, cols)
    write_mib(tmp_path / "s.mib", frames, counter_depth=12, hdr_scan_size=True)
    hdr = ours.parse_hdr_file(tmp_path / "s.hdr")
    assert (hdr["ScanX"], hdr["ScanY"]) == ("4", "3")
    assert hdr["Frames in Acquisition (Number)"] == "12"
    result = read(tmp_path / "s.mib")
    assert result["original_metadata"]["scan_shape"]["evidence"] == "hdr"
    np.testing.assert_array_equal(result["data"], frames)


# --------------------------------------------------------------------------------------------
# Files the reference reads


def _reference_cases() -> list[Any]:
    return [
        pytest.param(shape, options, depth, id=f"{name}-{depth}bit")
        for name, shape, options in GEOMETRIES
        for depth in (1, 6, 12, 24)
    ]


@pytest.mark.parametrize(("shape", "options", "depth"), _reference_cases())
def test_reference_reads_written_files_identically(
    tmp_path: Path, shape: tuple[int, int], options: dict[str, Any], depth: int
) -> None:
    frames = random_frames(depth + 1, depth, (4, *shape))
    path = write_mib(tmp_path / "w.mib", frames, counter_depth=depth, exposure_s=0.0025, **options)
    theirs = ref_read(path)
    mine = read(path)
    assert mine["data"].dtype == theirs["data"].dtype
    np.testing.assert_array_equal(mine["data"], theirs["data"])
    np.testing.assert_array_equal(theirs["data"], frames)
    assert mine["axes"] == theirs["axes"]
    assert mine["metadata"] == theirs["metadata"]
    assert theirs["metadata"]["Acquisition_instrument"]["dwell_time"] == pytest.approx(0.0025)
    mine_props = mine["original_metadata"]["mib_properties"]
    their_props = theirs["original_metadata"]["mib_properties"]
    assert set(mine_props) == set(their_props)
    for key, value in their_props.items():
        if key == "navigation_shape":  # a stack: (n,) here, (n, 1) in the reference
            assert tuple(s for s in mine_props[key] if s != 1) == (4,)
            assert tuple(s for s in value if s != 1) == (4,)
        else:
            assert mine_props[key] == value, key
    assert mine["original_metadata"]["hdr_file"] == theirs["original_metadata"]["hdr_file"]
    rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
    their_mmap, their_headers = rsciio_qd.load_mib_data(str(path), return_headers=True)
    my_mmap, my_headers = ours.load_mib_data(str(path), return_headers=True)
    assert my_mmap.dtype == their_mmap.dtype
    np.testing.assert_array_equal(my_mmap, their_mmap)
    assert list(my_headers) == list(their_headers)
    assert rsciio_qd.parse_exposures(their_headers) == [2.5] * 4


@pytest.mark.parametrize("quad", [False, True])
def test_reference_parses_written_hdr_like_stemcast(tmp_path: Path, quad: bool) -> None:
    rsciio_api = pytest.importorskip("rsciio.quantumdetector._api")
    shape = (512, 512) if quad else (256, 256)
    write_mib(
        tmp_path / "h.mib",
        random_frames(5, 6, (2, *shape)),
        counter_depth=6,
        quad=quad,
        hdr_scan_size=True,
        scan_shape=(2, 1),
    )
    theirs = rsciio_api.parse_hdr_file(str(tmp_path / "h.hdr"))
    mine = ours.parse_hdr_file(tmp_path / "h.hdr")
    assert mine == theirs
    assert mine["Counter Depth (number)"] == "6"
    assert mine["Assembly Size (NX1, 2X2)"].strip() == ("2x2" if quad else "1x1")
    assert mine["Frames in Acquisition (Number)"] == "2"


# --------------------------------------------------------------------------------------------
# Byte layout of frame headers and .hdr files (spec sections 2 and 6)


def _headers(path: Path, header_size: int, record_size: int) -> list[bytes]:
    content = path.read_bytes()
    assert len(content) % record_size == 0
    return [content[i : i + header_size] for i in range(0, len(content), record_size)]


def _header_cases() -> list[Any]:
    cases = []
    for name, shape, options in GEOMETRIES:
        for depth in (1, 6, 12, 24):
            for raw in (False, True):
                if raw and depth == 24 and options.get("quad"):
                    continue
                label = f"{name}-{depth}bit-{'raw' if raw else 'processed'}"
                cases.append(pytest.param(shape, options, depth, raw, id=label))
    return cases


@pytest.mark.parametrize(("shape", "options", "depth", "raw"), _header_cases())
def test_frame_header_layout_follows_the_spec(
    tmp_path: Path, shape: tuple[int, int], options: dict[str, Any], depth: int, raw: bool
) -> None:
    quad = bool(options.get("quad"))
    gap = bool(options.get("gap"))
    frames = random_frames(6, depth, (3, *shape))
    path = write_mib(
        tmp_path / "hd.mib",
        frames,
        counter_depth=depth,
        raw=raw,
        exposure_s=0.0015,
        start_time=START,
        **options,
    )
    header_size = 768 if quad else 384
    if raw:
        bits = {1: 1, 6: 8, 12: 16, 24: 32}[depth]
        pixels = 4 * 256 * 256 if quad else shape[0] * shape[1]
        payload = pixels * bits // 8
    else:
        payload = shape[0] * shape[1] * ITEMSIZE[depth]
    headers = _headers(path, header_size, header_size + payload)
    assert len(headers) == 3
    for index, header in enumerate(headers):
        assert header[:4] == b"MQ1,"
        assert header[4:10] == f"{index + 1:06d}".encode()
        assert header[10:11] == b","
        assert header[11:16] == f"{header_size:05d}".encode()
        text = header.decode("latin-1")
        fields = text.split(",")
        assert len(fields) == (139 if quad else 55)
        padding = fields[-1]
        assert padding  # NUL padding right after the last comma
        assert set(padding) == {"\x00"}
        assert text.index("\x00") == len(text) - len(padding)
        assert fields[3] == ("04" if quad else "01")
        if raw and quad:
            assert (fields[4], fields[5]) == ("1024", "0256")
        elif raw and depth == 24:
            assert fields[5] == f"{shape[0]:04d}"
        else:
            assert (fields[4], fields[5]) == (f"{shape[1]:04d}", f"{shape[0]:04d}")
        assert fields[6] == ("R64" if raw else STORED[depth])
        assert len(fields[7]) == 6
        assert fields[7].strip() == ("2x2G" if gap else "2x2" if quad else "1x1")
        assert fields[8] == ("0F" if quad else "01")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", fields[9])
        assert fields[10] == "0.001500"
        for threshold in fields[14:22]:
            assert re.fullmatch(r"\d\.\d{6}E[+-]\d+", threshold)
        chips = 4 if quad else 1
        dacs = fields[22 : 22 + 28 * chips]
        assert [dacs[28 * chip] for chip in range(chips)] == ["3RX"] * chips
        assert all(re.fullmatch(r"\d{3}", value) for value in dacs if value != "3RX")
        assert fields[22 + 28 * chips] == "MQ1A"
        stamp = fields[-4]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp)
        assert fields[-3] == "1500000ns"
        assert fields[-2] == str(depth)
    first_stamp = headers[0].decode("latin-1").split(",")[-4]
    assert first_stamp == "2024-03-01T12:30:15.123456000Z"


def test_sequence_numbers_start_at_first_sequence(tmp_path: Path) -> None:
    with MibWriter(tmp_path / "s.mib", counter_depth=6, first_sequence=123456) as writer:
        writer.write(random_frames(7, 6, (3, 256, 256)))
    headers = _headers(tmp_path / "s.mib", 384, 384 + 256 * 256)
    assert [h[4:10] for h in headers] == [b"123456", b"123457", b"123458"]


def test_timestamps_follow_interval_and_flyback(tmp_path: Path) -> None:
    with MibWriter(
        tmp_path / "t.mib",
        counter_depth=1,
        exposure_s=0.001,
        frame_interval_s=0.0012,
        scan_shape=(3, 2),
        flyback_s=0.0005,
        start_time=START,
    ) as writer:
        writer.write(np.zeros((6, 256, 256), np.uint8))
    _, headers = ours.load_mib_data(str(tmp_path / "t.mib"), return_headers=True)
    stamps = ours.parse_timestamps(headers)
    times = np.array([s.removesuffix("Z") for s in stamps], dtype="datetime64[ns]")
    gaps = np.diff(times).astype(np.int64).tolist()
    assert gaps == [1_200_000, 1_200_000, 1_700_000, 1_200_000, 1_200_000]
    start = np.datetime64(START.replace(tzinfo=None), "ns")
    assert times[0] == start
    assert ours.parse_exposures(headers) == [1.0] * 6


def test_local_time_field_matches_start_time(tmp_path: Path) -> None:
    start = datetime(2023, 12, 31, 23, 59, 59, 999000, tzinfo=timezone(timedelta(hours=2)))
    with MibWriter(tmp_path / "l.mib", counter_depth=6, start_time=start) as writer:
        writer.write(np.zeros((256, 256), np.uint8))
    header = (tmp_path / "l.mib").read_bytes()[:384].decode("latin-1").split(",")
    # The MQ1A timestamp is UTC (spec 2.1).
    assert header[-4] == "2023-12-31T21:59:59.999000000Z"


def test_hdr_layout_follows_the_spec(tmp_path: Path) -> None:
    write_mib(
        tmp_path / "h.mib",
        random_frames(8, 12, (6, 256, 256)),
        counter_depth=12,
        scan_shape=(3, 2),
        hdr_scan_size=True,
        frames_per_trigger=3,
    )
    content = (tmp_path / "h.hdr").read_bytes()
    assert len(content) == 2048
    assert content.startswith(b"HDR,\t\r\n")
    body = content.rstrip(b" ")
    assert body.endswith(b"\r\nEnd\t")
    assert set(content[len(body) :]) <= {ord(" ")}
    lines = body.decode("latin-1").split("\r\n")
    assert lines[0] == "HDR,\t"
    assert lines[-1] == "End\t"
    for line in lines[1:-1]:
        key, tab, _ = line.partition("\t")
        assert tab, line
        assert key.endswith(":"), line
    entries = ours.parse_hdr_file(tmp_path / "h.hdr")
    assert entries["Frames in Acquisition (Number)"] == "6"
    assert entries["Frames per Trigger (Number)"] == "3"
    assert entries["Counter Depth (number)"] == "12"
    assert entries["Assembly Size (NX1, 2X2)"] == "   1x1"  # leading spaces kept
    assert "Chip Mode  (SPM, CSM, CM, CSCM)" in entries  # two spaces in the key
    assert (entries["ScanX"], entries["ScanY"]) == ("3", "2")


def test_no_hdr_when_asked(tmp_path: Path) -> None:
    write_mib(tmp_path / "n.mib", random_frames(9, 6, (2, 256, 256)), write_hdr=False)
    assert not (tmp_path / "n.hdr").exists()
    with MibWriter(tmp_path / "m.mib", counter_depth=6, write_hdr=False) as writer:
        writer.write(np.zeros((256, 256), np.uint8))
    assert not (tmp_path / "m.hdr").exists()
    assert (tmp_path / "m.mib").stat().st_size == 384 + 256 * 256


# --------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("depth", [1, 6, 12])
def test_values_beyond_the_counter_depth_are_refused(tmp_path: Path, depth: int) -> None:
    frames = np.full((1, 256, 256), 2**depth, dtype=np.uint32)
    with (
        MibWriter(tmp_path / "v.mib", counter_depth=depth) as writer,
        pytest.raises(ParameterError, match="values"),
    ):
        writer.write(frames)
    with pytest.raises(ParameterError):
        write_mib(tmp_path / "w.mib", frames, counter_depth=depth)
    assert not (tmp_path / "w.mib").exists()


def test_bad_writer_parameters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="counter_depth"):
        MibWriter(tmp_path / "a.mib", counter_depth=8)
    with pytest.raises(ParameterError, match="frame_shape"):
        MibWriter(tmp_path / "b.mib", frame_shape=(256, 256), quad=True)
    with pytest.raises(ParameterError, match="gap"):
        MibWriter(tmp_path / "c.mib", gap=True)
    with pytest.raises(ParameterError, match="flyback"):
        MibWriter(tmp_path / "d.mib", flyback_s=0.001)
    with pytest.raises(ParameterError, match="exposure"):
        MibWriter(tmp_path / "e.mib", exposure_s=0)
    with MibWriter(tmp_path / "f.mib", counter_depth=6) as writer, pytest.raises(ParameterError):
        writer.write(np.zeros((2, 128, 256), np.uint8))


def test_vectorised_headers_equal_headers_formatted_one_by_one(tmp_path) -> None:
    """Batch headers come from a template; each must equal the one formatted field by field."""
    from stemcast.formats.mib.spec import parse_frame_header
    from stemcast.writers.mib import MibWriter

    with MibWriter(
        tmp_path / "t.mib", scan_shape=(7, 5), flyback_s=0.003, first_sequence=999_970
    ) as writer:
        stamps = writer._timestamps(0, 35)
        one_by_one = [writer._header(i, stamp) for i, stamp in enumerate(stamps)]
        batch = writer._headers(0, 29).view(np.uint8).reshape(29, -1)
        for index in range(29):
            assert batch[index].tobytes() == one_by_one[index]
        parsed = parse_frame_header(batch[28].tobytes())
        assert parsed.sequence_number == 999_998
        assert parsed.utc_time == str(stamps[28]) + "Z"
        beyond = writer._headers(0, 35).view(np.uint8).reshape(35, -1)
        assert parse_frame_header(beyond[34].tobytes()).sequence_number == 1_000_004


def test_sequence_numbers_past_six_digits_read_back(tmp_path) -> None:
    from stemcast.readers.mib import MibRun, load_mib_data
    from stemcast.writers.mib import MibWriter

    frames = (np.arange(5 * 8 * 8) % 4096).astype(np.uint16).reshape(5, 8, 8)
    with MibWriter(tmp_path / "long.mib", frame_shape=(8, 8), first_sequence=999_998) as writer:
        writer.write(frames)
    run = MibRun.open(tmp_path / "long.mib")
    batches = list(run.batches(batch_frames=5))
    assert run.frames == 5
    assert batches[0].headers[2].startswith(b"MQ1,1000000,00384,")
    np.testing.assert_array_equal(batches[0].frames, frames[:, ::-1])  # as file_reader
    np.testing.assert_array_equal(
        load_mib_data(str(tmp_path / "long.mib"), return_mmap=False), frames
    )
