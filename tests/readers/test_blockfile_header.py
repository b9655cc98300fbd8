"""The pure blockfile header code, checked against the byte layout of the format specification.

Offsets, sizes and example values come from shared/specs/blockfile.md (section 2, the table;
section 2 "Serial date conversion"; section 4 "Data_offset_2 value"), not from the code.
"""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import shared_file
from stemcast.errors import FormatError, ParameterError, StemcastError, TruncatedError
from stemcast.formats.blockfile.spec import (
    CENTERING_FIELDS,
    DISTORTION_FIELDS,
    FIELD_NAMES,
    HEADER_DTYPE,
    data_offset,
    datetime_to_serial,
    format_header,
    header_dtype,
    note_bit_depth,
    parse_header,
    serial_to_datetime,
    without_bit_depth,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: The spec's table: name, offset, struct code (little-endian).
SPEC_TABLE = [
    ("ID", 0, "6s"),
    ("MAGIC", 6, "H"),
    ("Data_offset_1", 8, "I"),
    ("Data_offset_2", 12, "I"),
    ("UNKNOWN1", 16, "I"),
    ("DP_SZ", 20, "H"),
    ("DP_rotation", 22, "H"),
    ("NX", 24, "H"),
    ("NY", 26, "H"),
    ("Scan_rotation", 28, "H"),
    ("SX", 30, "d"),
    ("SY", 38, "d"),
    ("Beam_energy", 46, "I"),
    ("SDP", 50, "H"),
    ("Camera_length", 52, "I"),
    ("Acquisition_time", 56, "d"),
    *[(f"Centering_N{index}", 64 + 8 * index, "d") for index in range(8)],
    *[(f"Distortion_N{index:02d}", 128 + 8 * index, "d") for index in range(14)],
]


def test_header_dtype_has_the_spec_offsets_and_240_bytes() -> None:
    assert HEADER_DTYPE.itemsize == 240
    assert list(FIELD_NAMES) == [name for name, _, _ in SPEC_TABLE]
    for name, offset, code in SPEC_TABLE:
        field_dtype, field_offset = HEADER_DTYPE.fields[name][:2]
        assert field_offset == offset, name
        assert field_dtype.itemsize == struct.calcsize("<" + code), name


def test_big_endian_header_keeps_centering_and_distortion_little_endian() -> None:
    dtype = header_dtype(">")
    assert dtype.itemsize == 240
    assert dtype.fields["NX"][0].byteorder == ">"
    assert dtype.fields["SX"][0].byteorder == ">"
    for name in CENTERING_FIELDS + DISTORTION_FIELDS:
        assert dtype.fields[name][0].str == "<f8", name


def test_parse_test2_matches_the_bytes_read_with_struct() -> None:
    raw = shared_file("blockfile", "test2.blo").read_bytes()
    header = parse_header(raw)
    for name, offset, code in SPEC_TABLE:
        (expected,) = struct.unpack_from("<" + code, raw, offset)
        assert header.fields[name] == expected, name
    assert header.note == "Precession angle : \r\nPrecession Frequency : \r\nCamera gamma : on"
    assert (header.nx, header.ny, header.frame_size) == (3, 2, 5)
    assert (header.vbf_offset, header.data_offset) == (4096, 4108)
    assert header.file_size == len(raw) == 4294
    assert header.byte_order == "<"
    assert header.bit_depth == 8


@pytest.mark.parametrize(
    ("frames", "expected"),
    [(6, 4112), (1, 4112), (16, 4112), (17, 4128), (64 * 60, 4096 + 3840)],
)
def test_data_offset_rounds_up_to_16_bytes_like_astar(frames: int, expected: int) -> None:
    assert data_offset(frames) == expected
    assert data_offset(frames) % 16 == 0


@pytest.mark.parametrize(
    ("serial", "moment"),
    [
        (42339.653470046294, datetime(2015, 12, 1, 15, 40, 59, 812000, tzinfo=UTC)),
        (42339.654974861114, datetime(2015, 12, 1, 15, 43, 9, 828000, tzinfo=UTC)),
        (25570.0, datetime(1970, 1, 2, tzinfo=UTC)),
    ],
)
def test_serial_dates_of_the_spec(serial: float, moment: datetime) -> None:
    assert serial_to_datetime(serial) == moment
    assert datetime_to_serial(moment) == pytest.approx(serial, abs=1e-9)
    assert datetime_to_serial(moment.replace(tzinfo=None)) == pytest.approx(serial, abs=1e-9)


def test_note_bit_depth_line() -> None:
    note = "Precession angle : \r\nBlo Bit Depth: 16 bits\r\nCamera gamma : on"
    assert note_bit_depth(note) == 16
    assert note_bit_depth("Camera gamma : on") == 8
    assert without_bit_depth(note) == "Precession angle : \r\nCamera gamma : on"


def _fields(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = dict.fromkeys(FIELD_NAMES, 0)
    fields.update(
        ID=b"IMGBLO", MAGIC=0x0102, Data_offset_1=4096, Data_offset_2=4112, NX=3, NY=2, DP_SZ=5
    )
    fields.update(overrides)
    return fields


def test_format_header_pads_the_note_to_data_offset_1() -> None:
    raw = format_header(_fields(), "a : b\r\nc : é")
    assert len(raw) == 4096
    text = "a : b\r\nc : é".encode("latin-1")
    assert raw[240 : 240 + len(text)] == text
    assert set(raw[240 + len(text) :]) == {0}
    assert parse_header(raw).note == "a : b\r\nc : é"


def test_format_header_refuses_values_a_field_cannot_hold() -> None:
    with pytest.raises(ParameterError, match="NX"):
        format_header(_fields(NX=70000), "")
    with pytest.raises(ParameterError, match="Beam_energy"):
        format_header(_fields(Beam_energy=-1), "")
    with pytest.raises(ParameterError, match="Camera_length"):
        format_header(_fields(Camera_length=2.5), "")


_U16 = st.integers(0, 2**16 - 1)
_U32 = st.integers(0, 2**32 - 1)
_F64 = st.floats(allow_nan=False)


@st.composite
def headers(draw: st.DrawFn) -> tuple[dict[str, object], str]:
    nx, ny = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    vbf = draw(st.sampled_from([4096, 240, 8192]))
    fields = _fields(
        MAGIC=draw(st.sampled_from([0x0102, 0x0103])),
        Data_offset_1=vbf,
        Data_offset_2=vbf + nx * ny + draw(st.integers(0, 64)),
        UNKNOWN1=draw(_U32),
        DP_SZ=draw(st.integers(1, 2**16 - 1)),
        DP_rotation=draw(_U16),
        NX=nx,
        NY=ny,
        Scan_rotation=draw(_U16),
        SX=draw(_F64),
        SY=draw(_F64),
        Beam_energy=draw(_U32),
        SDP=draw(_U16),
        Camera_length=draw(_U32),
        Acquisition_time=draw(_F64),
        **{name: draw(_F64) for name in CENTERING_FIELDS + DISTORTION_FIELDS},
    )
    alphabet = st.characters(min_codepoint=1, max_codepoint=255, exclude_characters="\x00")
    note = draw(st.text(alphabet, max_size=vbf - 240)).strip()
    if note_bit_depth(note) not in (8, 16):
        note = ""
    return fields, note


@FUZZ
@given(headers(), st.sampled_from("<>"))
def test_format_then_parse_gives_the_fields_back(
    header: tuple[dict[str, object], str], endianess: str
) -> None:
    fields, note = header
    parsed = parse_header(format_header(fields, note, endianess=endianess), endianess=endianess)
    assert dict(parsed.fields) == fields
    assert parsed.note == note
    assert parsed.byte_order == endianess


@FUZZ
@given(headers())
def test_a_little_endian_header_is_found_when_big_endian_is_asked(
    header: tuple[dict[str, object], str],
) -> None:
    fields, note = header
    assert parse_header(format_header(fields, note), endianess=">").byte_order == "<"


@pytest.mark.filterwarnings("ignore:.*unrecognised blockfile signature")
@FUZZ
@given(st.binary(max_size=300))
@example(b"")
@example(b"IMG")
@example(b"IMGBLO")
@example(b"IMGBLO" + bytes(234))
def test_random_bytes_only_raise_stemcast_errors(raw: bytes) -> None:
    with contextlib.suppress(StemcastError):
        parse_header(raw, path="fuzz.blo")


@pytest.mark.filterwarnings("ignore:.*unrecognised blockfile signature")
@FUZZ
@given(st.binary(min_size=1, max_size=300))
def test_errors_on_random_bytes_name_the_file(raw: bytes) -> None:
    with pytest.raises(StemcastError, match=r"^fuzz\.blo, byte 0: "):
        parse_header(b"X" + raw, path="fuzz.blo")


@FUZZ
@given(headers(), st.integers(0, 239))
def test_a_cut_header_is_truncated(header: tuple[dict[str, object], str], length: int) -> None:
    raw = format_header(*header)
    expected = FormatError if length == 0 else TruncatedError
    with pytest.raises(expected):
        parse_header(raw[:length])


@FUZZ
@given(headers(), st.binary(min_size=1, max_size=6))
def test_a_wrong_magic_text_is_a_format_error(
    header: tuple[dict[str, object], str], text: bytes
) -> None:
    raw = format_header(*header)
    bad = (text + raw[len(text) : 6]) if text != raw[: len(text)] else b"X" + raw[1:6]
    with pytest.raises(FormatError, match="not a blockfile"):
        parse_header(bad + raw[6:])


def test_an_unknown_signature_warns_and_reads() -> None:
    raw = format_header(_fields(MAGIC=0x0201 + 0x4000), "")
    with pytest.warns(UserWarning, match="unrecognised blockfile signature"):
        header = parse_header(raw, path="odd.blo")
    assert header.nx == 3


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"NX": 0}, "NX is 0"),
        ({"NY": 0}, "NY is 0"),
        ({"DP_SZ": 0}, "DP_SZ is 0"),
        ({"Data_offset_1": 100}, "offsets do not fit"),
        ({"Data_offset_2": 4100}, "offsets do not fit"),
    ],
)
def test_sizes_that_do_not_fit_are_format_errors(overrides: dict[str, int], problem: str) -> None:
    record = np.zeros((), HEADER_DTYPE)
    for name, value in _fields(**overrides).items():
        record[name] = value
    with pytest.raises(FormatError, match=problem):
        parse_header(record.tobytes() + bytes(4096), path="bad.blo")
