"""Bad blockfiles: each problem raises a stemcast error naming the file, the place and the cause."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from conftest import shared_file
from stemcast.errors import FormatError, StemcastError, TruncatedError
from stemcast.readers.blockfile import file_reader


@pytest.fixture
def test2_bytes() -> bytes:
    return shared_file("blockfile", "test2.blo").read_bytes()


def _file(tmp_path: Path, raw: bytes, name: str = "bad.blo") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def _patched(raw: bytes, offset: int, code: str, value: int) -> bytes:
    patched = bytearray(raw)
    struct.pack_into("<" + code, patched, offset, value)
    return bytes(patched)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such file"):
        file_reader(tmp_path / "absent.blo")


@pytest.mark.parametrize("lazy", [False, True])
def test_wrong_magic(tmp_path: Path, test2_bytes: bytes, lazy: bool) -> None:
    path = _file(tmp_path, b"IMGBLX" + test2_bytes[6:])
    with pytest.raises(FormatError, match="not a blockfile") as error:
        file_reader(path, lazy=lazy)
    assert str(path) in str(error.value)
    assert error.value.offset == 0


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not a blockfile"):
        file_reader(_file(tmp_path, b""))


def test_header_cut_short(tmp_path: Path, test2_bytes: bytes) -> None:
    with pytest.raises(TruncatedError, match="header cut short: 100 of 240"):
        file_reader(_file(tmp_path, test2_bytes[:100]))


@pytest.mark.parametrize(
    ("length", "complete"),
    [(4294 - 1, 5), (4108 + 31 * 4 + 3, 4), (4108, 0), (3000, 0)],
)
@pytest.mark.parametrize("lazy", [False, True])
def test_truncated_data(
    tmp_path: Path, test2_bytes: bytes, length: int, complete: int, lazy: bool
) -> None:
    path = _file(tmp_path, test2_bytes[:length])
    with pytest.raises(TruncatedError, match=f"{complete} complete frames") as error:
        file_reader(path, lazy=lazy)
    assert error.value.path == str(path)
    assert error.value.offset == 4108 + complete * 31
    assert "3 x 2 frames of 31 bytes" in str(error.value)


def test_header_announcing_more_frames_than_the_file_holds(
    tmp_path: Path, test2_bytes: bytes
) -> None:
    path = _file(tmp_path, _patched(test2_bytes, 26, "H", 3))  # NY = 3
    with pytest.raises(TruncatedError, match="6 complete frames"):
        file_reader(path)


def test_frames_starting_inside_the_navigator(tmp_path: Path, test2_bytes: bytes) -> None:
    path = _file(tmp_path, _patched(test2_bytes, 12, "I", 4098))  # Data_offset_2
    with pytest.raises(FormatError, match="offsets do not fit") as error:
        file_reader(path)
    assert error.value.offset == 8


def test_zero_pattern_size(tmp_path: Path, test2_bytes: bytes) -> None:
    path = _file(tmp_path, _patched(test2_bytes, 20, "H", 0))  # DP_SZ
    with pytest.raises(FormatError, match="DP_SZ is 0") as error:
        file_reader(path)
    assert error.value.offset == 20


def test_every_error_is_a_value_error_as_in_the_reference(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a blockfile"):
        file_reader(_file(tmp_path, b"garbage" * 100))
    assert issubclass(TruncatedError, StemcastError)
