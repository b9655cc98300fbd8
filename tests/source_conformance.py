"""What every :class:`stemcast.source.Source` does, written once and run for every run model.

A format's test module subclasses :class:`SourceTests` (its name starting with ``Test``) and
provides the ``run_file`` fixture (the first file of a run on disk) and
:meth:`~SourceTests.open`. The expected values come from the format's ``file_reader``, the
public API the source must agree with, and from RosettaSciIO's reader of the same file
(:meth:`~SourceTests.read_reference`), never from the source itself.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import pytest

from stemcast.formats.runs import open_run
from stemcast.shape import complete_lines
from stemcast.source import Source

R = TypeVar("R", bound=Source)


class SourceTests(Generic[R]):
    """Conformance tests of a run model; subclass once per format (and kind of run).

    Attributes
    ----------
    reader_options
        Keyword arguments of the format's ``file_reader`` that give the scan the source's
        :meth:`~stemcast.source.Source.scan` stands for.
    name
        The run's expected name.
    header_bytes
        Bytes of the files that are not records (a main header).
    frames_past_scan
        Complete records after the last complete scan line (an interrupted scan), which the
        reader leaves out and the source counts.
    """

    reader_options: ClassVar[dict[str, Any]] = {}
    name: ClassVar[str]
    header_bytes: ClassVar[int] = 0
    frames_past_scan: ClassVar[int] = 0

    def open(self, path: Path) -> R:
        """Open the run whose first file is ``path``."""
        raise NotImplementedError

    def read(self, path: Path) -> dict[str, Any]:
        """The signal stemcast's ``file_reader`` gives for the run."""
        raise NotImplementedError

    def read_reference(self, path: Path) -> dict[str, Any]:
        """The signal RosettaSciIO's reader gives for the run."""
        raise NotImplementedError

    @pytest.fixture
    def run_file(self, tmp_path: Path) -> Path:
        """The first file of a run to test."""
        raise NotImplementedError

    # Helpers --------------------------------------------------------------------------------

    def frames_of(self, signal: dict[str, Any]) -> np.ndarray[Any, Any]:
        data = np.asarray(signal["data"])
        return data.reshape(-1, *data.shape[-2:])

    # Tests ----------------------------------------------------------------------------------

    def test_is_a_source_opened_from_its_first_file(self, run_file: Path) -> None:
        source = self.open(run_file)
        assert isinstance(source, Source)
        assert Path(source.path) == run_file
        assert type(open_run(run_file)) is type(source)
        assert source.name == self.name
        assert source.files[0] == source.path

    def test_describes_the_frames_the_reader_returns(self, run_file: Path) -> None:
        source = self.open(run_file)
        frames = self.frames_of(self.read(run_file))
        assert source.frames == len(frames) + self.frames_past_scan
        assert source.frame_shape == frames.shape[1:]
        assert source.dtype == frames.dtype.newbyteorder("=")
        sizes = sum(os.path.getsize(name) for name in source.files)
        # Complete records only: a record being written (or cut short) is not counted.
        rest = sizes - self.header_bytes - source.frames * source.record_size
        assert rest in range(source.record_size)

    def test_batches_give_every_frame_once_in_order_as_the_reader(self, run_file: Path) -> None:
        source = self.open(run_file)
        expected = self.frames_of(self.read(run_file))
        batches = list(source.batches(batch_frames=3))
        assert [batch.start for batch in batches] == list(range(0, source.frames, 3))
        assert all(len(batch) <= 3 for batch in batches)
        joined = np.concatenate([batch.frames for batch in batches])
        assert joined.dtype.isnative
        assert len(joined) == source.frames
        np.testing.assert_array_equal(joined[: len(expected)], expected)
        assert sum(len(batch.headers) for batch in batches) == source.frames

    def test_batches_of_a_range(self, run_file: Path) -> None:
        source = self.open(run_file)
        expected = self.frames_of(self.read(run_file))
        stop = min(source.frames, 7)
        batches = list(source.batches(1, stop, batch_frames=2))
        np.testing.assert_array_equal(
            np.concatenate([batch.frames for batch in batches]), expected[1:stop]
        )

    def test_frames_equal_the_reference_reader(self, run_file: Path) -> None:
        source = self.open(run_file)
        reference = self.frames_of(self.read_reference(run_file))
        joined = np.concatenate([batch.frames for batch in source.batches(batch_frames=8)])
        np.testing.assert_array_equal(joined[: len(reference)], reference)

    def test_value_range_is_the_extremes_of_the_frames(self, run_file: Path) -> None:
        source = self.open(run_file)
        frames = self.frames_of(self.read(run_file))
        count = len(frames)
        assert count
        assert source.value_range(count, batch_frames=4) == (
            float(frames.min()),
            float(frames.max()),
        )
        part = max(1, count // 2)
        assert source.value_range(part, batch_frames=4) == (
            float(frames[:part].min()),
            float(frames[:part].max()),
        )

    def test_scan_is_the_readers_navigation_shape(self, run_file: Path) -> None:
        source = self.open(run_file)
        found = source.scan()
        signal = self.read(run_file)
        data_shape = np.shape(signal["data"])[:-2]
        if found.frames is not None:
            assert found.frames.shape == data_shape
        else:
            kept = source.navigation(complete_lines(found.scan.shape, source.frames))
            assert tuple(reversed(kept)) == data_shape

    def test_signal_has_the_readers_axes_and_metadata(self, run_file: Path) -> None:
        source = self.open(run_file)
        found = source.scan()
        navigation = (
            tuple(reversed(found.frames.shape))
            if found.frames is not None
            else source.navigation(complete_lines(found.scan.shape, source.frames))
        )
        signal = source.signal(navigation, found.scan)
        expected = self.read(run_file)
        assert "data" not in signal
        assert signal["axes"] == expected["axes"]
        assert signal["metadata"] == expected["metadata"]


def quietly(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a reader with its warnings silenced (the reference warns about missing files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)
