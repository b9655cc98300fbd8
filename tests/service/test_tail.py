"""Tailing growing files: only complete records, new files of a run, shrinking refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stemcast.errors import FormatError
from stemcast.formats.runs import run_kind
from stemcast.protocol import decode_header, encode_header
from stemcast.readers.mib import MibRun
from stemcast.service.live.tail import MibSource, NotReady, open_source
from stemcast.writers.mib import MibWriter


def frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, (count, 32, 32), dtype=np.uint16)


def test_refresh_counts_only_complete_records(tmp_path: Path) -> None:
    path = tmp_path / "grow.mib"
    data = frames(5)
    with MibWriter(path, frame_shape=(32, 32), scan_shape=(5, 1)) as writer:
        with pytest.raises(NotReady):
            open_source(path)
        writer.write(data[:2])
        run = MibRun.open(path)
        assert run.frames == 2
        writer.write_partial(data[2], 100)
        assert run.refresh().frames == 2
    with open(path, "ab") as stream:
        stream.write(writer.records(data[2]).tobytes()[100:])
    grown = run.refresh()
    assert grown.frames == 3
    # Batches are oriented as file_reader returns frames: flipped vertically.
    np.testing.assert_array_equal(next(grown.batches(2, 3)).frames[0], data[2, ::-1])


def test_refresh_finds_the_next_file_of_a_split_run(tmp_path: Path) -> None:
    data = frames(6)
    with MibWriter(tmp_path / "run1.mib", frame_shape=(32, 32)) as writer:
        writer.write(data[:3])
    run = MibRun.open(tmp_path / "run1.mib")
    assert run.refresh(siblings=False) is run
    with MibWriter(tmp_path / "run2.mib", frame_shape=(32, 32), first_sequence=4) as writer:
        writer.write(data[3:])
    assert run.refresh(siblings=False).frames == 3
    later = run.refresh()
    assert [Path(segment.path).name for segment in later.segments] == ["run1.mib", "run2.mib"]
    np.testing.assert_array_equal(next(later.batches(0, 6)).frames, data[:, ::-1])


def test_a_shrinking_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shrink.mib"
    with MibWriter(path, frame_shape=(32, 32)) as writer:
        writer.write(frames(4))
    run = MibRun.open(path)
    with open(path, "r+b") as stream:
        stream.truncate(run.layout.record_size * 2)
    with pytest.raises(FormatError, match="shrank"):
        run.refresh()


def test_live_frames_are_oriented_like_the_offline_reader(tmp_path: Path) -> None:
    from stemcast.readers.mib import file_reader

    path = tmp_path / "orient.mib"
    data = frames(4)
    with MibWriter(path, frame_shape=(32, 32)) as writer:
        writer.write(data)
    source = MibSource.open(path)
    offline = file_reader(path, lazy=True)[0]["data"].compute()
    np.testing.assert_array_equal(source.read(0, 4).frames, offline)


def test_run_kinds() -> None:
    assert run_kind("/x/scan.mib") == "mib"
    assert run_kind("scan_000.tvips") == "tvips"
    assert run_kind("scan_001.tvips") is None
    assert run_kind("scan.hdr") is None


def test_headers_round_trip_and_foreign_messages_are_refused() -> None:
    header = {"htype": "stemcast-frame-1.0", "frame": 3, "dtype": "<u2"}
    assert decode_header(encode_header(header)) == header
    with pytest.raises(ValueError, match="not a stemcast"):
        decode_header(b'{"htype": "dheader-1.0"}')
