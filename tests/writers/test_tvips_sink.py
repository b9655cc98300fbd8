"""TvipsWriter is a FrameSink, atomic or writing in place, over a series of several parts."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rsciio.tvips as rsciio_tvips

from sink_conformance import FrameSinkTests
from stemcast.readers.tvips import file_reader
from stemcast.writers.tvips import TvipsWriter

#: 60-byte version-2 frame headers and 16 x 16 uint16 frames.
RECORD = 60 + 16 * 16 * 2
#: Three records per part: every test's frames span several parts.
MAX_FILE_SIZE = 256 + 3 * RECORD


def _frames(signal: dict[str, Any], frame_shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(signal["data"]).reshape(-1, *frame_shape)


class _TvipsSinkTests(FrameSinkTests[TvipsWriter]):
    name = "series_000.tvips"

    def make_sink(self, path: Path) -> TvipsWriter:
        return TvipsWriter(
            path, self.frame_shape, self.dtype, max_file_size=MAX_FILE_SIZE, atomic=self.atomic
        )

    def read(self, path: Path) -> np.ndarray:
        return _frames(file_reader(path)[0], self.frame_shape)

    def read_reference(self, path: Path) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reference warns about the missing metadata
            return _frames(rsciio_tvips.file_reader(str(path))[0], self.frame_shape)

    def test_commit_leaves_every_part(self, tmp_path: Path) -> None:
        sink = self.make_sink(tmp_path / self.name)
        self.write_all(sink, self.frames())
        sink.commit()
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f"series_{index:03d}.tvips" for index in range(4)
        ]
        assert sink.paths == sorted(tmp_path.iterdir())


class TestAtomicTvipsWriterSink(_TvipsSinkTests):
    atomic = True


class TestInPlaceTvipsWriterSink(_TvipsSinkTests):
    atomic = False
