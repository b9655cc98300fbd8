"""Write a run's outputs while the camera writes the run.

A :class:`LiveConversion` is planned as soon as the scan shape of a run is known; from then
on the frames are given to it in order, as they become readable, and it writes them straight
into the outputs' temporary files. When the run has ended and filled its scan, :meth:`finish`
closes and renames the outputs, so that they are final a moment after the last frame.

Options that need the whole run before the first byte can be written are written after the
end, in one pass over the source: blockfile ``intensity_scaling="minmax"`` (the default for
sources wider than 8 bits) needs the run's range, which the live pass has already found, so
that pass reads each frame once more but never looks for the range again. Every other option
is written live (``None``, ``"dtype"``, ``"crop"``, an explicit range, and all EMD options).

A run that ends before filling its scan (interrupted) is not what was planned: the caller
drops the live outputs (:meth:`abort`) and converts the run afresh with its complete lines
(:func:`stemcast.convert.run.convert_run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from stemcast.batch import FrameBatch
from stemcast.convert.options import check_options, parse_targets, resolve_scaling
from stemcast.convert.run import (
    Converted,
    _check_targets,
    _convert,
    _Output,
    _Plan,
    _prepare_folder,
    _write_batch,
    output_paths,
)
from stemcast.errors import ParameterError
from stemcast.shape import ScanShape
from stemcast.source import Source

__all__ = ["LiveConversion"]

_logger = logging.getLogger(__name__)

#: Blockfile scalings that need the range of the whole run before anything is written.
WHOLE_RUN_SCALINGS = ("minmax",)


class LiveConversion:
    """The outputs of one run, written frame by frame as the run is acquired.

    Parameters
    ----------
    source
        The run, opened while it is written (it is refreshed as frames are asked for).
    targets
        Target names (``"emd,blockfile"`` or a list).
    output_dir
        The output root.
    scan
        The run's scan shape ``(x, y)``, both known.
    options
        Options of the targets (see :func:`stemcast.convert.options.check_options`).
    relative_to
        See :func:`stemcast.convert.run.output_paths`.

    Raises
    ------
    ParameterError
        Bad targets or options, a scan shape that is not two known sizes, or a shape a
        target cannot hold (nothing is written).
    OutputError
        When an output's folder cannot be written.
    """

    def __init__(
        self,
        source: Source,
        targets: str | Sequence[str],
        output_dir: str | os.PathLike[str],
        scan: ScanShape,
        *,
        options: Mapping[str, Any] | None = None,
        relative_to: str | os.PathLike[str] | None = None,
    ) -> None:
        if len(scan.shape) != 2 or not all(size > 0 for size in scan.shape):
            raise ParameterError(
                f"a live conversion needs the scan shape (x, y); got {scan.shape}",
                parameter="navigation_shape",
                path=source.path,
            )
        chosen = parse_targets(targets)
        checked = check_options(chosen, options)
        navigation = source.navigation(scan.shape)
        self._plan = _Plan(
            source, source.name, navigation, None, scan, source.signal(navigation, scan)
        )
        _check_targets(self._plan, chosen, checked)
        self.paths = output_paths(source.path, chosen, output_dir, relative_to=relative_to)
        self._options = {target: dict(checked[target]) for target in chosen}
        if "blockfile" in self._options:
            self._options["blockfile"] = resolve_scaling(self._options["blockfile"], source.dtype)
        #: Targets written after the end, in one more pass over the source.
        self.deferred = [
            target
            for target in chosen
            if target == "blockfile"
            and self._options[target].get("intensity_scaling") in WHOLE_RUN_SCALINGS
        ]
        self._source = source
        self._range = (np.inf, -np.inf)
        self._pool = ThreadPoolExecutor(max_workers=len(chosen))
        self._outputs: list[_Output] = []
        self.written = 0
        for path in self.paths.values():
            _prepare_folder(path)
        try:
            for target in chosen:
                if target not in self.deferred:
                    self._outputs.append(
                        _Output(target, self.paths[target], self._plan, self._options[target])
                    )
        except BaseException:
            self.abort()
            raise

    @property
    def count(self) -> int:
        """Frames the planned scan holds."""
        return self._plan.count

    @property
    def navigation(self) -> tuple[int, ...]:
        """Navigation shape written, HyperSpy order (axes of length 1 dropped for Merlin)."""
        return self._plan.navigation

    def frames_to_read(self, readable: int) -> int:
        """Return the frames to write next, of the ``readable`` ones: those the scan holds."""
        return max(0, min(readable, self.count) - self.written)

    def write(self, batch: FrameBatch) -> None:
        """Write the next frames of the run (``batch.start`` must be :attr:`written`).

        Parameters
        ----------
        batch
            Frames in order; those beyond the planned scan are ignored.

        Raises
        ------
        ParameterError
            When the batch does not start where the last one stopped.
        OutputError
            When an output cannot be written.
        """
        if batch.start != self.written:
            raise ParameterError(
                f"frames {batch.start}:{batch.stop} given after {self.written} were written",
                parameter="batch",
                path=self._source.path,
            )
        frames = batch.frames[: max(0, self.count - batch.start)]
        if not len(frames):
            return
        if self.deferred:
            low, high = self._range
            self._range = (min(low, frames.min()), max(high, frames.max()))
        if self._outputs:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*data does not have uint8 dtype", UserWarning)
                _write_batch(self._outputs, frames, self._pool)
        self.written += len(frames)

    def finish(
        self,
        source: Source,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Converted:
        """Close the outputs written live and write the deferred ones; rename them all.

        Parameters
        ----------
        source
            The run as it is now (holding every frame of the scan).
        progress, cancelled
            As :func:`stemcast.convert.run.convert_run`, for the deferred pass.

        Returns
        -------
        Converted
            The outputs and what was written.

        Raises
        ------
        ParameterError
            When fewer frames than the scan holds were written.
        OutputError
            When an output cannot be written; no output is left.
        stemcast.convert.run.Cancelled
            When ``cancelled()`` returned ``True``; no output is left.
        """
        if self.written < self.count:
            self.abort()
            raise ParameterError(
                f"{self.written} of the {self.count} frames of the scan were written",
                parameter="frames",
                path=self._source.path,
            )
        done: list[_Output] = []
        try:
            for output in self._outputs:
                output.commit()
                done.append(output)
            deferred = self._deferred(source, progress, cancelled)
        except BaseException:
            for output in done:
                with contextlib.suppress(OSError):
                    output.drop()
            self.abort()
            raise
        finally:
            self._pool.shutdown()
        outputs = {output.target: os.fspath(output.path) for output in self._outputs}
        if deferred is not None:
            outputs.update(deferred.outputs)
        read = self.count * source.record_size
        return Converted(
            outputs={target: outputs[target] for target in self.paths},
            frames=self.count,
            navigation_shape=self.navigation,
            bytes_read=read + (0 if deferred is None else deferred.bytes_read),
            bytes_written=sum(Path(path).stat().st_size for path in outputs.values()),
        )

    def _deferred(
        self,
        source: Source,
        progress: Callable[[int, int], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> Converted | None:
        """Write the targets that needed the whole run, with the range found live."""
        if not self.deferred:
            return None
        low, high = self._range
        if not low < high:
            # A flat run: any range maps it to one grey level, as "minmax" does.
            high = low + 1
        targets: dict[str, tuple[Path, Mapping[str, Any], Mapping[str, Any]]] = {}
        for target in self.deferred:
            options = {**self._options[target], "intensity_scaling": [float(low), float(high)]}
            targets[target] = (self.paths[target], options, {})
        plan = dataclasses.replace(self._plan, source=source)
        rows, cols = plan.frame_shape
        step = max(1, (16 * 2**20) // max(rows * cols * source.dtype.itemsize, 1))
        return _convert(
            plan,
            targets,
            step=step,
            progress=progress,
            cancelled=cancelled or _never,
        )

    def abort(self) -> None:
        """Remove every output written so far (their temporary files)."""
        for output in self._outputs:
            try:
                output.drop()
            except Exception as error:  # remove the others all the same
                _logger.error("%s: could not remove this output: %s", output.path, error)
        self._outputs = []
        self._pool.shutdown(wait=False)


def _never() -> bool:
    return False
