"""Velox EDS spectrum streams: the sparse event encoding decoded to spectrum-image cubes.

A stream is a flat ``uint16`` sequence describing the scan pixel by pixel, frame after
frame, in raster order: a value below the channel count is one X-ray detected in that energy
channel for the current pixel, ``0xFFFF`` ends the current pixel. After ``ny * nx`` pixel ends
the next value belongs to pixel 0 of the next frame. Velox terminates every pixel, the last
one included; streams without the final marker decode the same.

Decoding is vectorised: in blocks of the stream, a cumulative sum of the pixel ends gives
every event its pixel, and ``numpy.add.at`` adds the events into the cube in its own dtype
(which wraps on overflow, like the reference's accumulation). ``FrameLocationTable`` (the
stream index where each frame starts) lets a frame range skip the rest of the stream.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError, ParameterError
from stemcast.formats.emd.hdf5 import Hdf5Source, members, open_hdf5

__all__ = [
    "GATE",
    "SpectrumStreamSource",
    "accumulate_spectrum_stream",
    "decode_spectrum_stream",
]

_logger = logging.getLogger(__name__)

#: The pixel-end marker ("gate pulse").
GATE = 0xFFFF
#: Stream elements decoded per block (8 MiB of stream; about 100 MiB of temporaries).
_BLOCK = 1 << 22


def accumulate_spectrum_stream(
    blocks: Iterable[npt.NDArray[np.uint16]],
    out: npt.NDArray[Any],
    *,
    pixels: int,
    channels: int,
    last_frame: int,
    first_frame: int = 0,
    sum_frames: bool = True,
    rebin_energy: int = 1,
    start_frame: int = 0,
    source: str = "spectrum stream",
    path: str | os.PathLike[str] | None = None,
) -> int:
    """Add the events of a spectrum stream into a cube.

    Parameters
    ----------
    blocks
        Consecutive pieces of the stream (any lengths).
    out
        C-contiguous cube, ``(pixels, channels // rebin_energy)`` per frame: shape
        ``(ny, nx, C)`` when ``sum_frames`` else ``(last_frame - first_frame, ny, nx, C)``.
        Counts are added in its dtype.
    pixels
        ``ny * nx``, pixels per frame.
    channels
        Number of energy channels (``bincount``); larger values make the stream corrupt.
    last_frame
        Frame at which to stop (exclusive).
    first_frame
        First frame added (0-based).
    sum_frames
        Add every frame into the same cube instead of one cube per frame.
    rebin_energy
        Channel ``v`` is added to bin ``v // rebin_energy``.
    start_frame
        Frame at which the stream given in ``blocks`` starts (after seeking with
        ``FrameLocationTable``).
    source, path
        The stream and the file, for error messages.

    Returns
    -------
    int
        Number of pixels whose events were complete (pixel ends seen) from ``start_frame``
        up to ``last_frame``.
    """
    bins = channels // rebin_energy
    if not out.flags.c_contiguous:
        raise ParameterError("the output cube must be C-contiguous", parameter="out")
    flat = out.reshape(-1)
    ones = np.ones(0, dtype=out.dtype)
    start_pixel = start_frame * pixels
    carry = start_pixel
    first_pixel, stop_pixel = first_frame * pixels, last_frame * pixels
    position = 0
    for block in blocks:
        if carry >= stop_pixel:
            break
        values = np.asarray(block).reshape(-1)
        gates = np.flatnonzero(values == GATE)
        # Pixel j of the block (global pixel carry + j) holds values[gates[j-1]+1 : gates[j]].
        low = max(first_pixel - carry, 0)
        high = min(stop_pixel - carry, gates.size + 1)
        if low < high:
            start = int(gates[low - 1]) + 1 if low > 0 else 0
            stop = int(gates[high - 1]) if high - 1 < gates.size else values.size
            ends = np.empty(high - low + 1, dtype=np.int64)
            ends[0] = start - 1
            ends[1:-1] = gates[low : high - 1]
            ends[-1] = stop
            counts = np.diff(ends) - 1
            piece = values[start:stop]
            channel = piece[piece != GATE]
            if channel.size:
                _check_channels(piece, channel, channels, position + start, source, path)
                target = np.arange(low, high, dtype=np.int64)
                target += carry - first_pixel
                if sum_frames:
                    target %= pixels
                target *= bins
                where = np.repeat(target, counts)
                where += channel // rebin_energy if rebin_energy > 1 else channel
                if ones.size < where.size:
                    ones = np.ones(where.size, dtype=out.dtype)
                np.add.at(flat, where, ones[: where.size])
        carry += gates.size
        position += values.size
    return min(carry, stop_pixel) - start_pixel


def _check_channels(
    piece: npt.NDArray[np.uint16],
    channel: npt.NDArray[np.uint16],
    channels: int,
    offset: int,
    source: str,
    path: str | os.PathLike[str] | None,
) -> None:
    """Refuse event values that are not energy channels (a corrupt stream).

    ``channel`` are the events of ``piece``, which starts at stream element ``offset``.
    """
    if int(channel.max()) < channels:
        return
    bad = int(np.argmax(channel >= channels))
    element = offset + int(np.flatnonzero(piece != GATE)[bad])
    raise FormatError(
        f"corrupt {source}: element {element} holds {int(channel[bad])}, neither an energy "
        f"channel below {channels} nor the pixel end 0xFFFF",
        path=path,
    )


def _frames_in(values: npt.NDArray[np.uint16], pixels: int) -> int:
    ends = int(np.count_nonzero(values == GATE))
    trailing = bool(values.size) and values[-1] != GATE
    return -(-(ends + trailing) // pixels)


def decode_spectrum_stream(
    stream: npt.ArrayLike,
    scan_shape: tuple[int, int],
    channels: int,
    *,
    first_frame: int = 0,
    last_frame: int | None = None,
    sum_frames: bool = True,
    rebin_energy: int = 1,
    dtype: npt.DTypeLike = np.uint16,
) -> npt.NDArray[Any]:
    """Decode a whole spectrum stream held in memory to a spectrum-image cube.

    Parameters
    ----------
    stream
        The ``uint16`` stream (``(n,)`` or Velox's ``(n, 1)``).
    scan_shape
        ``(ny, nx)`` pixels of one frame.
    channels
        Number of energy channels.
    first_frame
        First frame decoded (0-based).
    last_frame
        Frame at which to stop (exclusive); defaults to every frame of the stream (at least
        one: an empty stream is one frame of empty pixels).
    sum_frames
        Sum the frames instead of returning one cube per frame.
    rebin_energy
        Energy binning factor, a divisor of ``channels``.
    dtype
        Dtype of the counts (wraps on overflow).

    Returns
    -------
    numpy.ndarray
        ``(ny, nx, channels // rebin_energy)``, with a leading frame axis unless
        ``sum_frames``.
    """
    values = np.asarray(stream, dtype=np.uint16).reshape(-1)
    ny, nx = (int(size) for size in scan_shape)
    pixels = ny * nx
    if pixels < 1:
        raise ParameterError(f"{scan_shape} has no pixels", parameter="scan_shape")
    check_binning(channels, rebin_energy)
    last = max(_frames_in(values, pixels), 1) if last_frame is None else int(last_frame)
    check_frame_range(first_frame, last, None)
    shape = (ny, nx, channels // rebin_energy)
    out = np.zeros(shape if sum_frames else (last - first_frame, *shape), dtype=dtype)
    blocks = (values[start : start + _BLOCK] for start in range(0, values.size, _BLOCK))
    accumulate_spectrum_stream(
        blocks,
        out,
        pixels=pixels,
        channels=channels,
        first_frame=first_frame,
        last_frame=last,
        sum_frames=sum_frames,
        rebin_energy=rebin_energy,
    )
    return out


def check_binning(channels: int, rebin_energy: int) -> None:
    """Refuse a ``rebin_energy`` that does not divide the number of channels."""
    if not isinstance(rebin_energy, (int, np.integer)) or rebin_energy < 1:
        raise ParameterError(
            f"{rebin_energy!r} is not a positive integer", parameter="rebin_energy"
        )
    if channels % rebin_energy:
        raise ParameterError(
            f"The rebin_energy needs to be a divisor of the total number of channels "
            f"({channels}), not {rebin_energy}.",
            parameter="rebin_energy",
        )


def check_frame_range(first_frame: int, last_frame: int, frames: int | None) -> None:
    """Refuse a frame range that is empty or beyond the ``frames`` of the stream."""
    if frames is not None and last_frame > frames:
        raise ParameterError(
            f"The last_frame cannot be greater than the number of frames, {frames} for this file.",
            parameter="last_frame",
        )
    if not 0 <= first_frame < last_frame:
        raise ParameterError(
            f"frame range {first_frame}:{last_frame} is empty or negative",
            parameter="first_frame",
        )


@dataclass(frozen=True, slots=True)
class SpectrumStreamSource:
    """The spectrum streams of one Velox acquisition, decoded from the file on demand.

    Picklable: lazy (dask) spectrum images carry it and open the file in the task.

    Attributes
    ----------
    path
        The ``.emd`` file.
    streams
        HDF5 paths of the ``Data/SpectrumStream/<uuid>`` groups whose events are added
        together (one per EDS detector, or several when summing detectors).
    scan_shape
        ``(ny, nx)``.
    channels
        Energy channels of the streams.
    rebin_energy
        Energy binning factor.
    dtype
        Dtype of the counts.
    """

    path: str
    streams: tuple[str, ...]
    scan_shape: tuple[int, int]
    channels: int
    rebin_energy: int
    dtype: np.dtype[Any]

    @property
    def pixels(self) -> int:
        """Pixels per frame."""
        return self.scan_shape[0] * self.scan_shape[1]

    def shape(self, first_frame: int, last_frame: int, sum_frames: bool) -> tuple[int, ...]:
        """Shape of the cube of frames ``first_frame:last_frame``."""
        cube = (*self.scan_shape, self.channels // self.rebin_energy)
        return cube if sum_frames else (last_frame - first_frame, *cube)

    def decode(self, first_frame: int, last_frame: int, sum_frames: bool) -> npt.NDArray[Any]:
        """Decode frames ``first_frame:last_frame`` of every stream into one cube.

        Parameters
        ----------
        first_frame, last_frame
            Frame range (``last_frame`` exclusive).
        sum_frames
            Sum the frames instead of keeping a frame axis.

        Returns
        -------
        numpy.ndarray
            The cube.
        """
        out = np.zeros(self.shape(first_frame, last_frame, sum_frames), dtype=self.dtype)
        with open_hdf5(self.path) as source:
            for stream in self.streams:
                group = source.file[stream]
                self._accumulate(source, group, out, first_frame, last_frame, sum_frames)
        return out

    def _accumulate(
        self,
        source: Hdf5Source,
        group: h5py.Group,
        out: npt.NDArray[Any],
        first_frame: int,
        last_frame: int,
        sum_frames: bool,
    ) -> None:
        data = stream_data(source, group)
        start_frame, start, stop = self.seek(source, group, first_frame, last_frame)
        stream = f"spectrum stream {data.name!r}"
        done = accumulate_spectrum_stream(
            _blocks(source, data, start, stop),
            out,
            pixels=self.pixels,
            channels=self.channels,
            first_frame=first_frame,
            last_frame=last_frame,
            sum_frames=sum_frames,
            rebin_energy=self.rebin_energy,
            start_frame=start_frame,
            source=stream,
            path=self.path,
        )
        # A stream may omit the end marker of its very last pixel.
        missing = (last_frame - start_frame) * self.pixels - done
        if missing > 1:
            _logger.warning(
                "%s: %s ends %d pixels before the end of frame %d; those pixels are empty",
                self.path,
                stream,
                missing,
                last_frame - 1,
            )

    def seek(
        self, source: Hdf5Source, group: h5py.Group, first_frame: int, last_frame: int
    ) -> tuple[int, int, int]:
        """Where to decode frames ``first_frame:last_frame`` of a stream.

        Uses ``FrameLocationTable`` when it is present and consistent (each frame after the
        first starts just after a pixel end), else the whole stream.

        Returns
        -------
        tuple of int
            ``(frame at start, start element, stop element)``.
        """
        data = stream_data(source, group)
        length = data.shape[0]
        table = frame_table(source, group)
        if table is None or first_frame >= len(table):
            return 0, 0, length
        start = int(table[first_frame])
        stop = int(table[last_frame]) if last_frame < len(table) else length
        for index in {start, stop} - {0, length}:
            if int(np.asarray(source.values(data, index - 1)).reshape(-1)[0]) != GATE:
                _logger.warning(
                    "%s: FrameLocationTable of %r does not point after a pixel end; "
                    "decoding the whole stream",
                    self.path,
                    group.name,
                )
                return 0, 0, length
        return first_frame, start, stop


def stream_data(source: Hdf5Source, group: h5py.Group) -> h5py.Dataset:
    """Return the ``Data`` dataset of a stream group, checked (see :meth:`Hdf5Source.check`)."""
    data = source.dataset(group, "Data")
    source.check(data)
    return data


def frame_table(source: Hdf5Source, group: h5py.Group) -> npt.NDArray[np.int64] | None:
    """Return the ``FrameLocationTable`` of a stream group, if present and consistent."""
    node = group.get("FrameLocationTable")
    if not isinstance(node, h5py.Dataset):
        return None
    table = np.asarray(source.values(node), dtype=np.int64).reshape(-1)
    length = stream_data(source, group).shape[0]
    if table.size == 0 or table[0] != 0 or np.any(np.diff(table) < 0) or table[-1] > length:
        return None
    return table


def count_ends(source: Hdf5Source, data: h5py.Dataset) -> tuple[int, int]:
    """Pixel ends of a stream, and 1 if events follow the last one (final marker omitted)."""
    ends = 0
    last = GATE
    for block in _blocks(source, data, 0, data.shape[0]):
        ends += int(np.count_nonzero(block == GATE))
        last = int(block[-1]) if block.size else last
    return ends, int(last != GATE)


def _blocks(
    source: Hdf5Source, data: h5py.Dataset, start: int, stop: int
) -> Iterator[npt.NDArray[np.uint16]]:
    for first in range(start, stop, _BLOCK):
        yield np.asarray(source.values(data, slice(first, min(first + _BLOCK, stop)))).reshape(-1)


def stream_groups(file: h5py.File) -> list[h5py.Group]:
    """Return the non-empty ``Data/SpectrumStream/<uuid>`` groups, in file (UUID) order."""
    node = file.get("Data/SpectrumStream")
    if not isinstance(node, h5py.Group):
        return []
    return [
        group
        for _, group in members(node)
        if isinstance(group, h5py.Group)
        and isinstance(group.get("Data"), h5py.Dataset)
        and group["Data"].ndim > 0
        and group["Data"].shape[0] > 0
    ]
