"""Reader features beyond the reference, on synthetic files written with the stemcast writer.

Multi-file runs, interrupted acquisitions, scan-shape inference (and its evidence), the
:mod:`stemcast.shape` helpers, memory buffers, dask arrays fit for dask-distributed, chunks,
memory-map modes, ``print_info`` and the header helpers.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest

from mib_helpers import write_stored
from stemcast.errors import ParameterError
from stemcast.readers import mib as ours
from stemcast.shape import (
    Evidence,
    ScanShape,
    complete_lines,
    infer_scan_shape,
    line_width_from_timestamps,
)
from stemcast.writers.mib import MibWriter, write_mib

START = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
INTERVAL_S = 0.001
SMALL = (64, 256)  # a row ROI keeps the files small


@pytest.fixture(autouse=True)
def _quiet_reader_logs() -> Any:
    """The reader logs a warning for a missing .hdr and for interrupted scans."""
    logger = logging.getLogger("stemcast")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def read(path: Path | str, **kwargs: Any) -> dict[str, Any]:
    result = ours.file_reader(str(path), **kwargs)
    assert len(result) == 1
    return result[0]


def frames_of(count: int, shape: tuple[int, int] = SMALL, depth: int = 12) -> np.ndarray:
    """Frames whose first pixel is their index, the rest random: order is checkable."""
    rng = np.random.default_rng(count)
    dtype = {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}[depth]
    frames = rng.integers(0, 2**depth, size=(count, *shape), dtype=np.int64).astype(dtype)
    if depth > 1:
        frames[:, 0, 0] = np.arange(count) % 2**depth
    return frames


def flipped(frames: np.ndarray) -> np.ndarray:
    return frames[..., ::-1, :]


def evidence(result: dict[str, Any]) -> str:
    return result["original_metadata"]["scan_shape"]["evidence"]


# --------------------------------------------------------------------------------------------
# Multi-file runs (Merlin "images per file")


def write_part(
    path: Path, frames: np.ndarray, first_sequence: int, start: datetime, **options: Any
) -> None:
    """One file of a run: sequence numbers and timestamps continue from the previous file."""
    options.setdefault("counter_depth", 12)
    with MibWriter(
        path,
        frame_shape=frames.shape[1:],
        first_sequence=first_sequence,
        start_time=start,
        frame_interval_s=INTERVAL_S,
        write_hdr=False,
        **options,
    ) as writer:
        writer.write(frames)


def write_run(
    folder: Path, names: list[str], frames_per_file: int, start: datetime = START
) -> np.ndarray:
    frames = frames_of(len(names) * frames_per_file)
    for index, name in enumerate(names):
        first = index * frames_per_file
        write_part(
            folder / name,
            frames[first : first + frames_per_file],
            first + 1,
            start + timedelta(seconds=first * INTERVAL_S),
        )
    return frames


@pytest.mark.parametrize("name", ["scan1.mib", "scan2.mib", "scan3.mib"])
def test_run_is_read_whole_from_any_of_its_files(tmp_path: Path, name: str) -> None:
    frames = write_run(tmp_path, ["scan1.mib", "scan2.mib", "scan3.mib"], 4)
    result = read(tmp_path / name)
    np.testing.assert_array_equal(result["data"], flipped(frames))
    assert [Path(p).name for p in result["original_metadata"]["files"]] == [
        "scan1.mib",
        "scan2.mib",
        "scan3.mib",
    ]
    assert result["original_metadata"]["mib_properties"]["frame_number_in_file"] == 12
    assert result["metadata"]["General"]["original_filename"] == name
    lazy = read(tmp_path / name, lazy=True, navigation_shape=(12,), chunks=(5, 64, 256))["data"]
    assert lazy.chunks[0] == (5, 5, 2)  # chunks straddle the file boundaries
    np.testing.assert_array_equal(lazy.compute(), flipped(frames))


def test_run_supports_frame_ranges_and_headers_across_files(tmp_path: Path) -> None:
    frames = write_run(tmp_path, ["scan1.mib", "scan2.mib", "scan3.mib"], 4)
    path = str(tmp_path / "scan2.mib")
    np.testing.assert_array_equal(
        read(path, first_frame=2, last_frame=10)["data"], flipped(frames[2:10])
    )
    np.testing.assert_array_equal(
        read(path, first_frame=-7, lazy=True)["data"].compute(), flipped(frames[-7:])
    )
    data, headers = ours.load_mib_data(path, return_headers=True)
    np.testing.assert_array_equal(data, frames)  # not flipped, decoded
    assert [int(bytes(h)[4:10]) for h in headers] == list(range(1, 13))
    np.testing.assert_array_equal(ours.load_mib_data(path, return_mmap=False), frames)
    np.testing.assert_array_equal(
        ours.load_mib_data(path, navigation_shape=(4, 3)), frames.reshape(3, 4, *SMALL)
    )


def test_run_uses_the_hdr_named_after_the_common_stem(tmp_path: Path) -> None:
    frames = write_run(tmp_path, ["scan1.mib", "scan2.mib", "scan3.mib"], 4)
    with MibWriter(
        tmp_path / "tmp.mib", frame_shape=SMALL, frames_per_trigger=4, write_hdr=False
    ) as writer:
        hdr = writer.hdr_bytes(12)
    os.remove(tmp_path / "tmp.mib")
    (tmp_path / "scan.hdr").write_bytes(hdr)
    result = read(tmp_path / "scan3.mib")
    assert evidence(result) == "hdr"
    assert result["data"].shape == (3, 4, *SMALL)
    np.testing.assert_array_equal(result["data"], flipped(frames.reshape(3, 4, *SMALL)))
    assert result["original_metadata"]["hdr_file"]["Frames per Trigger (Number)"] == "4"


@pytest.mark.parametrize("new_frames", [2, 4, 6])
def test_new_acquisition_with_the_same_stem_is_not_joined(tmp_path: Path, new_frames: int) -> None:
    frames = write_run(tmp_path, ["scan1.mib", "scan2.mib"], 4)
    later = frames_of(new_frames) // 2
    write_part(tmp_path / "scan3.mib", later, 1, START + timedelta(hours=1))
    for name in ("scan1.mib", "scan2.mib"):
        result = read(tmp_path / name)
        np.testing.assert_array_equal(result["data"], flipped(frames))
        assert [Path(p).name for p in result["original_metadata"]["files"]] == [
            "scan1.mib",
            "scan2.mib",
        ]
    alone = read(tmp_path / "scan3.mib")
    np.testing.assert_array_equal(alone["data"], flipped(later))
    assert [Path(p).name for p in alone["original_metadata"]["files"]] == ["scan3.mib"]


def test_run_files_are_ordered_by_sequence_not_by_name(tmp_path: Path) -> None:
    # Sequence order run2, run10, run1: neither lexical (1, 10, 2) nor numeric (1, 2, 10).
    frames = write_run(tmp_path, ["run2.mib", "run10.mib", "run1.mib"], 3)
    for name in ("run1.mib", "run2.mib", "run10.mib"):
        result = read(tmp_path / name)
        np.testing.assert_array_equal(result["data"], flipped(frames))
        assert [Path(p).name for p in result["original_metadata"]["files"]] == [
            "run2.mib",
            "run10.mib",
            "run1.mib",
        ]
        assert [int(frame[-1, 0]) for frame in result["data"]] == list(range(9))


def test_files_with_another_layout_or_stem_are_not_joined(tmp_path: Path) -> None:
    frames = write_run(tmp_path, ["scan1.mib"], 3)
    other = frames_of(3, depth=6)
    write_part(tmp_path / "scan2.mib", other, 4, START + timedelta(seconds=1), counter_depth=6)
    write_part(tmp_path / "scanA4.mib", frames_of(3), 4, START + timedelta(seconds=1))
    result = read(tmp_path / "scan1.mib")
    np.testing.assert_array_equal(result["data"], flipped(frames))
    assert [Path(p).name for p in result["original_metadata"]["files"]] == ["scan1.mib"]


# --------------------------------------------------------------------------------------------
# Interrupted acquisitions


def write_interrupted(path: Path, **options: Any) -> np.ndarray:
    """The .hdr announces an 8 x 8 scan; 61 frames and part of the 62nd are on disk."""
    frames = frames_of(61, depth=6)
    with MibWriter(
        path, frame_shape=SMALL, counter_depth=6, scan_shape=(8, 8), start_time=START, **options
    ) as writer:
        writer.write(frames)
        writer.write_partial(frames[0], 1000)
    return frames


@pytest.mark.parametrize(
    ("options", "source"),
    [
        ({"hdr_scan_size": True}, "hdr"),
        ({"frames_per_trigger": 8}, "hdr"),
        ({"flyback_s": 0.0005}, "timestamps"),
    ],
)
def test_interrupted_scan_keeps_the_complete_lines(
    tmp_path: Path, options: dict[str, Any], source: str
) -> None:
    path = tmp_path / "cut.mib"
    frames = write_interrupted(path, **options)
    assert path.stat().st_size == 61 * (384 + 64 * 256) + 1000
    hdr = ours.parse_hdr_file(tmp_path / "cut.hdr")
    assert hdr["Frames in Acquisition (Number)"] == "64"
    expected = flipped(frames[:56].reshape(7, 8, *SMALL))
    result = read(path)
    assert result["data"].shape == (7, 8, *SMALL)
    np.testing.assert_array_equal(result["data"], expected)
    assert evidence(result) == source
    assert tuple(result["original_metadata"]["scan_shape"]["shape"]) == (8, 8)
    assert result["original_metadata"]["mib_properties"]["frame_number_in_file"] == 61
    lazy = read(path, lazy=True)["data"]
    assert lazy.shape == (7, 8, *SMALL)
    np.testing.assert_array_equal(lazy.compute(), expected)


def test_interrupted_scan_without_width_evidence(tmp_path: Path) -> None:
    path = tmp_path / "cut.mib"
    frames = write_interrupted(path)
    result = read(path)
    assert evidence(result) == "none"
    np.testing.assert_array_equal(result["data"], flipped(frames))
    user = read(path, navigation_shape=(8, 8))
    assert evidence(user) == "user"
    np.testing.assert_array_equal(user["data"], flipped(frames[:56].reshape(7, 8, *SMALL)))
    mapped = ours.load_mib_data(str(path), navigation_shape=(8, 8))
    np.testing.assert_array_equal(mapped, frames[:56].reshape(7, 8, *SMALL))
    # With a first frame, the reference's rule gives a plain stack of what is left.
    np.testing.assert_array_equal(
        read(path, navigation_shape=(8, 8), first_frame=5)["data"], flipped(frames[5:])
    )


def test_interrupted_scan_without_a_complete_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.mib"
    with MibWriter(path, frame_shape=SMALL, counter_depth=6, scan_shape=(8, 8)) as writer:
        writer.write(frames_of(5, depth=6))
    with pytest.raises(ParameterError, match="navigation_shape"):
        read(path, navigation_shape=(8, 8))


def test_partial_record_only_is_an_empty_file_of_frames(tmp_path: Path) -> None:
    path = tmp_path / "partial.mib"
    with MibWriter(path, frame_shape=SMALL, counter_depth=6, write_hdr=False) as writer:
        writer.write(frames_of(2, depth=6))
        writer.write_partial(frames_of(1, depth=6)[0], 5000)
    assert writer.frames_written == 2
    assert read(path)["data"].shape == (2, *SMALL)


# --------------------------------------------------------------------------------------------
# Scan-shape inference through file_reader


def write_scan(path: Path, scan: tuple[int, int] = (6, 4), **options: Any) -> np.ndarray:
    frames = frames_of(scan[0] * scan[1], depth=6)
    with MibWriter(
        path,
        frame_shape=SMALL,
        counter_depth=6,
        scan_shape=scan,
        start_time=START,
        frame_interval_s=INTERVAL_S,
        **options,
    ) as writer:
        writer.write(frames)
    return frames


@pytest.mark.parametrize("write_hdr", [True, False])
def test_flyback_in_timestamps_gives_the_scan_width(tmp_path: Path, write_hdr: bool) -> None:
    path = tmp_path / "fly.mib"
    frames = write_scan(path, flyback_s=0.0002, write_hdr=write_hdr)
    result = read(path)
    assert evidence(result) == "timestamps"
    assert result["data"].shape == (4, 6, *SMALL)  # (y, x)
    np.testing.assert_array_equal(result["data"], flipped(frames.reshape(4, 6, *SMALL)))
    assert [axis["navigate"] for axis in result["axes"]] == [True, True, False, False]
    assert ("hdr_file" in result["original_metadata"]) is write_hdr


def test_no_flyback_gives_a_stack(tmp_path: Path) -> None:
    path = tmp_path / "flat.mib"
    frames = write_scan(path)
    result = read(path)
    assert evidence(result) == "none"
    np.testing.assert_array_equal(result["data"], flipped(frames))


def test_scan_size_in_hdr_wins(tmp_path: Path) -> None:
    path = tmp_path / "hdr.mib"
    frames = write_scan(path, hdr_scan_size=True)
    result = read(path)
    assert evidence(result) == "hdr"
    np.testing.assert_array_equal(result["data"], flipped(frames.reshape(4, 6, *SMALL)))
    hdr = result["original_metadata"]["hdr_file"]
    assert (hdr["ScanX"], hdr["ScanY"]) == ("6", "4")


def test_frames_per_trigger_gives_the_width(tmp_path: Path) -> None:
    path = tmp_path / "line.mib"
    frames = write_scan(path, frames_per_trigger=6)
    result = read(path)
    assert evidence(result) == "hdr"
    np.testing.assert_array_equal(result["data"], flipped(frames.reshape(4, 6, *SMALL)))


def test_user_shape_wins_over_everything(tmp_path: Path) -> None:
    path = tmp_path / "user.mib"
    frames = write_scan(path, flyback_s=0.0002, hdr_scan_size=True)
    result = read(path, navigation_shape=(3, 8))
    assert evidence(result) == "user"
    np.testing.assert_array_equal(result["data"], flipped(frames.reshape(8, 3, *SMALL)))


def test_timestamp_jitter_is_not_a_flyback(tmp_path: Path) -> None:
    """The synthetic twin of Quad_9_Frame_CounterDepth_24_Rows_256: 10 ns jitter, no scan."""
    path = tmp_path / "jitter.mib"
    frames = frames_of(9, depth=6)
    with MibWriter(
        path, frame_shape=SMALL, counter_depth=6, start_time=START, frames_expected=9
    ) as writer:
        records = writer.records(frames)
    gaps = [2_095_240, 2_095_240] + [2_095_250] * 6
    stamps = np.datetime64(START.replace(tzinfo=None), "ns") + np.concatenate(
        [[0], np.cumsum(gaps)]
    ).astype("timedelta64[ns]")
    for record, stamp in zip(records, stamps, strict=True):
        header = bytes(record["header"])
        fields = header.split(b",")
        new_stamp = (str(stamp) + "Z").encode()
        assert len(new_stamp) == len(fields[-4])
        fields[-4] = new_stamp
        record["header"] = b",".join(fields)
    path.write_bytes(records.tobytes())
    result = read(path)
    assert evidence(result) == "none"
    assert result["data"].shape == (9, *SMALL)
    _, headers = ours.load_mib_data(str(path), return_headers=True)
    times = ours.timestamps_ns(headers)
    assert np.diff(times).tolist() == gaps
    rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = rsciio_qd.file_reader(str(path))[0]
    assert theirs["data"].shape == (3, 3, *SMALL)  # the reference's fragile rule (spec 7)
    np.testing.assert_array_equal(result["data"], theirs["data"].reshape(9, *SMALL))


# --------------------------------------------------------------------------------------------
# stemcast.shape


def times_from_gaps(gaps_ns: list[float], start: int = 0) -> np.ndarray:
    return start + np.concatenate([[0], np.cumsum(np.asarray(gaps_ns, dtype=np.int64))])


# Spec section 7: 001_4x2_6bit.mib, in nanoseconds
EXAMPLE_4X2 = [102_000_000] * 3 + [102_020_800] + [102_000_000] * 3
QUAD9_JITTER = [2_095_240, 2_095_240] + [2_095_250] * 6
EPOCH_NS = 1_620_406_270_905_800_928  # 2021-05-07T16:51:10.905800928Z, from the spec


@pytest.mark.parametrize("start", [0, EPOCH_NS])
def test_line_width_of_the_4x2_example(start: int) -> None:
    assert line_width_from_timestamps(times_from_gaps(EXAMPLE_4X2, start)) == 4
    shape = infer_scan_shape(8, timestamps_ns=times_from_gaps(EXAMPLE_4X2, start))
    assert shape == ScanShape((4, 2), Evidence.TIMESTAMPS, shape.detail)
    assert shape.array_shape == (2, 4)
    assert shape.frames == 8


@pytest.mark.parametrize("start", [0, EPOCH_NS])
def test_ten_nanosecond_jitter_gives_no_width(start: int) -> None:
    # Epoch nanoseconds do not fit a float64 exactly: differences must be taken first.
    assert line_width_from_timestamps(times_from_gaps(QUAD9_JITTER, start)) is None
    shape = infer_scan_shape(9, timestamps_ns=times_from_gaps(QUAD9_JITTER, start))
    assert shape.shape == (9,)
    assert shape.evidence is Evidence.NONE


def test_flyback_found_despite_random_jitter() -> None:
    rng = np.random.default_rng(0)
    width, lines = 20, 10
    gaps = 1_000_000 + rng.integers(-10, 11, size=width * lines - 1)
    gaps[width - 1 :: width] += 50_000  # a 50 us fly-back after every line
    times = times_from_gaps(gaps.tolist(), EPOCH_NS)
    assert line_width_from_timestamps(times) == width
    shape = infer_scan_shape(width * lines, timestamps_ns=times)
    assert (shape.shape, shape.evidence) == ((20, 10), Evidence.TIMESTAMPS)


def test_a_single_late_frame_is_not_a_line() -> None:
    gaps = [1_000_000] * 49
    gaps[7] += 1_000_000
    assert line_width_from_timestamps(times_from_gaps(gaps)) is None
    # Nor among genuine fly-backs: the gap must recur every width frames and nowhere else.
    gaps = [1_000_000] * 39
    for index in range(4, 39, 5):
        gaps[index] += 100_000
    assert line_width_from_timestamps(times_from_gaps(gaps)) == 5
    gaps[12] += 100_000
    assert line_width_from_timestamps(times_from_gaps(gaps)) is None


def test_regular_gaps_or_too_few_timestamps_give_no_width() -> None:
    assert line_width_from_timestamps(times_from_gaps([1_000] * 30)) is None
    assert line_width_from_timestamps([0, 10]) is None
    assert line_width_from_timestamps([]) is None
    # A long gap after every frame is no line structure (width 1).
    assert line_width_from_timestamps(times_from_gaps([1_000, 1_000, 1_000])) is None


def test_gap_below_the_minimum_flyback_is_ignored() -> None:
    gaps = [1_000_000, 1_000_000, 1_000_050] * 4
    assert line_width_from_timestamps(times_from_gaps(gaps)) is None
    assert line_width_from_timestamps(times_from_gaps(gaps), min_flyback_ns=20) == 3


@pytest.mark.parametrize(
    ("shape", "frames", "expected"),
    [
        ((8, 8), 61, (8, 7)),
        ((8, 8), 64, (8, 8)),
        ((8, 8), 100, (8, 8)),
        ((8, 8), 7, (8, 0)),
        ((4, 3, 2), 20, (4, 3, 1)),
        ((10,), 5, (5,)),
        ((10,), 50, (10,)),
        ((), 5, (5,)),
    ],
)
def test_complete_lines(shape: tuple[int, ...], frames: int, expected: tuple[int, ...]) -> None:
    assert complete_lines(shape, frames) == expected


def test_infer_scan_shape_order_of_evidence() -> None:
    times = times_from_gaps(EXAMPLE_4X2)
    everything = {"hdr_shape": (2, 4), "frames_per_line": 8, "timestamps_ns": times}
    assert infer_scan_shape(8, user=(8, 1), **everything).evidence is Evidence.USER
    assert infer_scan_shape(8, user=(8, 1), **everything).shape == (8, 1)
    assert infer_scan_shape(8, **everything).shape == (2, 4)
    del everything["hdr_shape"]
    by_line = infer_scan_shape(61, frames_expected=64, **everything)
    assert (by_line.shape, by_line.evidence) == ((8, 8), Evidence.HDR)  # intended, not shrunk
    del everything["frames_per_line"]
    assert infer_scan_shape(8, **everything).evidence is Evidence.TIMESTAMPS
    assert infer_scan_shape(8).shape == (8,)
    assert infer_scan_shape(8).evidence is Evidence.NONE
    assert infer_scan_shape(8, frames_per_line=1).evidence is Evidence.NONE
    with pytest.raises(ParameterError):
        infer_scan_shape(8, user=(0, 8))


# --------------------------------------------------------------------------------------------
# Memory buffers


@pytest.mark.parametrize("quad", [False, True])
def test_memory_buffer_reads_like_the_file(tmp_path: Path, quad: bool) -> None:
    shape = (512, 512) if quad else (256, 256)
    frames = frames_of(4, shape)
    path = write_stored(tmp_path / "b.mib", frames, counter_depth=12, quad=quad)
    content = path.read_bytes()
    for buffer in (content, bytearray(content), memoryview(content)):
        data = ours.load_mib_data(buffer)
        assert data.dtype == np.dtype(">u2")
        np.testing.assert_array_equal(data, frames)
    data, headers = ours.load_mib_data(content, return_headers=True)
    assert [bytes(h) for h in headers] == [
        bytes(h) for h in ours.load_mib_data(str(path), return_headers=True)[1]
    ]
    np.testing.assert_array_equal(
        ours.load_mib_data(content, navigation_shape=(2, 2)), frames.reshape(2, 2, *shape)
    )
    np.testing.assert_array_equal(
        ours.load_mib_data(content, first_frame=1, last_frame=-1), frames[1:-1]
    )
    not_mapped = ours.load_mib_data(content, return_mmap=False)
    np.testing.assert_array_equal(not_mapped, frames)
    # A partial record at the end (data still arriving) is ignored.
    np.testing.assert_array_equal(ours.load_mib_data(content + content[:999]), frames)


@pytest.mark.parametrize("quad", [False, True])
def test_memory_buffer_against_the_reference(tmp_path: Path, quad: bool) -> None:
    rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
    shape = (512, 512) if quad else (256, 256)
    frames = frames_of(2, shape, depth=6)
    content = write_stored(tmp_path / "r.mib", frames, counter_depth=6, quad=quad).read_bytes()
    mine = ours.load_mib_data(content)
    np.testing.assert_array_equal(mine, frames)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = rsciio_qd.load_mib_data(content)
    except TypeError:
        assert quad  # spec 10.13: the reference fails on quad buffers only
    else:
        np.testing.assert_array_equal(mine, theirs)
        assert mine.dtype == theirs.dtype


def test_lazy_memory_buffer_is_refused(tmp_path: Path) -> None:
    content = write_mib(tmp_path / "l.mib", frames_of(2), counter_depth=12).read_bytes()
    with pytest.raises(ParameterError, match="lazy"):
        ours.load_mib_data(content, lazy=True)
    with pytest.raises(ValueError, match="lazy"):  # the reference's exception type
        ours.load_mib_data(content, lazy=True, return_mmap=False)


# --------------------------------------------------------------------------------------------
# Dask arrays: distributed, chunks, byte order


@pytest.fixture(scope="module")
def big_scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 16 x 16 scan of 256 x 256 12-bit frames: 34 MB on disk."""
    frames = np.random.default_rng(42).integers(0, 4096, (256, 256, 256), dtype=np.uint16)
    path = tmp_path_factory.mktemp("big") / "big.mib"
    write_stored(path, frames, counter_depth=12, scan_shape=(16, 16), hdr_scan_size=True)
    assert path.stat().st_size > 30e6
    return path, frames.reshape(16, 16, 256, 256)


