"""Bad Merlin input is refused with a stemcast.errors exception naming where and what.

Every bad file is built from a valid acquisition written by ``write_mib`` and corrupted by
hand, using only the byte layout of the format specification (shared/specs/mib.md): records
of ``header_size + rows * cols * bytes_per_pixel`` bytes back to back, record ``i`` at byte
``i * record_size``, comma-separated NUL-padded ASCII headers. Each test also checks that the
refused file is left byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stemcast.errors import (
    FormatError,
    ParameterError,
    StemcastError,
    TruncatedError,
    UnsupportedError,
)
from stemcast.readers.mib import MibRun, file_reader, load_mib_data, parse_hdr_file
from stemcast.writers.mib import write_mib

FRAMES, ROWS, COLS = 8, 16, 16
HEADER = 384  # spec 2: single-chip header size
QUAD_HEADER = 768  # spec 2: quad header size
RECORD = HEADER + ROWS * COLS * 2  # spec 1: header + pixels; 12-bit frames are stored as U16
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(
    path: Path,
    error: type[StemcastError],
    call: Callable[[], Any],
    *fragments: str,
    offset: int | None = None,
    parameter: str | None = None,
) -> StemcastError:
    """Check that ``call`` raises ``error`` naming ``path`` and leaves ``path`` unchanged."""
    before = digest(path) if path.is_file() else None

    def load_all() -> None:
        result = call()
        if hasattr(result, "compute"):  # lazy arrays fail when computed
            result.compute()

    with pytest.raises(error) as caught:
        load_all()
    exc = caught.value
    message = str(exc)
    if parameter is None:
        assert str(path) in message
    if offset is not None:
        assert f"byte {offset}" in message
        assert exc.offset == offset
    if parameter is not None:
        assert f"parameter {parameter!r}" in message
        assert exc.parameter == parameter
    for fragment in fragments:
        assert fragment in message
    if before is not None:
        assert digest(path) == before
    return exc


def records_of(path: Path) -> list[bytes]:
    """The records of a valid file, split at multiples of the spec's record size."""
    raw = path.read_bytes()
    assert len(raw) == FRAMES * RECORD
    return [raw[index * RECORD : (index + 1) * RECORD] for index in range(FRAMES)]


def edit_field(header: bytes, index: int, value: bytes) -> bytes:
    """Replace one comma-separated header field (spec 2.1 numbering), keep the NUL padding."""
    fields = header.rstrip(b"\x00").split(b",")  # the last element is empty: trailing comma
    fields[index] = value
    text = b",".join(fields)
    assert len(text) <= len(header)
    return text.ljust(len(header), b"\x00")


