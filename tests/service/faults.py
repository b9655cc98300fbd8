"""Hostile files for the fault tests: what the adversarial runs of the service dropped in."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from live import Daemon, call

from stemcast.formats.mib.run import read_first_header
from stemcast.formats.mib.spec import format_frame_header
from stemcast.simulate import simulate_mib


def runs(service: Daemon) -> list[dict[str, object]]:
    """The registry's runs, newest first, as ``GET /runs`` gives them."""
    status, body = call("GET", f"{service.http}/runs?limit=100000")
    assert status == 200
    found: list[dict[str, object]] = body["runs"]
    return found


def ready(service: Daemon) -> tuple[int, dict[str, dict[str, object]]]:
    """The status of ``GET /ready`` and its checks."""
    status, body = call("GET", f"{service.http}/ready")
    return status, body["checks"]


def lines(service: Daemon, text: str) -> list[str]:
    """The lines of the daemon's log that contain ``text``."""
    return [line for line in service.log_text().splitlines() if text in line]


def good_run(folder: Path, name: str, scan: tuple[int, int] = (4, 4)) -> Path:
    """A small complete run of 32 x 32 frames, written as the camera does (``.hdr`` first)."""
    folder.mkdir(parents=True, exist_ok=True)
    [path] = simulate_mib(folder, name=name, scan_shape=scan, frame_size=32)
    return path


def record_size(path: Path) -> int:
    """Bytes of one record of a simulated run of 32 x 32 12-bit frames."""
    return read_first_header(path).header_size + 32 * 32 * 2


def frame_header(path: Path, frame: int) -> tuple[int, bytes]:
    """Offset and bytes of the frame header of record ``frame`` of a simulated run."""
    record = record_size(path)
    with open(path, "rb") as stream:
        stream.seek(frame * record)
        return frame * record, stream.read(read_first_header(path).header_size)


def corrupt_timestamp(source: Path, frame: int) -> bytes:
    """The bytes of ``source`` with the year of frame ``frame``'s timestamp made ``XXXX``."""
    offset, header = frame_header(source, frame)
    stamp = offset + header.index(b"MQ1A,") + len(b"MQ1A,")
    data = bytearray(source.read_bytes())
    data[stamp : stamp + 4] = b"XXXX"
    return bytes(data)


def claiming(source: Path, path: Path, size: int, frames: int) -> int:
    """Write a sparse ``.mib`` whose headers claim ``frames`` frames of ``size`` x ``size``.

    Only the frame headers take disk space. Returns the record size the headers claim.
    """
    first = read_first_header(source)
    record = first.header_size + size * size * 2  # U16 pixels
    with open(path, "wb") as stream:
        for index in range(frames):
            header = dataclasses.replace(first, width=size, height=size, sequence_number=index + 1)
            stream.seek(index * record)
            stream.write(format_frame_header(header))
        stream.truncate(frames * record)
    return record


def with_hdr(source: Path, folder: Path, name: str, hdr: bytes) -> None:
    """Put the run ``source`` into ``folder`` as ``name``, with ``hdr`` as its ``.hdr``."""
    (folder / f"{name}.hdr").write_bytes(hdr)
    shutil.copy(source, folder / f"{name}.mib")


def negative_count_hdr(source_hdr: Path) -> bytes:
    """A ``.hdr`` whose ``Frames in Acquisition`` is -5."""
    text = source_hdr.read_bytes().decode("latin-1")
    key = "Frames in Acquisition (Number):\t"
    start = text.index(key) + len(key)
    end = text.index("\r\n", start)
    return (text[:start] + "-5" + text[end:]).encode("latin-1")