def test_lazy_array_pickles_small(big_scan: tuple[Path, np.ndarray]) -> None:
    path, _ = big_scan
    for kwargs in ({}, {"distributed": True}, {"chunks": (1, 1, 256, 256)}):
        array = read(path, lazy=True, **kwargs)["data"]
        assert len(pickle.dumps(array)) < 10_000
    assert len(pickle.dumps(ours.load_mib_data(str(path), lazy=True, return_mmap=False))) < 10_000


def test_lazy_array_computes_on_a_distributed_cluster(big_scan: tuple[Path, np.ndarray]) -> None:
    distributed = pytest.importorskip("distributed")
    path, frames = big_scan
    array = pickle.loads(pickle.dumps(read(path, lazy=True, distributed=True)["data"]))
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        result = client.compute(array).result()
    assert result.dtype == np.uint16
    np.testing.assert_array_equal(result, flipped(frames))


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """An 8 x 6 scan (x, y) of 128 x 256 24-bit frames."""
    frames = frames_of(48, (128, 256), depth=24)
    path = tmp_path_factory.mktemp("small") / "small.mib"
    write_stored(path, frames, counter_depth=24, scan_shape=(8, 6), hdr_scan_size=True)
    return path, frames.reshape(6, 8, 128, 256)


@pytest.mark.parametrize(
    "chunks",
    [
        "auto",
        (2, 3, 100, 70),  # splits y, x and both signal axes
        (6, 1, 128, 256),  # one scan column per chunk
        (1, 8, -1, 64),
        ((1, 5), (3, 5), (28, 100), (256,)),
        -1,
        32,
    ],
)
def test_explicit_chunks_give_the_eager_values(
    small_scan: tuple[Path, np.ndarray], chunks: Any
) -> None:
    path, frames = small_scan
    eager = read(path)["data"]
    lazy = read(path, lazy=True, chunks=chunks)["data"]
    assert isinstance(lazy, da.Array)
    if chunks != "auto":
        expected = da.core.normalize_chunks(chunks, lazy.shape, dtype=lazy.dtype)
        assert lazy.chunks == expected
    else:
        assert lazy.chunks[-2:] == ((128,), (256,))  # auto keeps frames whole
    np.testing.assert_array_equal(lazy.compute(), eager)
    np.testing.assert_array_equal(eager, flipped(frames))
    unflipped = ours.load_mib_data(
        str(path), lazy=True, return_mmap=False, chunks=chunks, navigation_shape=(8, 6)
    )
    np.testing.assert_array_equal(unflipped.compute(), frames)


