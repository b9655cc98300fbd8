"""Hypothesis strategies for Merlin frame headers and ``.hdr`` entries.

Ranges and formats come from the format specification (shared/specs/mib.md, section 2.1 for
frame headers, section 6.1 for ``.hdr`` files), not from the code under test. Every value is
chosen so that its textual form is canonical: formatting it with the field's notation and
parsing it back gives the same value.
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import strategies as st

from stemcast.formats.mib.spec import FrameHeader

#: Field 6 values listed by the spec (processed types, LiberTEM-rs extras, RAW).
SPEC_PIXEL_TYPES = ("U01", "U08", "U16", "U32", "U64", "R64")
#: Field 7 values listed by the spec.
SPEC_LAYOUTS = ("1x1", "2x2", "2x2G", "Nx1", "Nx1G")
#: MQ1A counter depths listed by the spec.
SPEC_COUNTER_DEPTHS = (1, 6, 12, 24)
#: DAC values per chip after the chip-type token (spec: 27 three-digit values).
DACS_PER_CHIP = 27

_TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31))


def local_times() -> st.SearchStrategy[str]:
    """Field 9: ``YYYY-MM-DD HH:MM:SS.ffffff`` (local time, microseconds)."""
    return _TIMES.map(lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S.%f"))


def utc_times() -> st.SearchStrategy[str]:
    """MQ1A timestamp: ISO 8601, nanoseconds, trailing ``Z``."""
    return st.builds(
        lambda moment, nanoseconds: f"{moment:%Y-%m-%dT%H:%M:%S}.{nanoseconds:09d}Z",
        _TIMES,
        st.integers(0, 999_999_999),
    )


def shutter_seconds() -> st.SearchStrategy[float]:
    """Field 10: seconds with 6 decimals (a whole number of microseconds below 1000 s)."""
    return st.integers(0, 999_999_999).map(lambda microseconds: microseconds / 1e6)


def thresholds() -> st.SearchStrategy[float]:
    """Fields 14..21: keV in ``%E`` notation (7 significant digits), exact in that notation."""
    nonzero = st.builds(
        lambda lead, fraction, exponent: float(f"{lead}.{fraction:06d}E{exponent:+03d}"),
        st.integers(1, 9),
        st.integers(0, 999_999),
        st.integers(-9, 9),
    )
    return st.one_of(st.just(0.0), nonzero)


def dac_block() -> st.SearchStrategy[tuple[str, ...]]:
    """One chip's DAC block: the chip-type token then 27 three-digit values."""
    # One draw of 2 bytes per value is much faster than 27 integer draws.
    return st.binary(min_size=2 * DACS_PER_CHIP, max_size=2 * DACS_PER_CHIP).map(
        lambda raw: (
            "3RX",
            *(f"{int.from_bytes(raw[i : i + 2], 'big') % 1000:03d}" for i in range(0, len(raw), 2)),
        )
    )


@st.composite
def frame_headers(draw: st.DrawFn, extended: bool | None = None) -> FrameHeader:
    """Valid frame headers: one chip in 384 bytes, up to four chips in 768 bytes.

    Parameters
    ----------
    extended
        Whether the MQ1A block is present; drawn when ``None``.
    """
    chips = draw(st.integers(1, 4))
    # 384 bytes for a single chip, 768 for a quad (spec 2); larger sizes are legal too.
    header_size = (384 if chips == 1 else 768) + draw(st.sampled_from([0, 0, 0, 1, 1000]))
    with_dacs = draw(st.booleans())
    dacs: tuple[str, ...] = ()
    if with_dacs:
        for _ in range(chips):
            dacs += draw(dac_block())
    if extended is None:
        extended = draw(st.booleans())
    return FrameHeader(
        sequence_number=draw(st.integers(1, 999_999)),
        header_size=header_size,
        chip_count=chips,
        width=draw(st.integers(1, 9999)),
        height=draw(st.integers(1, 9999)),
        pixel_type=draw(st.sampled_from(SPEC_PIXEL_TYPES)),
        layout=draw(st.sampled_from(SPEC_LAYOUTS)),
        chip_select=draw(st.integers(0, 0xFF)),
        local_time=draw(local_times()),
        shutter_s=draw(shutter_seconds()),
        counter=draw(st.integers(0, 1)),
        colour_mode=draw(st.integers(0, 1)),
        gain_mode=draw(st.integers(0, 3)),
        thresholds_kev=tuple(draw(st.lists(thresholds(), min_size=8, max_size=8))),
        dacs=dacs,
        utc_time=draw(utc_times()) if extended else None,
        shutter_ns=draw(st.integers(0, 10**12)) if extended else None,
        counter_depth=draw(st.sampled_from(SPEC_COUNTER_DEPTHS)) if extended else None,
    )


#: Latin-1 text without control characters or line/paragraph separators (spec 6.1: one entry
#: per CR LF terminated line, key and value separated by a TAB).
_HDR_CHARACTERS = st.characters(
    min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=("Cc", "Cs", "Zl", "Zp")
)


def hdr_keys() -> st.SearchStrategy[str]:
    """``.hdr`` keys the spec's parse rule gives back unchanged.

    Lines starting with ``HDR`` are skipped by the rule, and the colon after the key is
    stripped, so keys neither start with ``HDR`` nor end with a colon (or with blanks, which
    stemcast trims as LiberTEM-rs does).
    """
    return st.text(_HDR_CHARACTERS, max_size=40).filter(
        lambda key: not key.startswith("HDR") and not key.endswith(":") and key == key.rstrip()
    )


def hdr_values() -> st.SearchStrategy[str]:
    """``.hdr`` values: any single-line Latin-1 text, leading and trailing blanks included."""
    return st.text(_HDR_CHARACTERS, max_size=60)


def hdr_entries() -> st.SearchStrategy[dict[str, str]]:
    """Whole ``.hdr`` contents as ``{key: value}``."""
    return st.dictionaries(hdr_keys(), hdr_values(), max_size=30)
