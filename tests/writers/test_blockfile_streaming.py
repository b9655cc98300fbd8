"""The streaming blockfile writer: batches, dask arrays and Merlin runs give the same file.

Every way of feeding frames (a numpy array, a dask array with any chunks, a one-shot stream
of batches of any size, a Merlin run) must give byte-identical files, with bounded memory.
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

from mib_helpers import write_stored
from stemcast.errors import ParameterError
from stemcast.readers.blockfile import file_reader, read_header, read_navigator
from stemcast.readers.mib import file_reader as mib_reader
from stemcast.writers.blockfile import BlockfileWriter, convert_mib, file_writer

SCALINGS: list[Any] = [None, "dtype", "minmax", "crop", (5, 200)]


def frames(shape: tuple[int, ...] = (5, 7, 12, 12), dtype: Any = np.uint16) -> np.ndarray:
    wide = np.dtype(dtype).itemsize > 1
    data = np.random.default_rng(11).integers(3, 4000 if wide else 250, shape).astype(dtype)
    data.reshape(-1)[:2] = 1, 4090 if wide else 255
    return data


def write(path: Path, data: Any, **kwargs: Any) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file_writer(path, {"data": data}, show_progressbar=False, **kwargs)
    return path.read_bytes()


def stream(data: np.ndarray, sizes: list[int]) -> Iterator[np.ndarray]:
    """A one-shot stream of batches of the given sizes (cycled), in scan order."""
    flat = data.reshape(-1, *data.shape[-2:])
    start, index = 0, 0
    while start < len(flat):
        size = sizes[index % len(sizes)]
        yield flat[start : start + size]
        start, index = start + size, index + 1


@pytest.mark.parametrize("scaling", SCALINGS)
def test_a_stream_of_batches_gives_the_file_of_the_whole_array(
    tmp_path: Path, scaling: Any
) -> None:
    data = frames()
    expected = write(tmp_path / "array.blo", data, intensity_scaling=scaling)
    path = tmp_path / "stream.blo"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with BlockfileWriter(
            path,
            (7, 5),
            12,
            intensity_scaling=scaling,
            header={"SX": 1.0, "SY": 1.0, "SDP": 100},
        ) as writer:
            for batch in stream(data, [1, 4, 9]):
                writer.write(batch)
            writer.write(np.empty((0, 12, 12), np.uint16))
    assert writer.frames_written == 35
    assert path.read_bytes() == expected


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("chunks", [(2, 3, 12, 12), (5, 7, 12, 12), (1, 2, 5, 7), (3, -1, -1, 6)])
def test_dask_arrays_give_the_file_of_the_numpy_array(
    tmp_path: Path, scaling: Any, chunks: tuple[int, ...]
) -> None:
    data = frames()
    expected = write(tmp_path / "array.blo", data, intensity_scaling=scaling)
    lazy = da.from_array(data, chunks=chunks)
    assert write(tmp_path / "lazy.blo", lazy, intensity_scaling=scaling) == expected


@pytest.mark.parametrize("shape", [(9, 12, 12), (12, 12)])
def test_dask_arrays_with_fewer_navigation_dimensions(
    tmp_path: Path, shape: tuple[int, ...]
) -> None:
    data = frames(shape)
    expected = write(tmp_path / "array.blo", data, intensity_scaling="dtype")
    lazy = da.from_array(data, chunks=(2, 12, 12)[-len(shape) :])
    assert write(tmp_path / "lazy.blo", lazy, intensity_scaling="dtype") == expected


def test_big_endian_and_non_contiguous_sources(tmp_path: Path) -> None:
    data = frames()
    expected = write(tmp_path / "native.blo", data, intensity_scaling="minmax")
    swapped = data.astype(">u2")
    assert write(tmp_path / "swapped.blo", swapped, intensity_scaling="minmax") == expected
    flipped = np.ascontiguousarray(data[..., ::-1, :])[..., ::-1, :]
    assert write(tmp_path / "view.blo", flipped, intensity_scaling="minmax") == expected


def test_large_scan_lines_are_split_within_a_line(tmp_path: Path, monkeypatch: Any) -> None:
    from stemcast.formats.blockfile import writer as blockfile

    data = frames((3, 40, 12, 12))
    expected = write(tmp_path / "whole.blo", data, intensity_scaling="dtype")
    monkeypatch.setattr(blockfile, "_BATCH_BYTES", 7 * 12 * 12 * 2)  # 7 frames per batch
    assert write(tmp_path / "split.blo", data, intensity_scaling="dtype") == expected


@pytest.mark.parametrize("scaling", ["dtype", "minmax"])
def test_memory_stays_bounded_while_streaming(tmp_path: Path, scaling: str) -> None:
    batch = np.random.default_rng(0).integers(0, 4096, (16, 128, 128)).astype(np.uint16)
    batches = 256  # 128 MiB of uint16 frames in 0.5 MiB batches
    tracemalloc.start()
    try:
        with BlockfileWriter(
            tmp_path / "big.blo", (64, 64), 128, intensity_scaling=scaling
        ) as writer:
            for _ in range(batches):
                writer.write(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Fixed buffers only: a batch, its records, and for "minmax" the rescaling buffers (16 MiB
    # of raw frames, 8 MiB of records), whatever the size of the stream.
    assert peak < 40 * 2**20
    header = read_header(tmp_path / "big.blo")
    assert (header.nx, header.ny) == (64, 64)


def test_one_frame_at_a_time(tmp_path: Path) -> None:
    data = frames((2, 2, 6, 6), np.uint8)
    expected = write(tmp_path / "array.blo", data)
    with BlockfileWriter(tmp_path / "one.blo", (2, 2), 6, header={"SDP": 100}) as writer:
        for frame in data.reshape(-1, 6, 6):
            writer.write(frame)
    assert (tmp_path / "one.blo").read_bytes() == expected


def test_nothing_appears_when_the_stream_fails(tmp_path: Path) -> None:
    path = tmp_path / "failed.blo"

    def broken() -> Iterator[np.ndarray]:
        yield np.zeros((3, 6, 6), np.uint8)
        raise RuntimeError("camera gone")

    def convert() -> None:
        with BlockfileWriter(path, (4,), 6) as writer:
            for batch in broken():
                writer.write(batch)

    with pytest.raises(RuntimeError, match="camera gone"):
        convert()
    assert list(tmp_path.iterdir()) == []


def test_missing_frames_are_refused_at_commit(tmp_path: Path) -> None:
    writer = BlockfileWriter(tmp_path / "short.blo", (4, 2), 6)
    writer.write(np.zeros((5, 6, 6), np.uint8))
    with pytest.raises(ParameterError, match="5 frames written, the navigation shape"):
        writer.commit()
    assert list(tmp_path.iterdir()) == []


def test_abort_leaves_an_existing_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "keep.blo"
    path.write_bytes(b"previous")
    writer = BlockfileWriter(path, (2,), 6)
    writer.write(np.zeros((2, 6, 6), np.uint8))
    writer.abort()
    assert path.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [path]


def test_streaming_errors(tmp_path: Path) -> None:
    with BlockfileWriter(tmp_path / "a.blo", (3,), 6) as writer:
        with pytest.raises(ParameterError, match="not 6 x 6"):
            writer.write(np.zeros((1, 6, 5), np.uint8))
        with pytest.raises(ParameterError, match="beyond the 3"):
            writer.write(np.zeros((4, 6, 6), np.uint8))
        writer.write(np.zeros((1, 6, 6), np.uint8))
        with pytest.raises(ParameterError, match="one dtype per file"):
            writer.write(np.zeros((1, 6, 6), np.uint16))
        with pytest.raises(ParameterError, match="integers or floats only"):
            writer.write(np.zeros((1, 6, 6), complex))
        writer.write(np.zeros((2, 6, 6), np.uint8))
    with (
        pytest.raises(ParameterError, match="float"),
        BlockfileWriter(tmp_path / "b.blo", (1,), 6, intensity_scaling="dtype") as writer,
    ):
        writer.write(np.zeros((1, 6, 6), np.float32))
    assert sorted(item.name for item in tmp_path.iterdir()) == ["a.blo"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"navigation_shape": (2, 2, 2)}, "at most 2 navigation"),
        ({"navigation_shape": (70000,)}, "1..65535"),
        ({"navigation_shape": (0, 3)}, "1..65535"),
        ({"frame_size": 0}, "frame_size"),
        ({"navigator": np.zeros((2, 3))}, "does not match the navigation shape"),
        ({"navigator": "vbf"}, "'navigator', an array or None"),
        ({"endianess": "big"}, "endianess"),
        ({"intensity_scaling": "max"}, "intensity_scaling"),
        ({"header": {"Beam_energy": -5}}, "Beam_energy"),
    ],
)
def test_writer_parameters_are_checked_before_anything_is_written(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    arguments: dict[str, Any] = {"navigation_shape": (2, 3), "frame_size": 6, **kwargs}
    with pytest.raises(ParameterError, match=match):
        BlockfileWriter(
            tmp_path / "x.blo",
            arguments.pop("navigation_shape"),
            arguments.pop("frame_size"),
            **arguments,
        )
    assert list(tmp_path.iterdir()) == []


def _run(tmp_path: Path, frames_written: int | None = None) -> tuple[Path, np.ndarray]:
    """A 12-bit Merlin run of a 6 x 4 scan whose .hdr gives the scan size."""
    data = np.random.default_rng(5).integers(0, 4096, (4, 6, 32, 32)).astype(np.uint16)
    data.reshape(-1)[:2] = 0, 4095
    path = tmp_path / "run.mib"
    flat = data.reshape(-1, 32, 32)[:frames_written]
    write_stored(
        path,
        flat,
        frame_shape=(32, 32),
        scan_shape=(6, 4),
        hdr_scan_size=True,
        frames_expected=24,
        start_time=datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC),
    )
    return path, data


@pytest.mark.filterwarnings("ignore:.*does not have uint8 dtype")
@pytest.mark.parametrize("scaling", SCALINGS)
def test_merlin_conversion_equals_file_reader_then_file_writer(
    tmp_path: Path, scaling: Any
) -> None:
    source, _ = _run(tmp_path)
    converted = convert_mib(
        source, tmp_path / "converted.blo", intensity_scaling=scaling, batch_frames=5
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file_writer(
            tmp_path / "two_steps.blo",
            mib_reader(source)[0],
            intensity_scaling=scaling,
            show_progressbar=False,
        )
    assert converted.read_bytes() == (tmp_path / "two_steps.blo").read_bytes()


@pytest.mark.parametrize("scaling", ["dtype", "minmax"])
def test_merlin_conversion_equals_the_reference_reader_and_writer(
    tmp_path: Path, scaling: str
) -> None:
    rsciio_blockfile = pytest.importorskip("rsciio.blockfile")
    rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
    source, data = _run(tmp_path)
    convert_mib(source, tmp_path / "ours.blo", intensity_scaling=scaling)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signal = rsciio_qd.file_reader(str(source), navigation_shape=(6, 4))[0]
        signal["attributes"] = {"_lazy": False}
        rsciio_blockfile.file_writer(
            str(tmp_path / "ref.blo"), signal, intensity_scaling=scaling, show_progressbar=False
        )
    ours = file_reader(tmp_path / "ours.blo")[0]["data"]
    assert ours.shape == (4, 6, 32, 32)
    np.testing.assert_array_equal(ours, file_reader(tmp_path / "ref.blo")[0]["data"])
    np.testing.assert_array_equal(
        read_navigator(tmp_path / "ours.blo"), read_navigator(tmp_path / "ref.blo")
    )
    if scaling == "dtype":  # frames flipped vertically, as the readers return them
        np.testing.assert_array_equal(ours, (data[..., ::-1, :] // 257).astype(np.uint8))


def test_merlin_conversion_header(tmp_path: Path) -> None:
    source, _ = _run(tmp_path)
    path = convert_mib(
        source,
        tmp_path / "run.blo",
        intensity_scaling="dtype",
        header={"SX": 5.0, "SY": 5.0, "SDP": 6226, "Beam_energy": 200000},
    )
    header = read_header(path)
    assert (header.nx, header.ny, header.frame_size) == (6, 4, 32)
    assert (header.fields["SX"], header.fields["SDP"], header.fields["Beam_energy"]) == (
        5.0,
        6226,
        200000,
    )
    general = file_reader(path)[0]["metadata"]["General"]
    assert general["date"] == "2024-03-01"


def test_interrupted_merlin_run_keeps_complete_lines(tmp_path: Path) -> None:
    source, data = _run(tmp_path, frames_written=17)  # 2 lines of 6, and 5 frames
    path = convert_mib(source, tmp_path / "cut.blo", intensity_scaling="dtype")
    converted = file_reader(path)[0]["data"]
    assert converted.shape == (2, 6, 32, 32)
    np.testing.assert_array_equal(converted, (data[:2, :, ::-1, :] // 257).astype(np.uint8))


def test_merlin_conversion_refuses_float_dtype_scaling_and_bad_shapes(tmp_path: Path) -> None:
    source, _ = _run(tmp_path)
    with pytest.raises(ParameterError, match="do not fill one line"):
        convert_mib(source, tmp_path / "x.blo", navigation_shape=(48, 2))
    with pytest.raises(ParameterError, match="at most 2 navigation"):
        convert_mib(source, tmp_path / "x.blo", navigation_shape=(2, 3, 4))
    assert not (tmp_path / "x.blo").exists()


def test_navigator_of_saturated_frames(tmp_path: Path) -> None:
    data = np.zeros((3, 256, 256), np.uint16)
    data[0], data[2, 0, 0] = 65535, 65535
    write(tmp_path / "full.blo", data, intensity_scaling="dtype")
    expected = (data.mean(axis=(1, 2)) / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_navigator(tmp_path / "full.blo")[0], expected)
    assert read_navigator(tmp_path / "full.blo")[0, 0] == 255
    signed = np.full((2, 256, 256), -32768, np.int16)
    signed[1] = 32767
    write(tmp_path / "signed.blo", signed, intensity_scaling="dtype")
    np.testing.assert_array_equal(read_navigator(tmp_path / "signed.blo"), [[0, 255]])