@pytest.mark.parametrize(
    ("depth", "raw"), [(6, False), (12, False), (24, False), (12, True), (24, True)]
)
def test_lazy_chunks_are_native_endian(tmp_path: Path, depth: int, raw: bool) -> None:
    frames = frames_of(6, (128, 256), depth=depth)
    path = write_stored(tmp_path / "n.mib", frames, counter_depth=depth, raw=raw)
    lazy = read(path, lazy=True, chunks=(2, 64, 256))["data"]
    assert lazy.dtype.isnative
    for block in lazy.blocks:
        computed = block.compute()
        assert computed.dtype.isnative
        assert computed.dtype == lazy.dtype
    eager = read(path)["data"]
    if not raw and depth > 6:
        assert not eager.dtype.isnative  # eager processed data keep the stored byte order
    np.testing.assert_array_equal(lazy.compute(), eager)


# --------------------------------------------------------------------------------------------
# Memory-map modes


def test_eager_default_is_copy_on_write(small_scan: tuple[Path, np.ndarray]) -> None:
    path, frames = small_scan
    before = path.read_bytes()
    data = read(path)["data"]
    assert isinstance(data, np.memmap)
    assert data.flags.writeable
    data[...] = 7
    data.flush()
    assert np.all(np.asarray(data) == 7)
    del data
    assert path.read_bytes() == before
    np.testing.assert_array_equal(read(path)["data"], flipped(frames))
    mapped = ours.load_mib_data(str(path))
    mapped[0] = 1
    assert path.read_bytes() == before


