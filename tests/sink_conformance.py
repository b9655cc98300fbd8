"""What every :class:`stemcast.sink.FrameSink` does, written once and run for every writer.

A writer's test module subclasses :class:`FrameSinkTests` (its name starting with ``Test``) and
provides :meth:`~FrameSinkTests.make_sink`, which opens a writer of ``frames_total`` frames of
``frame_shape`` at a given path, and :meth:`~FrameSinkTests.read`, which reads the committed
output back with stemcast's own reader. :meth:`~FrameSinkTests.read_reference` reads it with
RosettaSciIO's reader, so the expected values never come from the code under test alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import pytest

from stemcast.batch import FrameBatch
from stemcast.errors import ParameterError
from stemcast.sink import FrameSink

S = TypeVar("S", bound=FrameSink)


class _Stop(Exception):
    """Raised inside a ``with`` block to stop a sink the way a failure would."""


class FrameSinkTests(Generic[S]):
    """Conformance tests of a streaming writer; subclass once per writer (and configuration).

    Attributes
    ----------
    name
        File name of the output (the first file of a series).
    atomic
        Whether the output appears under its final name only at commit. In-place writers
        (a camera's file that grows) show it from the start.
    frame_shape, dtype, max_value
        The frames written: ``frames_total`` random frames of this shape and type, with values
        in ``0..max_value``.
    frames_total
        Frames a sink is opened for (writers that need the count up front are given it).
    """

    name: ClassVar[str]
    atomic: ClassVar[bool]
    frame_shape: ClassVar[tuple[int, int]] = (16, 16)
    dtype: ClassVar[type[np.generic]] = np.uint16
    max_value: ClassVar[int] = 4095
    frames_total: ClassVar[int] = 12

    def make_sink(self, path: Path) -> S:
        """Open a sink that writes ``frames_total`` frames to ``path``."""
        raise NotImplementedError

    def read(self, path: Path) -> np.ndarray[Any, Any]:
        """The committed output at ``path``, as ``(n, rows, cols)`` frames, by stemcast."""
        raise NotImplementedError

    def read_reference(self, path: Path) -> np.ndarray[Any, Any]:
        """The committed output at ``path``, as ``(n, rows, cols)`` frames, by RosettaSciIO."""
        raise NotImplementedError

    # Helpers --------------------------------------------------------------------------------

    def frames(self) -> np.ndarray[Any, Any]:
        rng = np.random.default_rng(20240611)
        shape = (self.frames_total, *self.frame_shape)
        return rng.integers(0, self.max_value, shape, endpoint=True).astype(self.dtype)

    def write_all(self, sink: S, frames: np.ndarray[Any, Any]) -> None:
        """Write ``frames`` in batches of different sizes, a single frame among them."""
        sizes = [1, 5, 2, 4]
        assert sum(sizes) == len(frames)
        start = 0
        for size in sizes:
            batch = frames[start] if size == 1 else frames[start : start + size]
            sink.write(batch)
            start += size

    @staticmethod
    def partial_files(folder: Path) -> list[Path]:
        return sorted(folder.glob(".*.partial"))

    # Writing --------------------------------------------------------------------------------

    def test_batches_of_different_sizes_read_back_exact_in_order(self, tmp_path: Path) -> None:
        frames = self.frames()
        path = tmp_path / self.name
        sink = self.make_sink(path)
        self.write_all(sink, frames)
        sink.commit()
        np.testing.assert_array_equal(self.read(path), frames)

    def test_frame_batches_and_single_frames_read_back_exact(self, tmp_path: Path) -> None:
        frames = self.frames()
        path = tmp_path / self.name
        sink = self.make_sink(path)
        headers = np.zeros(5, dtype="V8")
        sink.write(FrameBatch(0, frames[:5], headers))
        for frame in frames[5:8]:
            sink.write(frame)
        sink.write(FrameBatch(8, frames[8:], headers[:4]))
        sink.commit()
        np.testing.assert_array_equal(self.read(path), frames)

    def test_reference_reader_reads_the_committed_output(self, tmp_path: Path) -> None:
        frames = self.frames()
        path = tmp_path / self.name
        with self.make_sink(path) as sink:
            self.write_all(sink, frames)
        np.testing.assert_array_equal(self.read_reference(path), frames)

    def test_frames_written_counts_the_frames_taken(self, tmp_path: Path) -> None:
        frames = self.frames()
        sink = self.make_sink(tmp_path / self.name)
        assert sink.frames_written == 0
        sink.write(frames[:3])
        assert sink.frames_written == 3
        sink.write(frames[3])
        assert sink.frames_written == 4
        sink.write(frames[4:4])
        assert sink.frames_written == 4
        sink.write(frames[4:])
        assert sink.frames_written == self.frames_total
        sink.commit()
        assert sink.frames_written == self.frames_total

    def test_path_is_the_final_output(self, tmp_path: Path) -> None:
        path = tmp_path / self.name
        sink = self.make_sink(path)
        assert sink.path == path
        sink.abort()

    # Where the output is, when --------------------------------------------------------------

    def test_output_is_under_its_final_name_before_commit_only_if_written_in_place(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / self.name
        sink = self.make_sink(path)
        sink.write(self.frames()[:3])
        assert path.exists() is not self.atomic
        if not self.atomic:
            assert path.stat().st_size > 0, "the frames written are not in the file yet"
        sink.abort()

    def test_abort_leaves_nothing_in_the_folder(self, tmp_path: Path) -> None:
        sink = self.make_sink(tmp_path / self.name)
        sink.write(self.frames()[:5])
        sink.abort()
        assert list(tmp_path.iterdir()) == []

    def test_abort_keeps_an_existing_file_untouched(self, tmp_path: Path) -> None:
        if not self.atomic:
            pytest.skip("a writer that writes in place replaces the file when it opens it")
        path = tmp_path / self.name
        path.write_bytes(b"an earlier acquisition")
        sink = self.make_sink(path)
        sink.write(self.frames()[:5])
        sink.abort()
        assert path.read_bytes() == b"an earlier acquisition"
        assert list(tmp_path.iterdir()) == [path]

    def test_commit_replaces_an_existing_file(self, tmp_path: Path) -> None:
        frames = self.frames()
        path = tmp_path / self.name
        path.write_bytes(b"an earlier acquisition")
        sink = self.make_sink(path)
        self.write_all(sink, frames)
        sink.commit()
        np.testing.assert_array_equal(self.read(path), frames)

    def test_no_temporary_file_is_left_after_commit(self, tmp_path: Path) -> None:
        sink = self.make_sink(tmp_path / self.name)
        self.write_all(sink, self.frames())
        sink.commit()
        assert self.partial_files(tmp_path) == []

    def test_no_temporary_file_is_left_after_abort(self, tmp_path: Path) -> None:
        sink = self.make_sink(tmp_path / self.name)
        sink.write(self.frames()[:5])
        sink.abort()
        assert self.partial_files(tmp_path) == []

    # Context manager ------------------------------------------------------------------------

    def test_leaving_the_block_normally_commits(self, tmp_path: Path) -> None:
        frames = self.frames()
        path = tmp_path / self.name
        with self.make_sink(path) as sink:
            self.write_all(sink, frames)
        np.testing.assert_array_equal(self.read(path), frames)
        assert self.partial_files(tmp_path) == []

    def test_an_exception_in_the_block_aborts_and_propagates(self, tmp_path: Path) -> None:
        stop = _Stop("the camera stopped")

        def acquire() -> None:
            with self.make_sink(tmp_path / self.name) as sink:
                sink.write(self.frames()[:5])
                raise stop

        with pytest.raises(_Stop) as raised:
            acquire()
        assert raised.value is stop
        assert list(tmp_path.iterdir()) == []

    def test_a_sink_aborted_in_the_block_stays_aborted(self, tmp_path: Path) -> None:
        with self.make_sink(tmp_path / self.name) as sink:
            sink.write(self.frames()[:5])
            sink.abort()
        assert sink.state == "aborted"
        assert list(tmp_path.iterdir()) == []

    # Finished sinks -------------------------------------------------------------------------

    def test_abort_after_commit_does_nothing(self, tmp_path: Path) -> None:
        frames = self.frames()
        path = tmp_path / self.name
        sink = self.make_sink(path)
        self.write_all(sink, frames)
        sink.commit()
        sink.abort()
        np.testing.assert_array_equal(self.read(path), frames)

    def test_second_abort_does_nothing(self, tmp_path: Path) -> None:
        sink = self.make_sink(tmp_path / self.name)
        sink.write(self.frames()[:5])
        sink.abort()
        sink.abort()
        assert list(tmp_path.iterdir()) == []

    def test_second_commit_returns_the_same_result(self, tmp_path: Path) -> None:
        path = tmp_path / self.name
        sink = self.make_sink(path)
        self.write_all(sink, self.frames())
        first = sink.commit()
        content = path.read_bytes()
        assert sink.commit() == first
        assert path.read_bytes() == content

    def test_writing_after_commit_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / self.name
        sink = self.make_sink(path)
        frames = self.frames()
        self.write_all(sink, frames)
        sink.commit()
        with pytest.raises(ParameterError, match="committed"):
            sink.write(frames[:1])
        np.testing.assert_array_equal(self.read(path), frames)

    def test_writing_after_abort_is_refused(self, tmp_path: Path) -> None:
        sink = self.make_sink(tmp_path / self.name)
        sink.abort()
        with pytest.raises(ParameterError, match="aborted"):
            sink.write(self.frames()[:1])
        assert list(tmp_path.iterdir()) == []

    def test_commit_after_abort_is_refused(self, tmp_path: Path) -> None:
        sink = self.make_sink(tmp_path / self.name)
        sink.write(self.frames()[:5])
        sink.abort()
        with pytest.raises(ParameterError, match="aborted"):
            sink.commit()
        assert list(tmp_path.iterdir()) == []
