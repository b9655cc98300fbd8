"""Where an HDF5 object header stores the value of an attribute: a bounded, careful parse.

HDF5 keeps small attributes inside the object header of their group or dataset, as
attribute messages (HDF5 file format specification, sections IV.A.1 and IV.A.2.m). The
readers need the stored bytes of a variable-length attribute value before HDF5 reads it,
to check the lengths it holds (see :class:`.hdf5.Hdf5Source`). This module finds them,
following continuation messages, and gives up (returns ``None``) on anything it does not
know: version 1 and 2 object headers and attribute messages 1 to 3 are parsed, shared and
densely stored attributes are not. Every read is bounded by the file's size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["attribute_value"]

#: Reads ``size`` bytes at ``offset`` (fewer at the end of the file).
Reader = Callable[[int, int], bytes]

_CONTINUATION = 0x0010
_ATTRIBUTE = 0x000C
#: Attribute message flag: the message is shared (stored elsewhere).
_SHARED_MESSAGE = 0x02
#: Version 2 object header flags: creation order of messages stored; times stored;
#: attribute storage phase change values stored.
_ORDER_STORED, _PHASES_STORED, _TIMES_STORED = 0x04, 0x10, 0x20
#: Most header chunks followed: real objects have a handful.
_MAX_CHUNKS = 256


@dataclass(frozen=True, slots=True)
class _Chunk:
    """The messages area of one header chunk: ``[start, start + size)``."""

    start: int
    size: int


def _int(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _padded(size: int) -> int:
    return -(-size // 8) * 8


def attribute_value(
    read: Reader, address: int, name: str, address_size: int, length_size: int
) -> tuple[int, bytes] | None:
    """Find the stored value of attribute ``name`` in the object header at ``address``.

    Parameters
    ----------
    read
        Reads bytes of the file.
    address
        Where the object header starts (``h5py.h5o.get_info(...).addr``).
    name
        The attribute.
    address_size, length_size
        The superblock's sizes of offsets and lengths.

    Returns
    -------
    tuple of (int, bytes) or None
        The file offset of the value and its bytes (as many as the message holds), or
        ``None`` if the attribute is not stored in the header or the header is not understood.
    """
    head = read(address, 16)
    if len(head) < 16:
        return None
    if head[0] == 1:  # version 1: no signature; messages from byte 16, 8-byte aligned
        chunks, v2, ordered = [_Chunk(address + 16, _int(head[8:12]))], False, False
    elif head[:4] == b"OHDR" and head[4] == 2:
        flags = head[5]
        position = address + 6 + (16 if flags & _TIMES_STORED else 0)
        position += 4 if flags & _PHASES_STORED else 0
        width = 1 << (flags & 0x03)
        size = _int(read(position, width))
        chunks, v2, ordered = [_Chunk(position + width, size)], True, bool(flags & _ORDER_STORED)
    else:
        return None
    wanted = name.encode()
    seen: set[int] = set()
    while chunks and len(seen) < _MAX_CHUNKS:
        chunk = chunks.pop(0)
        if chunk.start in seen:
            continue  # a continuation that loops back
        seen.add(chunk.start)
        data = read(chunk.start, chunk.size)
        position = 0
        header = (4 + (2 if ordered else 0)) if v2 else 8
        while position + header <= len(data):
            if v2:  # type (1 byte), size (2), flags (1), creation order (2, if stored)
                kind, size = data[position], _int(data[position + 1 : position + 3])
                flags = data[position + 3]
            else:  # type (2 bytes), size (2), flags (1), reserved (3)
                kind, size = (
                    _int(data[position : position + 2]),
                    _int(data[position + 2 : position + 4]),
                )
                flags = data[position + 4]
            body = data[position + header : position + header + size]
            body_offset = chunk.start + position + header
            position += header + size
            if kind == _CONTINUATION and len(body) >= address_size + length_size:
                start = _int(body[:address_size])
                length = _int(body[address_size : address_size + length_size])
                # Version 2 continuation chunks start with "OCHK" and end with a checksum.
                chunks.append(_Chunk(start + 4, length - 8) if v2 else _Chunk(start, length))
            elif kind == _ATTRIBUTE and not flags & _SHARED_MESSAGE:
                found = _value(body, wanted)
                if found is not None:
                    return body_offset + found, body[found:]
    return None


def _value(body: bytes, name: bytes) -> int | None:
    """Offset of the value in an attribute message, if it is attribute ``name``."""
    if len(body) < 8 or body[0] not in (1, 2, 3):
        return None
    version = body[0]
    name_size, type_size, space_size = _int(body[2:4]), _int(body[4:6]), _int(body[6:8])
    start = 9 if version == 3 else 8
    if body[start : start + name_size].rstrip(b"\x00") != name:
        return None
    sizes = (name_size, type_size, space_size)
    return start + sum(_padded(size) if version == 1 else size for size in sizes)