def test_mmap_mode_r_is_read_only(small_scan: tuple[Path, np.ndarray]) -> None:
    path, _ = small_scan
    for data in (read(path, mmap_mode="r")["data"], ours.load_mib_data(str(path), mmap_mode="r")):
        assert not data.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            data[0, 0, 0, 0] = 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mmap_mode": "w+"}, "w\\+"),
        ({"mmap_mode": "w+", "lazy": True}, "w\\+"),
        ({"mmap_mode": "r+", "lazy": True}, "r\\+"),
        ({"mmap_mode": "x"}, "mmap_mode"),
    ],
)
def test_unsafe_mmap_modes_are_refused(
    small_scan: tuple[Path, np.ndarray], kwargs: dict[str, Any], message: str
) -> None:
    path, _ = small_scan
    before = path.stat().st_size
    with pytest.raises(ParameterError, match=message):
        read(path, **kwargs)
    with pytest.raises(ParameterError, match=message):
        ours.load_mib_data(str(path), **kwargs)
    assert path.stat().st_size == before


# --------------------------------------------------------------------------------------------
# print_info and header helpers


def test_print_info(small_scan: tuple[Path, np.ndarray], capsys: pytest.CaptureFixture) -> None:
    path, _ = small_scan
    read(path)
    assert capsys.readouterr().out == ""
    read(path, print_info=True)
    out = capsys.readouterr().out
    assert str(path) in out
    assert "48" in out  # frames
    assert "(6, 8)" in out  # navigation shape, array order
    assert "24" in out  # counter depth
    ours.load_mib_data(str(path), print_info=True)
    assert "(48,)" in capsys.readouterr().out
    read(path, lazy=True, print_info=True)
    assert str(path) in capsys.readouterr().out


