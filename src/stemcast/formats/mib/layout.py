"""Merlin record layout: record size, pixel position and decoding of record batches.

A ``.mib`` file is a flat sequence of equally sized records (frame header + pixels). The
:class:`MibLayout` of a file is all the batch reader, the live tailer and the converters need
to turn a batch of records into native-endian frames, including RAW (``R64``) payloads and
the chip re-ordering of RAW quad frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError, UnsupportedError
from stemcast.formats.mib.spec import FrameHeader

#: Processed storage type -> stored (big-endian) dtype.
_STORED_DTYPES = {"U01": ">u1", "U08": ">u1", "U16": ">u2", "U32": ">u4", "U64": ">u8"}
#: Counter depth -> native dtype of decoded frames.
_DEPTH_DTYPES = {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}
#: Counter depth -> bits per pixel inside RAW 64-bit words.
_RAW_BITS = {1: 1, 6: 8, 12: 16, 24: 16}
_CHIP = 256


@dataclass(frozen=True, slots=True)
class MibLayout:
    """How the records of one Merlin file are laid out and decoded."""

    header_size: int
    stored_height: int
    stored_width: int
    pixel_type: str
    counter_depth: int
    geometry: str
    chip_count: int

    @classmethod
    def from_header(
        cls, header: FrameHeader, *, path: str | os.PathLike[str] | None = None
    ) -> MibLayout:
        """Build the layout announced by a file's first frame header.

        Parameters
        ----------
        header
            The first frame header of the file.
        path
            The file, for error messages.

        Returns
        -------
        MibLayout
            The layout, validated.
        """
        depth = header.counter_depth
        if depth is None:
            if header.raw:
                raise UnsupportedError(
                    "RAW frames without the MQ1A header block give no counter depth",
                    path=path,
                    offset=0,
                )
            depth = {"U01": 1, "U08": 6, "U16": 12, "U32": 24, "U64": 24}[header.pixel_type]
        layout = cls(
            header_size=header.header_size,
            stored_height=header.height,
            stored_width=header.width,
            pixel_type=header.pixel_type,
            counter_depth=depth,
            geometry=header.layout,
            chip_count=header.chip_count,
        )
        layout._validate(path)
        return layout

    def _validate(self, path: str | os.PathLike[str] | None) -> None:
        if not self.raw:
            return
        if self.quad:
            if self.counter_depth == 24:
                raise UnsupportedError("24-bit RAW quad frames cannot be decoded", path=path)
            if self.stored_width != 4 * _CHIP:
                raise FormatError(
                    f"RAW quad frames must be stored 1024 pixels wide, not {self.stored_width}",
                    path=path,
                    offset=0,
                )
        bits = _RAW_BITS[self.counter_depth]
        if (self.stored_width * bits) % 64:
            raise FormatError(
                f"RAW row of {self.stored_width} pixels at {bits} bits is not whole 64-bit words",
                path=path,
                offset=0,
            )

    @property
    def raw(self) -> bool:
        """Whether the payload is RAW (``R64``) and needs unpacking."""
        return self.pixel_type == "R64"

    @property
    def quad(self) -> bool:
        """Whether this is a 2x2 chip assembly."""
        return self.geometry.startswith("2x2")

    @property
    def _raw_width(self) -> int:
        """Columns of one RAW image as stored (24-bit RAW stores two 12-bit images)."""
        if self.counter_depth == 24 and self.stored_width == 2 * _CHIP * max(self.chip_count, 1):
            return self.stored_width // 2
        return self.stored_width

    @property
    def stored_dtype(self) -> np.dtype[Any]:
        """The dtype of the payload as stored: big-endian pixels, or bytes for RAW."""
        if self.raw:
            return np.dtype(np.uint8)
        return np.dtype(_STORED_DTYPES[self.pixel_type])

    @property
    def payload_shape(self) -> tuple[int, ...]:
        """Shape of one record's payload in :attr:`stored_dtype` items."""
        if self.raw:
            return (self.payload_bytes,)
        return (self.stored_height, self.stored_width)

    @property
    def payload_bytes(self) -> int:
        """Bytes of pixel data in one record."""
        if not self.raw:
            return self.stored_height * self.stored_width * self.stored_dtype.itemsize
        images = 2 if self.counter_depth == 24 else 1
        return images * self.stored_height * self._raw_width * _RAW_BITS[self.counter_depth] // 8

    @property
    def record_size(self) -> int:
        """Bytes of one record: header plus pixel data."""
        return self.header_size + self.payload_bytes

    @property
    def record_dtype(self) -> np.dtype[Any]:
        """Structured dtype of one record, with fields ``header`` and ``data``."""
        return np.dtype(
            [("header", f"S{self.header_size}"), ("data", self.stored_dtype, self.payload_shape)]
        )

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of a decoded frame."""
        if self.raw and self.quad:
            gap = 2 if self.geometry.endswith("G") else 0
            return (2 * self.stored_height + gap, 2 * _CHIP + gap)
        if self.raw:
            return (self.stored_height, self._raw_width)
        return (self.stored_height, self.stored_width)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Native dtype of decoded frames."""
        if self.raw:
            return np.dtype(_DEPTH_DTYPES[self.counter_depth])
        return self.stored_dtype.newbyteorder("=")

    @property
    def bytes_per_frame_decoded(self) -> int:
        """Bytes of one decoded frame."""
        rows, cols = self.frame_shape
        return rows * cols * self.dtype.itemsize

    def decode(
        self,
        payload: npt.NDArray[Any],
        out: npt.NDArray[Any] | None = None,
        *,
        flip_rows: bool = False,
    ) -> npt.NDArray[Any]:
        """Decode a batch of payloads into native-endian frames.

        Parameters
        ----------
        payload
            ``records["data"]`` of a batch of records: shape ``(n,) + payload_shape``.
        out
            Optional array of shape ``(n,) + frame_shape`` and dtype :attr:`dtype` to fill.
        flip_rows
            Whether to decode each frame upside down (rows reversed), in the same pass.

        Returns
        -------
        numpy.ndarray
            Frames of shape ``(n,) + frame_shape``, dtype :attr:`dtype` (C order unless ``out``
            is not).
        """
        count = payload.shape[0]
        shape = (count, *self.frame_shape)
        if not self.raw:
            if out is None:
                out = np.empty(shape, dtype=self.dtype)
            np.copyto(out[:, ::-1] if flip_rows else out, payload, casting="unsafe")
            return out
        flat = payload.reshape(count, -1)
        if flat.strides[-1] != 1:
            flat = np.ascontiguousarray(flat)
        words = flat.view(">u8")
        if flip_rows and not self.quad:
            # Word boundaries coincide with row boundaries: reverse the rows of each image
            # while byte-swapping the words (one copy).
            per_frame = 2 if self.counter_depth == 24 else 1
            words = words.reshape(count, per_frame, self.stored_height, -1)[:, :, ::-1]
        words = words.astype("<u8").reshape(count, -1)
        if self.quad:
            if out is None:
                out = np.empty(shape, dtype=self.dtype)
            stored = self._unpack(words, count, self.stored_width)
            self._assemble_quad(stored, out[:, ::-1] if flip_rows else out)
            return out
        if self.counter_depth == 24:
            if out is None:
                out = np.empty(shape, dtype=self.dtype)
            images = self._unpack(words, 2 * count, self._raw_width).reshape(
                count, 2, self.stored_height, self._raw_width
            )
            np.left_shift(images[:, 0], 12, out=out, dtype=out.dtype)
            out |= images[:, 1]
            return out
        pixels = self._unpack(words, count, self.stored_width).reshape(shape)
        if out is None and pixels.dtype == self.dtype:
            return pixels  # a new array (unpacked, or a view of the swapped words): no copy
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        out[...] = pixels
        return out

    def _unpack(self, words: npt.NDArray[Any], count: int, width: int) -> npt.NDArray[Any]:
        """Little-endian words -> pixels ``(count, stored_height, width)`` of the RAW bit width."""
        flat = words.view(np.uint8)
        bits = _RAW_BITS[self.counter_depth]
        if bits == 1:
            pixels = np.unpackbits(flat, bitorder="little")
        elif bits == 8:
            pixels = flat
        else:
            pixels = flat.view("<u2")
        return pixels.reshape(count, self.stored_height, width)

    def _assemble_quad(self, stored: npt.NDArray[Any], out: npt.NDArray[Any]) -> None:
        """Place the four chips of RAW quad rows into the assembled frame (bottom chips rotated)."""
        rows = self.stored_height
        gap = 2 if self.geometry.endswith("G") else 0
        right, bottom = _CHIP + gap, rows + gap
        if gap:
            out[...] = 0
        out[:, :rows, :_CHIP] = stored[:, :, 3 * _CHIP :]
        out[:, :rows, right:] = stored[:, :, 2 * _CHIP : 3 * _CHIP]
        out[:, bottom:, :_CHIP] = stored[:, ::-1, 2 * _CHIP - 1 : _CHIP - 1 : -1]
        out[:, bottom:, right:] = stored[:, ::-1, _CHIP - 1 :: -1]

    def encode(self, frames: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Encode frames into payloads, the inverse of :meth:`decode`.

        Parameters
        ----------
        frames
            Shape ``(n,) + frame_shape``; values must fit the counter depth.

        Returns
        -------
        numpy.ndarray
            Payloads of shape ``(n,) + payload_shape`` and dtype :attr:`stored_dtype`.
        """
        count = frames.shape[0]
        if not self.raw:
            return np.ascontiguousarray(frames, dtype=self.stored_dtype)
        if self.quad:
            rows = self.stored_height
            gap = 2 if self.geometry.endswith("G") else 0
            right, bottom = _CHIP + gap, rows + gap
            stored = np.empty((count, rows, 4 * _CHIP), dtype=frames.dtype)
            stored[:, :, 3 * _CHIP :] = frames[:, :rows, :_CHIP]
            stored[:, :, 2 * _CHIP : 3 * _CHIP] = frames[:, :rows, right:]
            stored[:, :, _CHIP : 2 * _CHIP] = frames[:, : bottom - 1 : -1, _CHIP - 1 :: -1]
            stored[:, :, :_CHIP] = frames[:, : bottom - 1 : -1, : right - 1 : -1]
            pixels = stored
        elif self.counter_depth == 24:
            values = frames.astype(np.uint32)
            pixels = np.stack([values >> 12, values & 0xFFF], axis=1)
        else:
            pixels = frames
        bits = _RAW_BITS[self.counter_depth]
        flat = np.ascontiguousarray(pixels).reshape(count, -1)
        if bits == 1:
            packed = np.packbits(flat.astype(np.uint8), axis=-1, bitorder="little")
        elif bits == 8:
            packed = flat.astype(np.uint8)
        else:
            packed = flat.astype("<u2").view(np.uint8)
        words = np.ascontiguousarray(packed).view("<u8").astype(">u8")
        return words.view(np.uint8).reshape(count, self.payload_bytes)
