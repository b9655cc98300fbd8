"""Deterministic mutations of seed files: bit flips, byte and integer sets, text field edits,
truncations, insertions, deletions and copies.

:func:`mutate` draws everything from a :class:`random.Random` seeded by the input's number, so
input ``n`` of a campaign is the same bytes on every machine and can be rebuilt alone. Most
positions fall in the ranges that carry structure (headers, HDF5 metadata); a few anywhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

Ranges = Sequence[tuple[int, int]]

#: Share of positions drawn anywhere in the file rather than in a structural range.
ANYWHERE = 0.15
#: Integers that sit on the boundaries of the field types of the formats.
BOUNDARY_INTS = (
    0,
    1,
    2,
    7,
    8,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    0x100000000,
    0x7FFFFFFFFFFFFFFF,
    0xFFFFFFFFFFFFFFFF,
)
#: Replacement values of text fields (Merlin frame headers, ``.hdr`` lines).
TEXT_VALUES = (
    b"",
    b"0",
    b"-1",
    b"-5",
    b"00000",
    b"99999",
    b"65535",
    b"33000",
    b"4294967296",
    b"99999999999999999999999",
    b"1e400",
    b"-1e-400",
    b"nan",
    b"inf",
    b"0x1F",
    b"U01",
    b"U64",
    b"R64",
    b"Q16",
    b"MQ1",
    b"MQ1A",
    b"2x2",
    b"2x2G",
    b"Nx1",
    b"   1x1",
    b"100ns",
    b"-100ns",
    b"ns",
    b"2024-13-45T99:99:99.999999999Z",
    b"2024-02-30T12:00:00.000000000Z",
    b"9999999-01-01T00:00:00Z",
    b"2024-03-01 25:61:61.000000",
    b"\xff\xfe\x00",
    b",",
    b",,,,",
    b"\r\n",
    b"\t",
    b"1" * 64,
)
#: Characters that replace one character of a text field.
TEXT_CHARACTERS = b"0123456789-+.eE ,:\tx\x00\xff"
_DELIMITERS = b",\t\r\n:"


def position(size: int, ranges: Ranges, rng: random.Random) -> int:
    """A byte position: in a random structural range, or anywhere in the file."""
    inside = [(start, min(stop, size)) for start, stop in ranges if start < min(stop, size)]
    if size == 0:
        return 0
    if not inside or rng.random() < ANYWHERE:
        return rng.randrange(size)
    start, stop = rng.choice(inside)
    return rng.randrange(start, stop)


def _flip_bit(data: bytearray, at: int, rng: random.Random) -> bytearray:
    if at < len(data):
        data[at] ^= 1 << rng.randrange(8)
    return data


def _set_byte(data: bytearray, at: int, rng: random.Random) -> bytearray:
    if at < len(data):
        data[at] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)))
    return data


def _set_int(data: bytearray, at: int, rng: random.Random) -> bytearray:
    width = rng.choice((1, 2, 4, 8))
    value = rng.choice((*BOUNDARY_INTS, rng.getrandbits(8 * width)))
    value = (value + rng.choice((0, 0, -1, 1))) % (1 << (8 * width))
    raw = value.to_bytes(width, rng.choice(("little", "big")))
    data[at : at + width] = raw[: max(len(data) - at, 0)]
    return data


def _text_character(data: bytearray, at: int, rng: random.Random) -> bytearray:
    if at < len(data):
        data[at] = rng.choice(TEXT_CHARACTERS)
    return data


def _field_bounds(data: bytearray, at: int) -> tuple[int, int]:
    start = at
    while start > 0 and data[start - 1] not in _DELIMITERS:
        start -= 1
    stop = at
    while stop < len(data) and data[stop] not in _DELIMITERS:
        stop += 1
    return start, stop


def _text_field(data: bytearray, at: int, rng: random.Random) -> bytearray:
    """Replace the delimited field around ``at``, keeping its length half of the time."""
    start, stop = _field_bounds(data, min(at, max(len(data) - 1, 0)))
    value = rng.choice(TEXT_VALUES)
    if rng.random() < 0.5:
        width = stop - start
        value = value[:width].rjust(width, b"0" if value[:1].isdigit() else b" ")
    data[start:stop] = value
    return data


def _truncate(data: bytearray, at: int, rng: random.Random) -> bytearray:
    del rng
    return data[:at]


def _delete(data: bytearray, at: int, rng: random.Random) -> bytearray:
    del data[at : at + rng.choice((1, 2, 4, 8, 64, 512))]
    return data


def _insert(data: bytearray, at: int, rng: random.Random) -> bytearray:
    count = rng.choice((1, 2, 4, 8, 64, 512))
    data[at:at] = bytes(rng.choice((0, 0xFF, rng.randrange(256))) for _ in range(count))
    return data


def _copy(data: bytearray, at: int, rng: random.Random) -> bytearray:
    """Overwrite the bytes at ``at`` with a piece of the file from elsewhere."""
    if not data:
        return data
    count = rng.choice((4, 8, 16, 64, 256))
    source = rng.randrange(len(data))
    data[at : at + count] = data[source : source + count]
    return data


def _append(data: bytearray, at: int, rng: random.Random) -> bytearray:
    del at
    count = rng.choice((1, 100, 4096))
    data += bytes(rng.randrange(256) for _ in range(min(count, 512))) * (count // 512 + 1)
    return data


Mutation = Callable[[bytearray, int, random.Random], bytearray]

#: The mutations and their weights.
MUTATIONS: tuple[tuple[Mutation, int], ...] = (
    (_flip_bit, 6),
    (_set_byte, 5),
    (_set_int, 5),
    (_text_character, 3),
    (_text_field, 4),
    (_truncate, 2),
    (_delete, 1),
    (_insert, 1),
    (_copy, 2),
    (_append, 1),
)
_FUNCTIONS = [mutation for mutation, _ in MUTATIONS]
_WEIGHTS = [weight for _, weight in MUTATIONS]


def mutate(
    files: Mapping[str, bytes], targets: Mapping[str, Ranges], rng: random.Random
) -> dict[str, bytes]:
    """Mutate one of the target files of a seed.

    Parameters
    ----------
    files
        Every file of the seed, by name.
    targets
        The files that may be mutated, each with its structural byte ranges.
    rng
        The source of every choice.

    Returns
    -------
    dict
        ``files`` with one file replaced by a mutated copy.
    """
    name = rng.choice(sorted(targets))
    data = bytearray(files[name])
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        [mutation] = rng.choices(_FUNCTIONS, _WEIGHTS)
        data = mutation(data, position(len(data), targets[name], rng), rng)
    return {**files, name: bytes(data)}