def test_max_index_of_header_helpers(tmp_path: Path) -> None:
    path = tmp_path / "h.mib"
    with MibWriter(
        path,
        frame_shape=SMALL,
        counter_depth=6,
        exposure_s=0.0025,
        frame_interval_s=0.003,
        start_time=START,
    ) as writer:
        writer.write(frames_of(30, depth=6))
    _, headers = ours.load_mib_data(str(path), return_headers=True)
    assert ours.parse_exposures(headers) == [2.5] * 30
    assert ours.parse_exposures(headers, max_index=10) == [2.5] * 10
    assert ours.parse_exposures(headers, max_index=-1) == [2.5] * 30
    assert ours.parse_exposures(headers, max_index=0) == []
    stamps = ours.parse_timestamps(headers, max_index=5)
    assert stamps[0] == "2024-05-06T07:08:09.000000000Z"
    assert stamps[4] == "2024-05-06T07:08:09.012000000Z"
    assert len(ours.parse_timestamps(headers)) == 30
    assert len(ours.parse_timestamps(headers, max_index=-1)) == 30
    assert len(ours.parse_timestamps(headers, max_index=29)) == 29
    assert ours.parse_exposures(bytes(headers[3])) == [2.5]
    assert np.diff(ours.timestamps_ns(headers)).tolist() == [3_000_000] * 29
