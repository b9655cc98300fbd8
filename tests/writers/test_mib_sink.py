"""MibWriter is a FrameSink that writes in place, as a Merlin camera does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rsciio.quantumdetector as rsciio_mib

from sink_conformance import FrameSinkTests
from stemcast.errors import ParameterError
from stemcast.readers.mib import file_reader
from stemcast.writers.mib import MibWriter


def _frames(signal: dict[str, Any], frame_shape: tuple[int, int]) -> np.ndarray:
    # Both readers return the frames flipped vertically, as the reference always has.
    return np.asarray(signal["data"]).reshape(-1, *frame_shape)[:, ::-1]


class TestMibWriterSink(FrameSinkTests[MibWriter]):
    name = "run.mib"
    atomic = False

    def make_sink(self, path: Path) -> MibWriter:
        return MibWriter(path, frame_shape=self.frame_shape, counter_depth=12)

    def read(self, path: Path) -> np.ndarray:
        return _frames(file_reader(path)[0], self.frame_shape)

    def read_reference(self, path: Path) -> np.ndarray:
        return _frames(rsciio_mib.file_reader(str(path))[0], self.frame_shape)

    def test_abort_removes_the_hdr_it_wrote_but_not_one_of_an_earlier_file(
        self, tmp_path: Path
    ) -> None:
        first = MibWriter(tmp_path / "run1.mib", frame_shape=self.frame_shape)
        first.write(self.frames()[:2])
        first.commit()
        second = MibWriter(tmp_path / "run2.mib", frame_shape=self.frame_shape, write_hdr=False)
        second.write(self.frames()[2:4])
        second.abort()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run1.hdr", "run1.mib"]

    def test_writing_part_of_a_record_after_commit_is_refused(self, tmp_path: Path) -> None:
        sink = self.make_sink(tmp_path / self.name)
        sink.commit()
        size = (tmp_path / self.name).stat().st_size
        with pytest.raises(ParameterError, match="committed"):
            sink.write_partial(self.frames()[0], 100)
        assert (tmp_path / self.name).stat().st_size == size
