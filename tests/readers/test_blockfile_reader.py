"""The blockfile reader: the real test2.blo read as the reference (rosettasciio) reads it.

The reference is a black box: the same call is made on both libraries and the results are
compared. Intended differences are pinned explicitly:

* eager data are a copy-on-write ``numpy.memmap`` (the reference returns an in-memory view);
* a lazy read drops scan axes of length 1 as the eager read does (the reference keeps them);
* the 16-bit variant of newer ASTAR files is read as uint16 (the reference misreads it).
"""

from __future__ import annotations

import pickle
import shutil
import struct
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reductions import assert_same_reductions, force_threads

from conftest import shared_file
from stemcast.errors import ParameterError
from stemcast.formats.blockfile.spec import FIELD_NAMES, format_header
from stemcast.formats.frame_sums import FrameMemmap
from stemcast.readers.blockfile import file_reader, read_header, read_navigator
from stemcast.writers.blockfile import file_writer

rsciio_blockfile = pytest.importorskip("rsciio.blockfile")

NOTE = "Precession angle : \r\nPrecession Frequency : \r\nCamera gamma : on"


@pytest.fixture
def test2() -> Path:
    return shared_file("blockfile", "test2.blo")


def reference(path: Path, **kwargs: Any) -> dict[str, Any]:
    return rsciio_blockfile.file_reader(str(path), **kwargs)[0]  # type: ignore[no-any-return]


def test_test2_reads_as_the_reference_reads_it(test2: Path) -> None:
    ours, ref = file_reader(test2)[0], reference(test2)
    assert isinstance(ours["data"], np.memmap)
    assert ours["data"].dtype == np.uint8
    assert ours["data"].shape == (2, 3, 5, 5)
    np.testing.assert_array_equal(ours["data"], ref["data"])
    assert ours["axes"] == ref["axes"]
    assert ours["metadata"] == ref["metadata"]
    assert ours["original_metadata"] == ref["original_metadata"]
    ours_header = ours["original_metadata"]["blockfile_header"]
    ref_header = ref["original_metadata"]["blockfile_header"]
    assert list(ours_header) == list(ref_header)
    for name in ref_header:
        assert type(ours_header[name]) is type(ref_header[name]), name
    assert ours["mapping"].keys() == ref["mapping"].keys()
    for key, (target, convert) in ref["mapping"].items():
        assert ours["mapping"][key][0] == target
        assert ours["mapping"][key][1](2500) == convert(2500)


def test_test2_values_of_the_spec(test2: Path) -> None:
    signal = file_reader(test2)[0]
    scales = [axis["scale"] for axis in signal["axes"]]
    assert scales == [64.0, 64.0, 100 / 6226, 100 / 6226]
    assert [axis["units"] for axis in signal["axes"]] == ["nm", "nm", "cm", "cm"]
    header = signal["original_metadata"]["blockfile_header"]
    assert header["Beam_energy"] == 200000
    assert header["Scan_rotation"] == 2500
    assert header["Distortion_N01"] == 0.98
    assert header["Distortion_N09"] == 0.945
    assert header["Note"] == NOTE
    assert signal["metadata"]["General"]["notes"] == NOTE


def test_navigator_of_test2_is_the_truncated_frame_means(test2: Path) -> None:
    data = file_reader(test2)[0]["data"]
    expected = [[18, 21, 21], [19, 15, 21]]  # spec section 4
    np.testing.assert_array_equal(read_navigator(test2), expected)
    np.testing.assert_array_equal(data.mean(axis=(2, 3)).astype(np.uint8), expected)


def test_lazy_read_equals_eager_and_pickles_small(test2: Path) -> None:
    data = file_reader(test2, lazy=True)[0]["data"]
    assert data.shape == (2, 3, 5, 5)
    np.testing.assert_array_equal(data.compute(), reference(test2, lazy=True)["data"].compute())
    payload = pickle.dumps(data)
    assert len(payload) < 10_000
    np.testing.assert_array_equal(pickle.loads(payload).compute(), file_reader(test2)[0]["data"])