def with_header_size(record: bytes, size: int) -> bytes:
    """The record with its header re-announced and re-padded to ``size`` bytes."""
    header = edit_field(record[:HEADER], 2, f"{size:05d}".encode())
    return header.rstrip(b"\x00").ljust(size, b"\x00") + record[HEADER:]


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A valid 8-frame, 16 x 16, 12-bit acquisition (``scan.mib`` + ``scan.hdr``)."""
    frames = (np.arange(FRAMES * ROWS * COLS) % 4096).astype(np.uint16)
    path = write_mib(tmp_path / "scan.mib", frames.reshape(FRAMES, ROWS, COLS), counter_depth=12)
    assert path.stat().st_size == FRAMES * RECORD
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Callable[[bytes], Path]:
    """Write corrupted content to ``bad.mib`` (no ``.hdr``) and return its path."""

    def write(content: bytes) -> Path:
        path = tmp_path / "bad.mib"
        path.write_bytes(content)
        return path

    return write


def _eager(path: Path) -> Any:
    return load_mib_data(path)


def _lazy(path: Path) -> Any:
    return load_mib_data(path, lazy=True, return_mmap=False)


def _eager_array(path: Path) -> Any:
    return load_mib_data(path, return_mmap=False)


def _reader(path: Path) -> Any:
    return file_reader(path)


def _lazy_reader(path: Path) -> Any:
    return file_reader(path, lazy=True)[0]["data"]


OPENERS = pytest.mark.parametrize(
    "opener",
    [_eager, _lazy, _eager_array, _reader, _lazy_reader, MibRun.open],
    ids=["load", "load-lazy", "load-array", "reader", "reader-lazy", "run"],
)


# -- not a Merlin file -----------------------------------------------------------------------


@OPENERS
@pytest.mark.parametrize(
    "content",
    [
        PNG_SIGNATURE + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 8,
        b"Just some notes, renamed to .mib by mistake.\n" * 200,
        b"MQ",  # shorter than the magic
    ],
    ids=["png", "text", "two-bytes"],
)
def test_not_a_mib_file_is_refused_at_byte_0(bad, opener, content):
    path = bad(content)
    refused(path, FormatError, lambda: opener(path), "MQ1", offset=0)


@OPENERS
def test_empty_file_is_refused(bad, opener):
    path = bad(b"")
    refused(path, FormatError, lambda: opener(path), "empty", offset=0)


@OPENERS
@pytest.mark.parametrize("length", [4, 10, 15, 16, 200, HEADER - 1])
def test_file_shorter_than_one_header_is_truncated(good, bad, opener, length):
    path = bad(good.read_bytes()[:length])
    error = refused(path, TruncatedError, lambda: opener(path), offset=0)
    assert str(length) in str(error)  # how many bytes were found


def test_header_cut_mid_way_names_the_announced_size(good, bad):
    path = bad(good.read_bytes()[:200])
    refused(path, TruncatedError, lambda: load_mib_data(path), str(HEADER), "200", offset=0)


# -- garbled header fields -------------------------------------------------------------------

GARBLED = pytest.mark.parametrize(
    ("index", "value", "fragments"),
    [
        (1, b"00000X", ("sequence", "'00000X'")),
        (2, b"003-4", ("'003-4'",)),
        (4, b"WIDE", ("width", "'WIDE'")),
        (4, b"0000", ("0 x",)),  # an empty frame
        (5, b"", ("height", "''")),
        (6, b"U12", ("pixel type", "'U12'")),
        (8, b"ZZ", ("chip select", "'ZZ'")),
        (14, b"4.0E+1keV", ("threshold", "'4.0E+1keV'")),
        (-2, b"13", ("counter depth", "13")),  # spec 2.1: [-2] is the MQ1A counter depth
        (-2, b"six", ("counter depth", "'six'")),
        (-3, b"1000000", ("'1000000'", "'ns'")),  # spec 2.1: [-3] is the exposure in ns
        (-3, b"1.5ms", ("'1.5ms'", "'ns'")),
        (-3, b"fastns", ("shutter", "'fast'")),
    ],
    ids=[
        "sequence",
        "header-size",
        "width",
        "zero-width",
        "empty-height",
        "pixel-type",
        "chip-select",
        "threshold",
        "counter-depth",
        "counter-depth-text",
        "no-ns-suffix",
        "ms-suffix",
        "ns-not-a-number",
    ],
)


@GARBLED
@pytest.mark.parametrize("opener", [_eager, _lazy, _reader], ids=["load", "lazy", "reader"])
def test_garbled_first_header_field_is_refused(good, bad, opener, index, value, fragments):
    raw = good.read_bytes()
    path = bad(edit_field(raw[:HEADER], index, value) + raw[HEADER:])
    refused(path, FormatError, lambda: opener(path), *fragments, offset=0)


def test_header_without_enough_fields_is_refused(good, bad):
    raw = good.read_bytes()
    header = b",".join(raw[:HEADER].split(b",")[:10]) + b","  # fields 0..9 only
    path = bad(header.ljust(HEADER, b"\x00") + raw[HEADER:])
    refused(path, FormatError, lambda: load_mib_data(path), "fields", offset=0)


def test_extended_block_cut_short_is_refused(good, bad):
    raw = good.read_bytes()
    text = raw[:HEADER].rstrip(b"\x00")
    header = text[: text.index(b"MQ1A") + len(b"MQ1A,")]  # MQ1A without its three fields
    path = bad(header.ljust(HEADER, b"\x00") + raw[HEADER:])
    refused(path, FormatError, lambda: load_mib_data(path), "MQ1A", offset=0)


# -- header size changing mid-file -----------------------------------------------------------


@OPENERS
def test_last_record_with_another_header_size_is_refused_on_open(good, bad, opener):
    # Seven 384-byte-header records, then one whose header takes 768 bytes: the file holds
    # 8 complete records of the first record's size, the last one starting at 7 * RECORD.
    records = records_of(good)
    path = bad(b"".join(records[:7]) + with_header_size(records[7], QUAD_HEADER))
    offset = 7 * RECORD
    refused(path, FormatError, lambda: opener(path), str(QUAD_HEADER), str(HEADER), offset=offset)


def test_opening_detects_the_shift_of_later_records(good, bad):
    # From record 3 on every header takes 768 bytes: the records after it are shifted, so the
    # last complete record (by the first record's size) does not start with a header.
    records = records_of(good)
    content = b"".join(records[:3]) + b"".join(
        with_header_size(record, QUAD_HEADER) for record in records[3:]
    )
    path = bad(content)
    last = (len(content) // RECORD - 1) * RECORD
    refused(path, FormatError, lambda: load_mib_data(path, lazy=True), offset=last)


CHUNKS = pytest.mark.parametrize(
    "chunks", ["auto", (1, ROWS, COLS), (2, ROWS, COLS), (3, ROWS, COLS), (8, ROWS, 4)]
)


@CHUNKS
def test_header_size_change_in_the_middle_is_found_when_reading(good, bad, chunks):
    # Record 3 announces a 768-byte header (the record itself keeps its length, so the last
    # record still looks right and only reading the middle of the file finds it).
    records = records_of(good)
    records[3] = edit_field(records[3][:HEADER], 2, b"00768") + records[3][HEADER:]
    path = bad(b"".join(records))
    refused(
        path,
        FormatError,
        lambda: load_mib_data(path, lazy=True, chunks=chunks, return_mmap=False),
        "record 3",
        "00768",
        offset=3 * RECORD,
    )


# -- corrupt record in the middle ------------------------------------------------------------


def _garbage(size: int) -> bytes:
    garbage = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert not garbage.startswith(b"MQ1,")
    return garbage


def _corrupt(good: Path, bad: Callable[[bytes], Path], index: int) -> Path:
    records = records_of(good)
    records[index] = _garbage(HEADER) + records[index][HEADER:]
    return bad(b"".join(records))


@CHUNKS
@pytest.mark.parametrize("index", [1, 4, 6])
def test_corrupt_record_is_found_lazily_at_its_offset(good, bad, chunks, index):
    path = _corrupt(good, bad, index)
    refused(
        path,
        FormatError,
        lambda: load_mib_data(path, lazy=True, chunks=chunks, return_mmap=False),
        f"record {index}",
        offset=index * RECORD,
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda path: load_mib_data(path, return_mmap=False),
        lambda path: load_mib_data(path, return_mmap=False, navigation_shape=(4, 2)),
        lambda path: load_mib_data(path, return_mmap=False, first_frame=2, last_frame=7),
        lambda path: file_reader(path, lazy=True)[0]["data"],
        lambda path: file_reader(path, lazy=True, navigation_shape=(4, 2))[0]["data"],
        lambda path: file_reader(path),  # reads the headers for the scan-shape timestamps
    ],
    ids=["array", "array-2d", "array-range", "reader-lazy", "reader-lazy-2d", "reader"],
)
def test_corrupt_record_is_found_when_loading(good, bad, call):
    path = _corrupt(good, bad, 5)
    refused(path, FormatError, lambda: call(path), "record 5", offset=5 * RECORD)


def test_corrupt_last_record_is_found_on_open(good, bad):
    path = _corrupt(good, bad, FRAMES - 1)
    refused(path, FormatError, lambda: load_mib_data(path), offset=(FRAMES - 1) * RECORD)


def test_corrupt_record_in_a_memory_buffer_names_its_offset(good):
    records = records_of(good)
    records[5] = _garbage(HEADER) + records[5][HEADER:]
    with pytest.raises(FormatError) as caught:
        load_mib_data(b"".join(records))
    assert "<memory buffer>" in str(caught.value)
    assert caught.value.offset == 5 * RECORD


# -- parameters ------------------------------------------------------------------------------

LOADERS = pytest.mark.parametrize(
    "load",
    [
        lambda path, **kw: load_mib_data(path, **kw),
        lambda path, **kw: load_mib_data(path, return_mmap=False, **kw),
        lambda path, **kw: load_mib_data(path, lazy=True, return_mmap=False, **kw),
        lambda path, **kw: file_reader(path, **kw),
        lambda path, **kw: file_reader(path, lazy=True, **kw),
    ],
    ids=["load", "load-array", "load-lazy", "reader", "reader-lazy"],
)


@LOADERS
@pytest.mark.parametrize(
    "shape",
    [(0, 8), (8, 0), (-1, 8), (4, -2), (), "ab", "42", b"42", ("a", 2), (2.5, 4), (4.0, 2), 8],
)
def test_bad_navigation_shape_is_refused(good, load, shape):
    refused(
        good,
        ParameterError,
        lambda: load(good, navigation_shape=shape),
        parameter="navigation_shape",
    )


@LOADERS
@pytest.mark.parametrize("shape", [(9, 1), (16, 2), (FRAMES + 1, 3)])
def test_navigation_line_longer_than_the_file_is_refused(good, load, shape):
    error = refused(
        good,
        ParameterError,
        lambda: load(good, navigation_shape=shape),
        parameter="navigation_shape",
    )
    assert str(shape[0]) in str(error)
    assert str(FRAMES) in str(error)


@LOADERS
@pytest.mark.parametrize(
    ("first_frame", "last_frame", "parameter"),
    [
        (FRAMES, None, "first_frame"),
        (FRAMES + 5, None, "first_frame"),
        (10**9, 10**9 + 1, "first_frame"),
        (5, 3, "last_frame"),
        (4, 4, "last_frame"),
        (None, -FRAMES, "last_frame"),
        (None, 0, "last_frame"),
        ("1", None, "first_frame"),
        (1.0, None, "first_frame"),
        (None, 2.5, "last_frame"),
    ],
)
def test_frame_range_beyond_the_data_is_refused(good, load, first_frame, last_frame, parameter):
    error = refused(
        good,
        ParameterError,
        lambda: load(good, first_frame=first_frame, last_frame=last_frame),
        parameter=parameter,
    )
    if isinstance(first_frame, int | None) and isinstance(last_frame, int | None):
        assert str(good) in str(error)  # an empty selection names the file and its frames
        assert str(FRAMES) in str(error)


@pytest.mark.parametrize("mode", ["x", "w", "R", "rw", "readonly", "", 3])
@pytest.mark.parametrize("lazy", [False, True])
def test_invalid_mmap_mode_is_refused(good, mode, lazy):
    for call in (
        lambda: load_mib_data(good, mmap_mode=mode, lazy=lazy),
        lambda: file_reader(good, mmap_mode=mode, lazy=lazy),
    ):
        refused(good, ParameterError, call, repr(mode), parameter="mmap_mode")


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("return_mmap", [False, True])
def test_write_mode_is_refused_and_the_file_is_untouched(good, lazy, return_mmap):
    size = good.stat().st_size
    for call in (
        lambda: load_mib_data(good, mmap_mode="w+", lazy=lazy, return_mmap=return_mmap),
        lambda: file_reader(good, mmap_mode="w+", lazy=lazy),
    ):
        refused(good, ParameterError, call, "w+", "overwrite", parameter="mmap_mode")
    assert good.stat().st_size == size


def test_lazy_loading_of_a_memory_buffer_is_refused(good):
    before = digest(good)
    with pytest.raises(ParameterError) as caught:
        load_mib_data(good.read_bytes(), lazy=True)
    assert caught.value.parameter == "lazy"
    assert "parameter 'lazy'" in str(caught.value)
    assert "buffer" in str(caught.value)
    assert digest(good) == before


@pytest.mark.parametrize("lazy", [False, True])
def test_headers_need_a_memory_map(good, lazy):
    refused(
        good,
        ParameterError,
        lambda: load_mib_data(good, lazy=lazy, return_headers=True, return_mmap=False),
        "return_mmap",
        parameter="return_headers",
    )


# -- missing files, RAW without MQ1A, foreign .hdr -------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        load_mib_data,
        file_reader,
        MibRun.open,
        parse_hdr_file,
        lambda path: file_reader(path, lazy=True),
    ],
    ids=["load", "reader", "run", "hdr", "reader-lazy"],
)
@pytest.mark.parametrize("name", ["missing.mib", "missing.hdr", "no-dir/scan.mib"])
def test_missing_file_is_refused(tmp_path, call, name):
    path = tmp_path / name
    refused(path, FormatError, lambda: call(path), "no such file")
    assert not path.exists()


def test_directory_is_not_a_mib_file(tmp_path):
    folder = tmp_path / "folder.mib"
    folder.mkdir()
    refused(folder, FormatError, lambda: load_mib_data(folder))


@pytest.mark.parametrize("opener", [_eager, _lazy, _reader, MibRun.open])
def test_raw_without_mq1a_block_is_unsupported(tmp_path, bad, opener):
    # Spec 5.1: the RAW counter depth is only in the MQ1A block; without it RAW is undecodable.
    frames = (np.arange(3 * 4 * 256) % 2).astype(np.uint8).reshape(3, 4, 256)
    written = write_mib(tmp_path / "raw.mib", frames, counter_depth=1, raw=True)
    record = HEADER + 4 * 256 // 8  # spec 5.1: 1 bit per pixel
    raw = written.read_bytes()
    assert len(raw) == 3 * record
    content = b""
    for index in range(3):
        header = raw[index * record : index * record + HEADER]
        assert b",R64," in header
        stripped = header[: header.index(b"MQ1A,")]
        content += (
            stripped.ljust(HEADER, b"\x00") + raw[index * record + HEADER : (index + 1) * record]
        )
    path = bad(content)
    refused(path, UnsupportedError, lambda: opener(path), "RAW", "MQ1A", offset=0)


@pytest.mark.parametrize(
    "content",
    [
        PNG_SIGNATURE + bytes(range(256)),
        b"Frames in Acquisition (Number):\t8\r\n",  # no HDR line
        b"",
    ],
    ids=["png", "no-hdr-line", "empty"],
)
def test_foreign_hdr_file_is_refused(good, content):
    hdr = good.with_suffix(".hdr")
    hdr.write_bytes(content)
    refused(hdr, FormatError, lambda: parse_hdr_file(hdr), "HDR")
    # file_reader picks the .hdr up next to the .mib and names it, not the .mib.
    mib_before = digest(good)
    refused(hdr, FormatError, lambda: file_reader(good), "HDR")
    assert digest(good) == mib_before


def test_mib_file_is_not_a_hdr_file(good):
    refused(good, FormatError, lambda: parse_hdr_file(good), "HDR")
