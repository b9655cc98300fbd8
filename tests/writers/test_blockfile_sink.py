"""BlockfileWriter is an atomic FrameSink of uint8 frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rsciio.blockfile as rsciio_blockfile

from sink_conformance import FrameSinkTests
from stemcast.readers.blockfile import file_reader
from stemcast.writers.blockfile import BlockfileWriter


def _frames(signal: dict[str, Any], frame_size: int) -> np.ndarray:
    return np.asarray(signal["data"]).reshape(-1, frame_size, frame_size)


class TestBlockfileWriterSink(FrameSinkTests[BlockfileWriter]):
    name = "scan.blo"
    atomic = True
    dtype: ClassVar[type[np.generic]] = np.uint8
    max_value = 255

    def make_sink(self, path: Path) -> BlockfileWriter:
        # A 4 x 3 scan: the blockfile header needs the frame count before the first frame.
        return BlockfileWriter(path, (4, 3), self.frame_shape[0])

    def read(self, path: Path) -> np.ndarray:
        return _frames(file_reader(path)[0], self.frame_shape[0])

    def read_reference(self, path: Path) -> np.ndarray:
        return _frames(rsciio_blockfile.file_reader(str(path))[0], self.frame_shape[0])
