"""The NCEM EMD writer: what it writes reads back with stemcast, RosettaSciIO and ncempy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask.array as da
import h5py
import numpy as np
import pytest

from stemcast.batch import FrameBatch
from stemcast.errors import ParameterError
from stemcast.readers.emd import file_reader
from stemcast.writers.emd import EmdWriter, default_chunks, file_writer

rsciio_emd = pytest.importorskip("rsciio.emd")

SCAN = (3, 4)  # (y, x) rows of the array
PATTERN = (32, 40)
UNITS = ("nm", "nm", "1/nm", "1/nm")


def _data(dtype: Any = np.uint16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, (*SCAN, *PATTERN)).astype(dtype)


def _axes(data: np.ndarray) -> list[dict[str, Any]]:
    names = ("y", "x", "ky", "kx")
    return [
        {
            "name": name,
            "units": units,
            "scale": 0.5 * (index + 1),
            "offset": 10.0 * index,
            "size": size,
            "index_in_array": index,
            "navigate": index < 2,
        }
        for index, (name, units, size) in enumerate(zip(names, UNITS, data.shape, strict=True))
    ]


def _signal(data: Any) -> dict[str, Any]:
    return {
        "data": data,
        "axes": _axes(np.empty(data.shape)),
        "metadata": {
            "General": {"title": "scan"},
            "Signal": {"signal_type": "electron_diffraction", "quantity": "Counts"},
        },
        "original_metadata": {"microscope": {"name": "Titan", "voltage": "300kV"}},
    }


def _check_axes(axes: list[dict[str, Any]], data: np.ndarray) -> None:
    expected = _axes(data)
    assert [axis["name"] for axis in axes] == [axis["name"] for axis in expected]
    assert [axis["units"] for axis in axes] == ["nm", "nm", "1 / nm", "1 / nm"]
    for axis, want in zip(axes, expected, strict=True):
        assert axis["scale"] == pytest.approx(want["scale"])
        assert axis["offset"] == pytest.approx(want["offset"])


@pytest.mark.parametrize("reader", ["stemcast", "rosettasciio"])
def test_written_signal_reads_back(tmp_path: Path, reader: str) -> None:
    data = _data()
    path = tmp_path / "scan.emd"
    file_writer(path, _signal(data))
    read = file_reader if reader == "stemcast" else rsciio_emd.file_reader
    (signal,) = read(path)
    np.testing.assert_array_equal(signal["data"], data)
    assert signal["data"].dtype == np.uint16
    _check_axes(signal["axes"], data)
    assert signal["metadata"]["General"]["title"] == "scan"
    original = signal["original_metadata"]
    assert original["EMD_version"] == "0.2"
    assert original["microscope"] == {"name": "Titan", "voltage": "300kV"}
    assert set(original) == {"EMD_version", "microscope", "sample", "user", "comments"}


def test_ncempy_reads_the_stored_transposed_array(tmp_path: Path) -> None:
    ncempy_emd = pytest.importorskip("ncempy.io.emd")
    data = _data()
    path = tmp_path / "scan.emd"
    file_writer(path, _signal(data))
    emd = ncempy_emd.fileEMD(str(path))
    try:
        stored, dims = emd.get_emdgroup(emd.list_emds[0])
    finally:
        emd.__del__()
    np.testing.assert_array_equal(stored, data.T)
    assert [dim[1] for dim in dims] == ["kx", "ky", "x", "y"]
    assert [dim[2] for dim in dims] == ["[1_/_n_m]", "[1_/_n_m]", "[n_m]", "[n_m]"]
    assert dims[0][0][1] - dims[0][0][0] == pytest.approx(2.0)


def test_layout_matches_the_reference_writer(tmp_path: Path) -> None:
    data = _data()
    ours, theirs = tmp_path / "ours.emd", tmp_path / "theirs.emd"
    file_writer(ours, _signal(data))
    rsciio_emd.file_writer(str(theirs), _signal(data))
    with h5py.File(ours) as mine, h5py.File(theirs) as reference:
        assert dict(mine.attrs) == dict(reference.attrs)
        for group in ("microscope", "sample", "user", "comments"):
            assert dict(mine[group].attrs) == dict(reference[group].attrs)
        assert mine["signals"].attrs["emd_group_type"] == 1
        np.testing.assert_array_equal(mine["signals/scan/data"], reference["signals/scan/data"])
        for index in range(1, 5):
            dim, want = mine[f"signals/scan/dim{index}"], reference[f"signals/scan/dim{index}"]
            np.testing.assert_allclose(dim[()], want[()])
            assert dict(dim.attrs) == dict(want.attrs)
        signal_attributes = dict(mine["signals/scan"].attrs)
        assert signal_attributes["signal_type"] == "electron_diffraction"
        assert signal_attributes["quantity"] == "Counts"


def test_default_chunks_keep_every_pattern_whole(tmp_path: Path) -> None:
    # The reference splits 64x64 patterns of a (100, 100) scan into 7x7-pattern tiles.
    assert default_chunks((100, 100, 64, 64), 2, 2) == (1, 100, 64, 64)
    assert default_chunks((10, 20, 256, 256), 2, 2) == (1, 1, 256, 256)
    assert default_chunks((50, 4096), 4, 1) == (50, 4096)
    data = _data()
    path = tmp_path / "scan.emd"
    file_writer(path, _signal(data))
    with h5py.File(path) as file:
        assert file["signals/scan/data"].chunks[:2] == PATTERN[::-1]


def test_explicit_and_automatic_chunks(tmp_path: Path) -> None:
    data = _data()
    file_writer(tmp_path / "tuple.emd", _signal(data), chunks=(1, 2, 16, 40))
    file_writer(tmp_path / "guess.emd", _signal(data), chunks=True)
    with h5py.File(tmp_path / "tuple.emd") as file:
        assert file["signals/scan/data"].chunks == (40, 16, 2, 1)
    for name in ("tuple.emd", "guess.emd"):
        np.testing.assert_array_equal(file_reader(tmp_path / name)[0]["data"], data)


def test_compression_and_root_attributes_from_keywords(tmp_path: Path) -> None:
    data = _data()
    path = tmp_path / "packed.emd"
    file_writer(path, _signal(data), compression="gzip", compression_opts=6, shuffle=True, note="x")
    with h5py.File(path) as file:
        stored = file["signals/scan/data"]
        assert (stored.compression, stored.compression_opts, stored.shuffle) == ("gzip", 6, True)
        assert file.attrs["note"] == "x"
    np.testing.assert_array_equal(rsciio_emd.file_reader(path)[0]["data"], data)
    np.testing.assert_array_equal(file_reader(path)[0]["data"], data)


def test_lazy_signal_is_written_block_by_block(tmp_path: Path) -> None:
    data = _data(np.float32)
    path = tmp_path / "lazy.emd"
    file_writer(path, _signal(da.from_array(data, chunks=(1, 2, 32, 40))))
    np.testing.assert_array_equal(file_reader(path)[0]["data"], data)


def test_spectrum_and_unnamed_signal(tmp_path: Path) -> None:
    spectrum = np.arange(7, dtype=np.int32)
    path = tmp_path / "spectrum.emd"
    file_writer(path, {"data": spectrum, "axes": [{"name": "E", "units": None}], "metadata": {}})
    (signal,) = rsciio_emd.file_reader(path)
    np.testing.assert_array_equal(signal["data"], spectrum)
    assert signal["metadata"]["General"]["title"] == "__unnamed__"
    assert signal["axes"][0]["units"] == ""


# Streaming ---------------------------------------------------------------------------------


def _frames() -> np.ndarray:
    return _data().reshape(-1, *PATTERN)


@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.parametrize("batch", [1, 5, 12])
def test_streamed_scan_equals_the_whole_array(
    tmp_path: Path, compression: str | None, batch: int
) -> None:
    frames = _frames()
    path = tmp_path / "stream.emd"
    with EmdWriter(
        path,
        PATTERN,
        np.uint16,
        scan_shape=SCAN[::-1],
        axes=_axes(_data()),
        title="scan",
        compression=compression,
        shuffle=compression is not None,
    ) as writer:
        for start in range(0, len(frames), batch):
            writer.write(frames[start : start + batch])
    (signal,) = rsciio_emd.file_reader(path)
    np.testing.assert_array_equal(signal["data"], _data())
    _check_axes(signal["axes"], _data())
    with h5py.File(path) as file:
        assert file["signals/scan/data"].compression == compression


def test_frame_batches_and_flipped_views_are_accepted(tmp_path: Path) -> None:
    frames = _frames()
    path = tmp_path / "flipped.emd"
    with EmdWriter(path, PATTERN, np.uint32, scan_shape=SCAN[::-1]) as writer:
        for start in range(0, len(frames), 4):
            batch = FrameBatch(start, frames[start : start + 4], np.zeros(4, "S8"))
            writer.write(FrameBatch(batch.start, batch.frames[:, ::-1, :], batch.headers))
    expected = _data()[..., ::-1, :]
    (signal,) = file_reader(path)
    np.testing.assert_array_equal(signal["data"], expected)
    assert signal["data"].dtype == np.uint32


@pytest.mark.parametrize("chunks", [None, (2, 2, 32, 40)])
def test_interrupted_scan_keeps_its_complete_lines(
    tmp_path: Path, chunks: tuple[int, ...] | None, caplog: pytest.LogCaptureFixture
) -> None:
    frames = _frames()
    path = tmp_path / "interrupted.emd"
    with (
        caplog.at_level(logging.WARNING),
        EmdWriter(
            path, PATTERN, np.uint16, scan_shape=SCAN[::-1], axes=_axes(_data()), chunks=chunks
        ) as writer,
    ):
        writer.write(frames[:10])
        shape = writer.commit()
    assert shape == (2, 4, *PATTERN)
    assert "keeping 2 complete lines" in caplog.text
    (signal,) = rsciio_emd.file_reader(path)
    np.testing.assert_array_equal(signal["data"], _data()[:2])


@pytest.mark.parametrize("chunks", [None, (2, 2, 32, 40)])
def test_scan_stopped_within_its_first_line_becomes_a_stack(
    tmp_path: Path, chunks: tuple[int, ...] | None
) -> None:
    frames = _frames()
    path = tmp_path / "short.emd"
    writer = EmdWriter(
        path, PATTERN, np.uint16, scan_shape=SCAN[::-1], axes=_axes(_data()), chunks=chunks
    )
    writer.write(frames[:3])
    assert writer.commit() == (3, *PATTERN)
    (signal,) = file_reader(path)
    np.testing.assert_array_equal(signal["data"], frames[:3])
    assert [axis["name"] for axis in signal["axes"]] == ["x", "ky", "kx"]


@pytest.mark.parametrize("chunks", [None, (5, 32, 40)])
def test_stack_of_unknown_length_grows(tmp_path: Path, chunks: tuple[int, ...] | None) -> None:
    frames = _frames()
    path = tmp_path / "stack.emd"
    with EmdWriter(path, PATTERN, np.uint16, chunks=chunks) as writer:
        writer.write(frames[:7])
        writer.write(frames[7:11])
    (signal,) = rsciio_emd.file_reader(path)
    np.testing.assert_array_equal(signal["data"], frames[:11])


def test_failed_run_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "failed.emd"

    def run() -> None:
        with EmdWriter(path, PATTERN, np.uint16) as writer:
            writer.write(_frames()[:2])
            raise RuntimeError("camera lost")

    with pytest.raises(RuntimeError, match="camera lost"):
        run()
    assert list(tmp_path.iterdir()) == []


def test_file_appears_only_when_committed(tmp_path: Path) -> None:
    path = tmp_path / "late.emd"
    writer = EmdWriter(path, PATTERN, np.uint16, scan_shape=(2,))
    writer.write(_frames()[:2])
    assert not path.exists()
    writer.commit()
    assert path.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["late.emd"]


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((13, *PATTERN), np.uint16), "holds 12 frames"),
        (np.zeros((2, 8, 8), np.uint16), r"frames of shape \(8, 8\)"),
        (np.zeros((2, *PATTERN), np.float64), "float64 frames do not fit"),
    ],
)
def test_bad_frames_are_refused(tmp_path: Path, frames: np.ndarray, match: str) -> None:
    path = tmp_path / "bad.emd"
    writer = EmdWriter(path, PATTERN, np.uint16, scan_shape=SCAN[::-1])
    with pytest.raises(ParameterError, match=match):
        writer.write(frames)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_chunks_must_match_the_dimensions(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="chunks"):
        EmdWriter(tmp_path / "c.emd", PATTERN, np.uint16, scan_shape=(4, 3), chunks=(1, 32, 40))
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "out.emd"
    with pytest.raises(ParameterError, match="folder of the output does not exist") as error:
        EmdWriter(path, PATTERN, np.uint16)
    assert error.value.path == str(path)


@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_streamed_filters_read_back_through_hdf5(
    tmp_path: Path, compression: str | None, shuffle: bool
) -> None:
    """Chunks written directly (unfiltered or deflated here) or through HDF5's filter
    pipeline read back the same through h5py, whatever the filter combination."""
    frames = np.random.default_rng(7).integers(0, 4096, (6, 16, 16), dtype=np.uint16)
    path = tmp_path / "filtered.emd"
    with EmdWriter(
        path,
        (16, 16),
        np.uint16,
        scan_shape=(3, 2),
        chunks=(1, 1, 16, 16),
        compression=compression,
        shuffle=shuffle,
    ) as writer:
        writer.write(frames)
    with h5py.File(path, "r") as file:
        (name,) = file["signals"]
        dataset = file["signals"][name]["data"]
        assert dataset.shuffle is shuffle
        assert dataset.compression == compression
        np.testing.assert_array_equal(dataset[()].T.reshape(6, 16, 16), frames)


@pytest.mark.parametrize("frame_shape", [(70, 130), (130, 70), (64, 64), (3, 200)])
def test_frames_of_any_shape_are_stored_transposed(tmp_path: Path, frame_shape: tuple) -> None:
    """Frames are transposed tile by tile: sizes that are not multiples of a tile, flipped
    and big-endian views all land where h5py (and rosettasciio) expect them."""
    frames = np.random.default_rng(3).integers(0, 60000, (4, *frame_shape)).astype(">u2")
    path = tmp_path / "shapes.emd"
    with EmdWriter(
        path, frame_shape, np.uint16, scan_shape=(2, 2), chunks=(1, 1, *frame_shape)
    ) as writer:
        writer.write(frames[:, ::-1])
    with h5py.File(path, "r") as file:
        (name,) = file["signals"]
        stored = file["signals"][name]["data"][()]
    np.testing.assert_array_equal(stored.T.reshape(4, *frame_shape), frames[:, ::-1])
    [signal] = rsciio_emd.file_reader(str(path))
    np.testing.assert_array_equal(signal["data"].reshape(4, *frame_shape), frames[:, ::-1])
