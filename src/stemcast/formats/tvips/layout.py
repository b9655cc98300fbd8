"""TVIPS record layout: record size, where the pixels sit, decoding of record batches.

Every file of a series is a sequence of equally sized records (frame header + pixels), after
the 256-byte main header in ``_000``. The :class:`TvipsLayout` of a series is all the batch
reader, the live tailer and the converters need to turn a batch of records into native-endian
frames, and all the writer needs to turn frames into records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError
from stemcast.formats.tvips.spec import (
    REFERENCE_FILLER,
    V1_FRAME_HEADER_SIZE,
    V2_FRAME_HEADER_SIZE,
    MainHeader,
    frame_header_dtype,
)


@dataclass(frozen=True, slots=True)
class TvipsLayout:
    """How the frame records of one TVIPS series are laid out."""

    header_bytes: int  # frame header size: 12 (version 1) or >= 60
    height: int  # rows
    width: int  # columns
    bits_per_pixel: int  # 8, 16, 32 or 64 (unsigned, little-endian)

    @classmethod
    def from_main_header(cls, header: MainHeader) -> TvipsLayout:
        """Build the layout the main header announces.

        Version-1 frame headers are 12 bytes (the TVIPS recorder), except in files the
        reference writer made: it writes version-2 frame headers whatever the version, and its
        main-header filler (``HYPERSPY ...``) identifies them.

        Parameters
        ----------
        header
            The checked main header.

        Returns
        -------
        TvipsLayout
            The layout.
        """
        header_bytes = header.frameheaderbytes
        if header.version == 1:
            written_by_reference = (
                header.dummy.startswith(REFERENCE_FILLER[:8])
                and header.frameheaderbytes >= V2_FRAME_HEADER_SIZE
            )
            if not written_by_reference:
                header_bytes = V1_FRAME_HEADER_SIZE
        return cls(header_bytes, header.dimy, header.dimx, header.bitsperpixel)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of a frame."""
        return (self.height, self.width)

    @property
    def pixel_dtype(self) -> np.dtype[Any]:
        """The stored pixel type: little-endian unsigned integers."""
        return np.dtype(f"<u{self.bits_per_pixel // 8}")

    @property
    def dtype(self) -> np.dtype[Any]:
        """The native dtype of decoded frames."""
        return self.pixel_dtype.newbyteorder("=")

    @property
    def pixel_bytes(self) -> int:
        """Bytes of pixel data in one record."""
        return self.height * self.width * self.bits_per_pixel // 8

    @property
    def record_size(self) -> int:
        """Bytes of one record: frame header plus pixels."""
        return self.header_bytes + self.pixel_bytes

    @property
    def header_dtype(self) -> np.dtype[Any]:
        """Structured dtype of one frame header (see :func:`frame_header_dtype`)."""
        return frame_header_dtype(self.header_bytes)

    @property
    def record_dtype(self) -> np.dtype[Any]:
        """Structured dtype of one record, with fields ``header`` and ``data``."""
        return np.dtype(
            [("header", self.header_dtype), ("data", self.pixel_dtype, self.frame_shape)]
        )

    def decode(
        self, payload: npt.NDArray[Any], out: npt.NDArray[Any] | None = None
    ) -> npt.NDArray[Any]:
        """Decode a batch of payloads into native-endian frames.

        Parameters
        ----------
        payload
            ``records["data"]`` of a batch of records, shape ``(n, rows, columns)``.
        out
            Optional ``(n, rows, columns)`` array of :attr:`dtype` to fill.

        Returns
        -------
        numpy.ndarray
            The frames, C order (``out`` when given).
        """
        if out is None:
            out = np.empty(payload.shape, dtype=self.dtype)
        np.copyto(out, payload, casting="equiv")
        return out

    def encode(self, frames: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Encode frames into payloads, the inverse of :meth:`decode`.

        Parameters
        ----------
        frames
            ``(n, rows, columns)`` unsigned integers of the series' pixel size.

        Returns
        -------
        numpy.ndarray
            C-contiguous little-endian payloads (``frames`` itself when it already is one).
        """
        return np.ascontiguousarray(frames, dtype=self.pixel_dtype)

    def check_headers(
        self,
        headers: npt.NDArray[Any],
        *,
        path: str,
        offset: int,
        first: int,
        not_before_ms: int | None = None,
    ) -> None:
        """Check, vectorised, that frame headers look like frame headers.

        A header whose millisecond field is 1000 or more, or whose time lies before
        ``not_before_ms``, is pixel data: the main header's frame size does not match the
        records, or the file is corrupt.

        Parameters
        ----------
        headers
            Consecutive frame headers (:attr:`header_dtype`) read from ``path``.
        path, offset
            The file and the byte offset of the first record, for the error message.
        first
            Index of the first record in its file, for the error message.
        not_before_ms
            The earliest plausible frame time, ms since the epoch.
        """
        if len(headers) == 0:
            return
        milliseconds = headers["ms"]
        problem = milliseconds >= 1000
        if not_before_ms is not None:
            times = headers["timestamp"].astype(np.int64) * 1000 + milliseconds
            problem |= times < not_before_ms
        bad = np.flatnonzero(problem)
        if bad.size:
            index = int(bad[0])
            seconds = int(headers["timestamp"][index])
            raise FormatError(
                f"record {first + index} is not a frame header (time {seconds} s + "
                f"{int(milliseconds[index])} ms): the main header's frame size ({self.height} x "
                f"{self.width} pixels of {self.bits_per_pixel} bits, {self.header_bytes}-byte "
                "frame headers) does not match the records, or the file is corrupt",
                path=path,
                offset=offset + index * self.record_size,
            )
