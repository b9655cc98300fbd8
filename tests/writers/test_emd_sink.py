"""EmdWriter is an atomic FrameSink, for a scan written chunk by chunk and a compressed stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rsciio.emd as rsciio_emd

from sink_conformance import FrameSinkTests
from stemcast.readers.emd import file_reader
from stemcast.writers.emd import EmdWriter


def _frames(signal: dict[str, Any], frame_shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(signal["data"]).reshape(-1, *frame_shape)


class _EmdSinkTests(FrameSinkTests[EmdWriter]):
    name = "scan.emd"
    atomic = True

    def read(self, path: Path) -> np.ndarray:
        return _frames(file_reader(path)[0], self.frame_shape)

    def read_reference(self, path: Path) -> np.ndarray:
        return _frames(rsciio_emd.file_reader(str(path))[0], self.frame_shape)


class TestEmdWriterScanSink(_EmdSinkTests):
    """A 4 x 3 scan, one chunk per frame: each frame is written as a ready-made chunk."""

    def make_sink(self, path: Path) -> EmdWriter:
        return EmdWriter(
            path, self.frame_shape, self.dtype, scan_shape=(4, 3), chunks=(1, 1, *self.frame_shape)
        )

    def test_commit_returns_the_scan_shape(self, tmp_path: Path) -> None:
        sink = self.make_sink(tmp_path / self.name)
        self.write_all(sink, self.frames())
        assert sink.commit() == (3, 4, *self.frame_shape)


class TestEmdWriterStackSink(_EmdSinkTests):
    """A stack of unknown length, small frames grouped in gzip-compressed chunks."""

    def make_sink(self, path: Path) -> EmdWriter:
        return EmdWriter(path, self.frame_shape, self.dtype, compression="gzip")
