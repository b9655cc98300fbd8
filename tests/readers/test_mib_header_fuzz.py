"""Fuzzing of the pure Merlin header parsers: bad bytes only ever raise FormatError.

Round trips use headers generated within the ranges of the format specification
(tests/strategies.py); nothing expected is taken from the parser itself.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stemcast.errors import FormatError, TruncatedError
from stemcast.formats.mib.spec import (
    FrameHeader,
    format_frame_header,
    format_hdr_text,
    parse_frame_header,
    parse_hdr_text,
    parse_header_size,
)
from strategies import frame_headers, hdr_entries

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Generating a whole header costs a few milliseconds: fewer examples keep the file fast.
HEADER_FUZZ = settings(FUZZ, max_examples=200)
PATH = "fuzz.mib"

#: A real single-chip header as printed in the spec (section 2.1), NUL-padded to 384 bytes.
SPEC_HEADER = (
    (
        "MQ1,000001,00384,01,0256,0256,U08,   1x1,01,2021-05-07 18:51:10.905800,0.100000,0,0,0,"
        "4.000000E+1,5.110000E+2,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,"
        "0.000000E+0,3RX,068,511,000," + ",".join(["100"] * 24) + ",MQ1A,"
        "2021-05-07T16:51:10.905800928Z,100000000ns,6,"
    )
    .encode("latin-1")
    .ljust(384, b"\x00")
)


def _parse_or_format_error(raw: bytes, offset: int = 0) -> FrameHeader | None:
    """Parse ``raw``; a refusal must be a FormatError naming the source and the offset."""
    try:
        return parse_frame_header(raw, path=PATH, offset=offset)
    except FormatError as error:
        message = str(error)
    assert f"{PATH}, byte {offset}" in message
    return None


def test_spec_example_header_parses_to_its_documented_fields():
    assert len(SPEC_HEADER.split(b",")) == 55  # spec 2.1: 55 split elements for one chip
    header = parse_frame_header(SPEC_HEADER)
    assert (header.sequence_number, header.header_size, header.chip_count) == (1, 384, 1)
    assert (header.width, header.height, header.pixel_type, header.layout) == (
        256,
        256,
        "U08",
        "1x1",
    )
    assert header.chip_select == 0x01
    assert header.shutter_s == pytest.approx(0.1)
    assert header.thresholds_kev[:2] == (40.0, 511.0)
    assert header.utc_time == "2021-05-07T16:51:10.905800928Z"
    assert header.shutter_ns == 100_000_000
    assert header.exposure_ms == pytest.approx(100.0)
    assert header.counter_depth == 6


# -- (a) arbitrary bytes ----------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=1200), offset=st.integers(0, 2**40))
@example(raw=b"", offset=0)
@example(raw=b"MQ1,", offset=0)
@example(raw=b"MQ1,000001,-0001,", offset=7)
@example(raw=b"MQ1,000001,00016" + b"\x00" * 8, offset=0)
def test_arbitrary_bytes_raise_only_format_error(raw, offset):
    _parse_or_format_error(raw, offset)
    try:
        size = parse_header_size(raw, path=PATH, offset=offset)
    except FormatError as error:
        size, message = None, str(error)
    if size is None:
        assert f"{PATH}, byte {offset}" in message
    else:
        assert size >= 16  # the size field comes after 16 bytes of fixed-width prefix


@FUZZ
@given(tail=st.binary(max_size=800), size=st.integers(0, 99999))
def test_arbitrary_bytes_after_a_valid_prefix_raise_only_format_error(tail, size):
    _parse_or_format_error(f"MQ1,000001,{size:05d},".encode() + tail)


_FIELD_TEXT = st.text(st.characters(max_codepoint=0xFF, exclude_characters=","), max_size=12)


@FUZZ
@given(fields=st.lists(_FIELD_TEXT, max_size=70), size=st.sampled_from([384, 768, 2000]))
def test_arbitrary_fields_raise_only_format_error(fields, size):
    text = f"MQ1,000001,{size:05d}," + ",".join(fields) + ","
    _parse_or_format_error(text.encode("latin-1").ljust(size, b"\x00"))


@FUZZ
@given(
    fields=st.lists(
        st.sampled_from(["MQ1A", "0", "01", "0256", "U16", "R64", "1x1", "", " ", "6", "7ns"]),
        min_size=20,
        max_size=60,
    )
)
def test_plausible_field_soup_raises_only_format_error(fields):
    text = "MQ1,000001,00768," + ",".join(fields) + ","
    _parse_or_format_error(text.encode("latin-1").ljust(768, b"\x00"))


# -- (b) mutations of a valid header ---------------------------------------------------------


@HEADER_FUZZ
@given(header=frame_headers(), data=st.data())
def test_byte_flips_raise_only_format_error(header, data):
    raw = bytearray(format_frame_header(header))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        position = data.draw(st.integers(0, len(raw) - 1), label="position")
        raw[position] = data.draw(st.integers(0, 255), label="value")
    _parse_or_format_error(bytes(raw))


@HEADER_FUZZ
@given(header=frame_headers(), data=st.data())
def test_truncation_anywhere_is_refused(header, data):
    raw = format_frame_header(header)
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    with pytest.raises(FormatError) as caught:
        parse_frame_header(raw[:cut], path=PATH, offset=cut)
    assert f"{PATH}, byte {cut}" in str(caught.value)
    if cut >= 4:  # "MQ1," is complete: the header itself ends too early
        assert isinstance(caught.value, TruncatedError)


@HEADER_FUZZ
@given(
    header=frame_headers(),
    insert=st.sampled_from([b",", b"\x00", b",,", b"\x00,", b"MQ1A,", b"\xff"]),
    data=st.data(),
)
def test_inserted_bytes_raise_only_format_error(header, insert, data):
    raw = format_frame_header(header)
    position = data.draw(st.integers(0, len(raw)), label="position")
    mutated = raw[:position] + insert + raw[position:]
    _parse_or_format_error(mutated)
    _parse_or_format_error(mutated[: header.header_size])


@HEADER_FUZZ
@given(header=frame_headers(), data=st.data())
def test_deleted_bytes_raise_only_format_error(header, data):
    raw = format_frame_header(header)
    start = data.draw(st.integers(0, len(raw) - 1), label="start")
    stop = data.draw(st.integers(start + 1, min(len(raw), start + 40)), label="stop")
    _parse_or_format_error(raw[:start] + raw[stop:])


# -- (c) round trip --------------------------------------------------------------------------


@HEADER_FUZZ
@given(header=frame_headers())
def test_format_then_parse_gives_back_the_header(header):
    raw = format_frame_header(header)
    assert len(raw) == header.header_size
    assert raw[:4] == b"MQ1,"
    assert raw.rstrip(b"\x00").endswith(b",")  # the NUL padding starts after a comma
    assert parse_header_size(raw[:18]) == header.header_size
    assert parse_frame_header(raw) == header


@HEADER_FUZZ
@given(header=frame_headers(extended=True), tail=st.binary(max_size=64))
def test_bytes_after_the_header_are_ignored(header, tail):
    # A header read from a file is followed by pixel data.
    assert parse_frame_header(format_frame_header(header) + tail) == header


# -- (d) .hdr text ---------------------------------------------------------------------------


@FUZZ
@given(text=st.text(max_size=600))
@example(text="HDR,\t\r\nEnd\t")
@example(text="no tab here\r\n:\r\n\t\r\nkey:value\n\x85\x0b")
def test_hdr_text_parser_never_raises(text):
    entries = parse_hdr_text(text)
    assert all(isinstance(key, str) and isinstance(value, str) for key, value in entries.items())


@FUZZ
@given(
    lines=st.lists(
        st.sampled_from(["HDR,\t", "End\t", "", "a:\tb", "a\tb", "a:b", "\t", ":", " \t "]),
        max_size=30,
    ),
    terminator=st.sampled_from(["\r\n", "\n", "\r"]),
)
def test_hdr_text_parser_never_raises_on_line_soup(lines, terminator):
    parse_hdr_text(terminator.join(lines))


@FUZZ
@given(entries=hdr_entries())
@example(entries={"End Time": "12:00", "Endpoint": "x"})
@example(entries={"Assembly Size (NX1, 2X2)": "   1x1", "Dead Time File": "Dummy (C:\\<NUL>\\)"})
@example(entries={"Temperature (µC)": "µ, ; : spaces  ", "": ""})
def test_hdr_text_round_trip(entries):
    content = format_hdr_text(entries)
    assert len(content) >= 2048
    text = content.decode("latin-1")
    assert text.startswith("HDR,\t\r\n")
    assert parse_hdr_text(text) == entries


@FUZZ
@given(entries=hdr_entries(), size=st.integers(0, 4096))
def test_hdr_text_round_trip_any_padding(entries, size):
    content = format_hdr_text(entries, size=size)
    assert len(content) == max(size, len(content.rstrip(b" ")))
    assert parse_hdr_text(content.decode("latin-1")) == entries
