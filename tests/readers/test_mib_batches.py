"""Record batches for the live service and converters: native-endian, bounded, complete,
oriented as ``file_reader`` returns frames (flipped vertically, like the reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemcast.readers.mib import MibRun, file_reader, load_mib_data
from stemcast.writers.mib import MibWriter


def test_batches_cover_every_complete_frame_once_oriented_as_file_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 1 << 24, (23, 32, 32), dtype=np.uint32)
    path = tmp_path / "run.mib"
    with MibWriter(path, frame_shape=(32, 32), counter_depth=24) as writer:
        writer.write(frames)
        writer.write_partial(frames[0], 500)
    run = MibRun.open(path)
    batches = list(run.batches(batch_frames=5))
    assert [len(batch) for batch in batches] == [5, 5, 5, 5, 3]
    assert [batch.start for batch in batches] == [0, 5, 10, 15, 20]
    joined = np.concatenate([batch.frames for batch in batches])
    assert joined.dtype.isnative
    np.testing.assert_array_equal(joined, frames[:, ::-1])
    stored = load_mib_data(str(path))
    np.testing.assert_array_equal(joined, stored[:, ::-1])
    np.testing.assert_array_equal(joined, file_reader(str(path))[0]["data"])
    assert batches[0].headers[0].startswith(b"MQ1,000001,00384,")


def test_batches_of_a_sub_range(tmp_path: Path) -> None:
    frames = np.arange(10 * 8 * 8, dtype=np.uint16).reshape(10, 8, 8) % 4096
    path = tmp_path / "run.mib"
    with MibWriter(path, frame_shape=(8, 8), counter_depth=12) as writer:
        writer.write(frames)
    batches = list(MibRun.open(path).batches(3, 8, batch_frames=4))
    np.testing.assert_array_equal(np.concatenate([b.frames for b in batches]), frames[3:8, ::-1])