@pytest.mark.parametrize("lazy", [False, True])
def test_sums_and_means_are_the_reference_ones(
    test2: Path, lazy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_threads(monkeypatch)
    ours = file_reader(str(test2), lazy=lazy)[0]["data"]
    if not lazy:
        assert isinstance(ours, FrameMemmap)
    assert_same_reductions(ours, reference(test2, lazy=lazy)["data"])


def test_copy_on_write_by_default_leaves_the_file_untouched(test2: Path, tmp_path: Path) -> None:
    copy = tmp_path / "test2.blo"
    shutil.copyfile(test2, copy)
    before = copy.read_bytes()
    data = file_reader(copy)[0]["data"]
    data[...] = 7
    del data
    assert copy.read_bytes() == before


def test_mmap_mode_r_is_read_only_and_r_plus_writes_through(test2: Path, tmp_path: Path) -> None:
    copy = tmp_path / "test2.blo"
    shutil.copyfile(test2, copy)
    readonly = file_reader(copy, mmap_mode="r")[0]["data"]
    with pytest.raises(ValueError, match="read-only"):
        readonly[0, 0, 0, 0] = 1
    writable = file_reader(copy, mmap_mode="r+")[0]["data"]
    writable[1, 2] = 99
    writable.flush()
    del writable, readonly
    np.testing.assert_array_equal(file_reader(copy)[0]["data"][1, 2], 99)


@pytest.mark.parametrize(
    ("lazy", "mode", "match"),
    [(True, "r+", "in-place"), (False, "w+", "overwrite"), (False, "x", "not one of")],
)
def test_refused_mmap_modes(test2: Path, lazy: bool, mode: str, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        file_reader(test2, lazy=lazy, mmap_mode=mode)


def test_lazy_accepts_copy_on_write(test2: Path) -> None:
    data = file_reader(test2, lazy=True, mmap_mode="c")[0]["data"]
    np.testing.assert_array_equal(data.compute(), reference(test2)["data"])


def test_endianess_must_be_lt_or_gt(test2: Path) -> None:
    with pytest.raises(ParameterError, match="endianess"):
        file_reader(test2, endianess="=")


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
def test_date_is_given_in_the_local_time_zone_like_the_reference(test2: Path) -> None:
    general = file_reader(test2)[0]["metadata"]["General"]
    assert general == reference(test2)["metadata"]["General"]
    assert (general["date"], general["time"], general["time_zone"]) == (
        "2015-12-01",
        "10:43:09.828000",
        "EST",
    )


def _write(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    data = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    file_writer(path, {"data": data}, show_progressbar=False)
    return data


@pytest.mark.parametrize(
    ("shape", "names"),
    [
        ((1, 5, 4, 4), ["x", "dy", "dx"]),
        ((5, 1, 4, 4), ["y", "dy", "dx"]),
        ((5, 4, 4), ["x", "dy", "dx"]),
        ((4, 4), ["dy", "dx"]),
    ],
)
def test_scan_axes_of_length_one_are_dropped_eager_and_lazy(
    tmp_path: Path, shape: tuple[int, ...], names: list[str]
) -> None:
    path = tmp_path / "scan.blo"
    data = _write(path, shape)
    for lazy in (False, True):
        signal = file_reader(path, lazy=lazy)[0]
        assert signal["data"].shape == data.squeeze().shape
        np.testing.assert_array_equal(np.asarray(signal["data"]), data.squeeze())
        assert [axis["name"] for axis in signal["axes"]] == names
        assert [axis["navigate"] for axis in signal["axes"]] == [
            name in ("x", "y") for name in names
        ]
    np.testing.assert_array_equal(reference(path)["data"], data.squeeze())


def _sixteen_bit_file(path: Path, frames: np.ndarray) -> None:
    """A newer ASTAR file (spec section 7): signature 0x0103, uint16 patterns."""
    ny, nx, size, _ = frames.shape
    fields: dict[str, object] = dict.fromkeys(FIELD_NAMES, 0)
    fields.update(
        ID=b"IMGBLO", MAGIC=0x0103, Data_offset_1=4096, Data_offset_2=4112, NX=nx, NY=ny, DP_SZ=size
    )
    records = b"".join(
        struct.pack("<HI", 0x55AA, index) + frame.astype("<u2").tobytes()
        for index, frame in enumerate(frames.reshape(-1, size, size))
    )
    raw = format_header(fields, "Precession angle : \r\nBlo Bit Depth: 16 bits")
    path.write_bytes(raw + bytes(4112 - len(raw)) + records)


def test_sixteen_bit_astar_files_read_as_uint16(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 65536, (3, 2, 6, 6)).astype(np.uint16)
    path = tmp_path / "sixteen.blo"
    _sixteen_bit_file(path, frames)
    assert read_header(path).bit_depth == 16
    for lazy in (False, True):
        data = file_reader(path, lazy=lazy)[0]["data"]
        assert data.dtype == np.uint16
        np.testing.assert_array_equal(np.asarray(data), frames)


def test_trailing_bytes_are_ignored_with_a_warning(test2: Path, tmp_path: Path) -> None:
    path = tmp_path / "longer.blo"
    path.write_bytes(test2.read_bytes() + bytes(100))
    with pytest.warns(UserWarning, match="100 bytes after the last"):
        data = file_reader(path)[0]["data"]
    np.testing.assert_array_equal(data, reference(test2)["data"])


def test_read_header_and_navigator_of_a_file_we_wrote(tmp_path: Path) -> None:
    path = tmp_path / "nav.blo"
    data = _write(path, (3, 4, 6, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        header = read_header(path)
    assert (header.nx, header.ny, header.frame_size) == (4, 3, 6)
    np.testing.assert_array_equal(read_navigator(path), data.mean(axis=(2, 3)).astype(np.uint8))


def test_a_note_longer_than_4096_bytes_is_read_whole(tmp_path: Path) -> None:
    fields: dict[str, object] = dict.fromkeys(FIELD_NAMES, 0)
    fields.update(
        ID=b"IMGBLO", MAGIC=0x0102, Data_offset_1=8192, Data_offset_2=8208, NX=2, NY=1, DP_SZ=3
    )
    note = "Camera gamma : on\r\n" * 400
    frames = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    records = b"".join(
        struct.pack("<HI", 0x55AA, index) + frame.tobytes() for index, frame in enumerate(frames)
    )
    path = tmp_path / "long_note.blo"
    path.write_bytes(format_header(fields, note) + bytes(16) + records)
    signal = file_reader(path)[0]
    assert signal["metadata"]["General"]["notes"] == note.strip("\x00")
    np.testing.assert_array_equal(signal["data"], frames)
