"""Convert a finished run to blockfile and EMD: one pass over the source, bounded memory.

The run is read once, batch by batch (about 16 MiB of frames), with the next batch read and
decoded in a thread while the current one is written; every requested writer gets each
batch. Frames are oriented as the offline readers return them, and the navigation shape is
the one they find (or the one given), so that reading an output with the reference library
gives what reading the source with it gives.

Navigation shape
----------------
* Given (the service passes the shape it inferred live): used, keeping its complete lines.
* Otherwise inferred as the offline readers do: for a Merlin run the user-free rules of
  :func:`stemcast.readers.mib.scan_shape_of` (``.hdr``, frames per trigger, timestamps); for
  a TVIPS series the rotator index of the frame headers (``scan_shape="auto"`` of
  :func:`stemcast.readers.tvips.file_reader`: a position may repeat a neighbouring frame).
* An interrupted scan keeps its complete lines. When not one line is complete, the frames
  are written as a stack: EMD ``(n,)``, blockfile an ``n x 1`` scan. A blockfile holds at
  most two navigation axes of at most 65535 positions: other shapes are refused
  (:class:`~stemcast.errors.ParameterError`) before anything is written.
* As the Merlin reader does, navigation axes of length 1 are dropped for Merlin runs.

Outputs
-------
Every output is written under a temporary name in its final folder, fsynced and renamed
(:func:`stemcast._atomic.atomic_path`); temporary files left by a killed process are removed
first. All outputs of one call are written together and renamed at the end; if one fails, the
others of the call are removed, so a call leaves all its outputs or none. Before each EMD
batch the free space of its folder is checked: HDF5 crashes the process when it closes a
file after a failed write, so a full disk is refused before HDF5 sees it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from stemcast.batch import FrameBatch
from stemcast.convert.options import (
    AUTO_SCALING,
    TARGETS,
    check_options,
    parse_targets,
    resolve_scaling,
)
from stemcast.errors import (
    OutputError,
    ParameterError,
    StemcastError,
    TruncatedError,
)
from stemcast.formats.blockfile.spec import MAX_SIZE, RECORD_HEADER_SIZE, byte_order
from stemcast.formats.runs import open_run, run_name, run_source
from stemcast.shape import Evidence, ScanShape, check_navigation_shape, complete_lines
from stemcast.sink import FrameSink
from stemcast.source import Source

__all__ = [
    "TARGETS",
    "Cancelled",
    "Converted",
    "check_conversion",
    "check_options",
    "convert_mib",
    "convert_on_worker",
    "convert_run",
    "output_paths",
    "parse_targets",
    "run_source",
    "throttled",
]

_logger = logging.getLogger(__name__)

#: Source frames read, decoded and written at a time.
_BATCH_BYTES = 16 * 2**20
#: Free space kept for HDF5's own structures (chunk index, metadata) when it closes a file.
_EMD_RESERVE_BYTES = 2**20
_EMD_RESERVE_PER_FRAME = 64
#: The largest chunk HDF5 stores, in bytes (``H5Pset_chunk``: a chunk holds less than 4 GiB).
_MAX_CHUNK_BYTES = 2**32 - 1
_TAG = re.compile(r"[0-9A-Za-z_-]+")
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.partial$")
#: Seconds between two looks at the cancel event, and between two progress reports, on a
#: dask worker (each is a round trip to the scheduler).
_WORKER_POLL_S = 0.5

_QUIET = threading.Lock()


class Cancelled(Exception):
    """The conversion was cancelled between two batches; no output was left behind."""


# ------------------------------------------------------------------------------------------
# Sources and outputs
# ------------------------------------------------------------------------------------------


def output_paths(
    source: str | os.PathLike[str],
    targets: Sequence[str],
    output_dir: str | os.PathLike[str],
    *,
    relative_to: str | os.PathLike[str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Where the outputs of a run go: ``output_dir / [sub folder /] <run name>[.tag]<suffix>``.

    Parameters
    ----------
    source
        The run's first file (see :func:`run_source`).
    targets
        Requested targets.
    output_dir
        The output root.
    relative_to
        When ``source`` lies under this folder, its folder relative to it is recreated
        under ``output_dir`` (e.g. the watched folder of the service).
    tags
        A tag per target, put between the run name and the suffix (``scan.1f2e3d4c.emd``):
        the service tags the outputs of conversions with other options or scan shapes than
        the run's usual one, so that they never share a file. Untagged targets keep
        ``<run name><suffix>``.

    Returns
    -------
    dict
        Absolute output path of each target. The run name is the ``.mib`` file's stem, or
        the series name (stem without ``_000``) for TVIPS.

    Raises
    ------
    ParameterError
        When a tag is not letters, digits, ``-`` and ``_``.
    """
    first = Path(os.path.abspath(source))
    folder = Path(os.path.abspath(output_dir))
    if relative_to is not None:
        with contextlib.suppress(ValueError):
            folder = folder / first.parent.relative_to(os.path.abspath(relative_to))
    name = run_name(first)
    given = tags or {}
    for target, tag in given.items():
        if not _TAG.fullmatch(tag):
            raise ParameterError(
                f"{tag!r} is not a tag (letters, digits, - and _)", parameter=f"tags.{target}"
            )
    return {
        target: folder / f"{name}{'.' + given[target] if target in given else ''}{TARGETS[target]}"
        for target in parse_targets(targets)
    }


# ------------------------------------------------------------------------------------------
# The plan: which frames go where, with which axes and metadata
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What a conversion writes: navigation shape, frame order, axes and metadata."""

    source: Source
    name: str
    #: Navigation shape in HyperSpy order, ``(x, y)``, ``(n,)`` or ``()``.
    navigation: tuple[int, ...]
    #: Source frame of each output position (raster order), non-decreasing; ``None`` when
    #: the positions are the frames ``0..count-1``.
    positions: npt.NDArray[np.int64] | None
    scan: ScanShape
    signal: dict[str, Any]

    @property
    def count(self) -> int:
        """Frames written."""
        return math.prod(self.navigation)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of a frame."""
        return self.source.frame_shape


def _open(first: Path) -> Source:
    source = open_run(first)
    if source.frames == 0:
        raise TruncatedError("the run holds no complete frame", path=first)
    return source


def _plan(
    first: Path, navigation_shape: Sequence[int] | None, *, partial_line_stack: bool = True
) -> _Plan:
    source = _open(first)
    available = source.frames
    if navigation_shape is not None:
        shape = check_navigation_shape(navigation_shape)
        scan = ScanShape(shape, Evidence.USER, f"navigation shape {shape} given")
        grid = None
    else:
        found = source.scan()
        scan, grid = found.scan, found.frames
    if grid is not None:
        navigation = scan.shape
        positions: npt.NDArray[np.int64] | None = grid.reshape(-1)
    else:
        navigation = complete_lines(scan.shape, available)
        positions = None
        if len(navigation) > 1 and navigation[-1] == 0:
            if not partial_line_stack:
                raise ParameterError(
                    f"{available} frames do not fill one line of the scan {scan.shape}",
                    path=first,
                    parameter="navigation_shape",
                )
            _logger.warning(
                "%s: %d frames do not fill one line of the scan %s: writing a stack",
                first,
                available,
                scan.shape,
            )
            navigation = (available,)
        elif navigation != scan.shape:
            _logger.warning(
                "%s: the scan %s ended after %d frames; keeping %s",
                first,
                scan.shape,
                available,
                navigation,
            )
    navigation = source.navigation(navigation)
    signal = source.signal(navigation, scan)
    return _Plan(source, source.name, navigation, positions, scan, signal)


def _check_targets(plan: _Plan, targets: Sequence[str], options: Mapping[str, Any]) -> None:
    """Refuse what a target cannot hold, before anything is written."""
    rows, cols = plan.frame_shape
    where = plan.source.path
    if "blockfile" in targets:
        if rows != cols:
            raise ParameterError(
                f"a blockfile needs square frames; these are {rows} x {cols}",
                parameter="targets",
                path=where,
            )
        if cols > MAX_SIZE:
            raise ParameterError(
                f"frames of {cols} pixels: a blockfile holds at most {MAX_SIZE}",
                parameter="targets",
                path=where,
            )
        if len(plan.navigation) > 2 or any(size > MAX_SIZE for size in plan.navigation):
            raise ParameterError(
                f"navigation shape {plan.navigation}: a blockfile holds at most 2 navigation "
                f"axes of at most {MAX_SIZE} positions",
                parameter="navigation_shape",
                path=where,
            )
    chunks = options.get("emd", {}).get("chunks")
    if "emd" in targets and chunks is not None:
        _check_chunks(plan, chunks)


def _check_chunks(plan: _Plan, chunks: Sequence[int]) -> None:
    """Refuse EMD chunks of another rank than the data, larger than it, or beyond HDF5's limit."""
    shape = (*reversed(plan.navigation), *plan.frame_shape)
    described = f"navigation {tuple(reversed(plan.navigation))}, frame {plan.frame_shape}"
    problem = None
    if len(chunks) != len(shape):
        problem = f"{list(chunks)} has {len(chunks)} axes; the data has {len(shape)} ({described})"
    elif any(size > length for size, length in zip(chunks, shape, strict=True)):
        problem = f"{list(chunks)} is larger than the data {shape} along an axis ({described})"
    else:
        size = math.prod(chunks) * plan.source.dtype.itemsize
        if size > _MAX_CHUNK_BYTES:
            problem = f"{list(chunks)} makes chunks of {size} bytes; HDF5 holds less than 4 GiB"
    if problem is not None:
        raise ParameterError(problem, parameter="options.emd.chunks", path=plan.source.path)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def _batch_frames(plan: _Plan) -> int:
    rows, cols = plan.frame_shape
    return max(1, _BATCH_BYTES // max(rows * cols * plan.source.dtype.itemsize, 1))


def _read_span(plan: _Plan) -> tuple[int, int]:
    """Return the span of source frames to read, ``(start, stop)``."""
    if plan.positions is None:
        return 0, plan.count
    return int(plan.positions[0]), int(plan.positions[-1]) + 1


def _source_batches(source: Source, start: int, stop: int, step: int) -> Iterator[FrameBatch]:
    batches = source.batches(start, stop, batch_frames=step)
    while True:
        try:
            batch = next(batches, None)
        except OSError as error:
            raise StemcastError(
                f"cannot read the run: {_os_reason(error)}", path=source.path
            ) from error
        if batch is None:
            return
        yield batch


def _frames(plan: _Plan, step: int) -> Iterator[npt.NDArray[Any]]:
    """Frames of the output positions in raster order, in batches read once each."""
    from stemcast.batch import read_ahead

    start, stop = _read_span(plan)
    batches = cast(
        Generator[FrameBatch, None, None],
        read_ahead(_source_batches(plan.source, start, stop, step)),
    )
    with contextlib.closing(batches):
        if plan.positions is None:
            for batch in batches:
                yield batch.frames
            return
        done = 0
        for batch in batches:
            end = int(np.searchsorted(plan.positions, batch.stop, side="left"))
            if end > done:
                yield batch.frames[plan.positions[done:end] - batch.start]
            done = end


def _data_range(
    plan: _Plan, step: int, cancelled: Callable[[], bool]
) -> tuple[tuple[float, float], int]:
    """Minimum and maximum of the frames to write (the first pass of ``"minmax"``)."""
    start, stop = _read_span(plan)
    if plan.positions is None:
        if cancelled():
            raise Cancelled(f"conversion of {plan.source.path} cancelled")
        return plan.source.value_range(plan.count, batch_frames=step), plan.count
    low, high = np.inf, -np.inf
    for frames in _frames(plan, step):
        if cancelled():
            raise Cancelled(f"conversion of {plan.source.path} cancelled")
        low, high = min(low, frames.min()), max(high, frames.max())
    return (float(low), float(high)), stop - start


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OS error while writing ``path`` into an :class:`OutputError` naming it."""
    try:
        yield
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(_os_reason(error), path=path) from error


def _os_reason(error: OSError) -> str:
    if error.errno is not None and error.strerror:
        return f"[Errno {error.errno}] {error.strerror}"
    return str(error)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a zombie (killed, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # running, as another user
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def _prepare_folder(path: Path) -> None:
    """Create the output's folder; remove temporary files of it left by dead processes."""
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(path.parent):
            match = _PARTIAL.match(entry.name)
            if match and match["name"] == path.name and not _pid_alive(int(match["pid"])):
                _logger.info("removing %s, left by a process that ended", entry.path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


class _Output:
    """One target being written: its sink, its path, and whether it was committed."""

    def __init__(
        self,
        target: str,
        path: Path,
        plan: _Plan,
        options: Mapping[str, Any],
        writer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.target = target
        self.path = path
        self.committed = False
        #: Free space an HDF5 file needs to close cleanly; 0 for outputs that fail safely.
        self.reserve = 0
        self._plan = plan
        extra = writer_options or {}
        with _writing(path):
            if target == "blockfile":
                self._sink: FrameSink = self._blockfile(options, extra)
            else:
                self._sink = self._emd(options)

    def _blockfile(self, options: Mapping[str, Any], extra: Mapping[str, Any]) -> FrameSink:
        from stemcast.formats.blockfile.writer import BlockfileWriter

        plan = self._plan
        scaling = options.get("intensity_scaling", AUTO_SCALING)
        if scaling is None and plan.source.dtype != np.uint8:
            _logger.warning(
                "%s: %s frames are cast to uint8 without scaling, so counts above 255 wrap "
                "around; the blockfile option intensity_scaling avoids it",
                self.path,
                plan.source.dtype,
            )
        header = {**_blockfile_header(plan), **extra.get("header", {})}
        return BlockfileWriter(
            self.path,
            plan.navigation,
            plan.frame_shape[1],
            intensity_scaling=tuple(scaling) if isinstance(scaling, list) else scaling,
            header=header,
            endianess=options.get("endianess", "<"),
            **{key: value for key, value in extra.items() if key != "header"},
        )

    def _emd(self, options: Mapping[str, Any]) -> FrameSink:
        from stemcast.formats.emd.writer import EmdWriter

        plan = self._plan
        self.reserve = _EMD_RESERVE_BYTES + _EMD_RESERVE_PER_FRAME * plan.count
        _check_space([self], None)
        return EmdWriter(
            self.path,
            plan.frame_shape,
            plan.source.dtype,
            scan_shape=plan.navigation,
            axes=plan.signal["axes"],
            title=plan.name,
            metadata=plan.signal["metadata"],
            chunks=options.get("chunks"),
            compression=options.get("compression"),
            compression_opts=options.get("compression_opts"),
            shuffle=options.get("shuffle", False),
        )

    def batch_bytes(self, frames: npt.NDArray[Any]) -> int:
        """Bytes that writing ``frames`` adds to the output (at most)."""
        if self.target == "blockfile":
            return len(frames) * (int(frames[0].size) + RECORD_HEADER_SIZE)
        return int(frames.nbytes)

    def write(self, frames: npt.NDArray[Any]) -> None:
        """Append frames in raster order."""
        with _writing(self.path):
            self._sink.write(frames)

    def commit(self) -> None:
        """Finish the file and rename it into place."""
        with _writing(self.path):
            self._sink.commit()
        self.committed = True

    def drop(self) -> None:
        """Remove the output: the temporary file, or the final file if already renamed."""
        if self.committed:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        self._sink.abort()


def _write_batch(
    outputs: Sequence[_Output], frames: npt.NDArray[Any], pool: Executor | None
) -> None:
    """Give the batch to every output, at once in ``pool`` (numpy and file I/O release the GIL).

    Without a pool (the first batch, which sets the writers up) the outputs are written here,
    one after the other, with the writers' advice on casting to uint8 silenced: the
    conversion logs it once instead (see :meth:`_Output._blockfile`).
    """
    _check_space(outputs, frames)
    if pool is None:
        # The warning filters are global: conversions in other threads take turns.
        with _QUIET, warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*data does not have uint8 dtype", UserWarning)
            for output in outputs:
                output.write(frames)
        return
    pending = [pool.submit(output.write, frames) for output in outputs]
    wait(pending)
    for future in pending:
        future.result()


def _check_space(outputs: Sequence[_Output], frames: npt.NDArray[Any] | None) -> None:
    """Refuse a batch that would leave an HDF5 output less than its reserve of free space.

    The outputs in one file system share its free space: all their bytes of the batch
    (``None``: no batch, the reserve alone) count. Raises :class:`OutputError` (``ENOSPC``)
    naming the HDF5 output.
    """
    for output in outputs:
        if not output.reserve:
            continue
        with _writing(output.path):
            device = os.stat(output.path.parent).st_dev
            needed = output.reserve
            if frames is not None:
                needed += sum(
                    other.batch_bytes(frames)
                    for other in outputs
                    if os.stat(other.path.parent).st_dev == device
                )
            stats = os.statvfs(output.path.parent)
            if stats.f_bavail * stats.f_frsize < needed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _blockfile_header(plan: _Plan) -> dict[str, Any]:
    """Header fields from the run's metadata and axes, as the blockfile writer takes them."""
    from stemcast.formats.blockfile.writer import signal_header

    axes = sorted(plan.signal["axes"], key=lambda axis: axis.get("index_in_array", 0))
    split = len(axes) - 2
    with warnings.catch_warnings():
        # Camera calibrations (1/nm, s) have no blockfile unit: the header keeps their
        # numbers, as the reference writer does, without a warning per conversion.
        warnings.simplefilter("ignore", UserWarning)
        try:
            return signal_header(plan.signal, axes[:split], axes[split:])
        except ParameterError as error:
            _logger.warning(
                "%s: %s; the blockfile gets the default calibration", plan.source.path, error
            )
            return signal_header({"metadata": plan.signal["metadata"]}, [], [{}])


# ------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Converted:
    """What a conversion wrote.

    Attributes
    ----------
    outputs
        Absolute path of the output of each target.
    frames
        Frames written (complete lines only).
    navigation_shape
        Navigation shape written, HyperSpy order: ``(x, y)``, ``(n,)`` for a stack, ``()``
        for a single frame.
    bytes_read
        Bytes read from the source (both passes for ``"minmax"`` scaling).
    bytes_written
        Total size of the outputs.
    """

    outputs: dict[str, str]
    frames: int
    navigation_shape: tuple[int, ...]
    bytes_read: int
    bytes_written: int

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dictionary."""
        return {
            "outputs": dict(self.outputs),
            "frames": self.frames,
            "navigation_shape": list(self.navigation_shape),
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
        }


def _never() -> bool:
    return False


def check_conversion(
    source: str | os.PathLike[str],
    targets: Sequence[str],
    options: Mapping[str, Any] | None = None,
    *,
    navigation_shape: Sequence[int] | None = None,
) -> None:
    """Plan a conversion as :func:`convert_run` would, and refuse what it could not write.

    Nothing is written: the service calls this before it accepts a conversion, so that a
    request it accepts does not fail later for a reason known now.

    Parameters
    ----------
    source
        Any file of the run.
    targets
        Target names (see :data:`TARGETS`).
    options
        Options of the targets (see :func:`check_options`).
    navigation_shape
        ``(x, y)`` scan shape given by a user: its first line must be filled by the frames
        (otherwise :func:`convert_run` would write a stack instead); ``None``: inferred.

    Raises
    ------
    ParameterError
        Bad targets or options; a navigation shape whose first line the frames do not fill;
        EMD chunks of another rank than the data, larger than it or of 4 GiB or more; a shape
        or frame size a blockfile cannot hold.
    FormatError, TruncatedError
        The source is not a readable run, or holds no complete frame.
    """
    chosen = parse_targets(targets)
    checked = check_options(chosen, options)
    first = run_source(source)
    plan = _plan(first, navigation_shape, partial_line_stack=navigation_shape is None)
    _check_targets(plan, chosen, checked)


def convert_run(
    source: str | os.PathLike[str],
    targets: Sequence[str],
    output_dir: str | os.PathLike[str],
    *,
    options: Mapping[str, Any] | None = None,
    navigation_shape: Sequence[int] | None = None,
    relative_to: str | os.PathLike[str] | None = None,
    tags: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Converted:
    """Convert one run to the targets, reading it once with bounded memory.

    Parameters
    ----------
    source
        Any file of the run (see :func:`run_source`); it is opened read-only.
    targets
        Target names (see :data:`TARGETS`).
    output_dir
        The output root; missing folders are created.
    options
        Options of the targets (see :func:`check_options`).
    navigation_shape
        ``(x, y)`` scan shape to use (complete lines of it are kept); ``None`` infers it as
        the offline readers do (see the module documentation).
    relative_to, tags
        See :func:`output_paths`.
    progress
        Called with ``(frames_done, frames_total)`` before the first batch and after each.
    cancelled
        Asked between batches; when it returns ``True`` the outputs are dropped and
        :class:`Cancelled` is raised.

    Returns
    -------
    Converted
        The outputs and what was written.

    Raises
    ------
    ParameterError
        Bad targets, options or navigation shape, or a shape a target cannot hold (nothing
        is written).
    FormatError, TruncatedError
        The source is not a readable run.
    OutputError
        An output could not be written (unwritable folder, no space left, ...); no output of
        the call is left.
    Cancelled
        ``cancelled()`` returned ``True``; no output is left.
    """
    chosen = parse_targets(targets)
    checked = check_options(chosen, options)
    first = run_source(source)
    plan = _plan(first, navigation_shape)
    _check_targets(plan, chosen, checked)
    paths = output_paths(first, chosen, output_dir, relative_to=relative_to, tags=tags)
    return _convert(
        plan,
        {target: (path, checked[target], {}) for target, path in paths.items()},
        step=_batch_frames(plan),
        progress=progress,
        cancelled=cancelled or _never,
    )


def _convert(
    plan: _Plan,
    targets: Mapping[str, tuple[Path, Mapping[str, Any], Mapping[str, Any]]],
    *,
    step: int,
    progress: Callable[[int, int], None] | None,
    cancelled: Callable[[], bool],
) -> Converted:
    """Write the planned frames to every target: ``{target: (path, options, writer_options)}``.

    The targets' options are checked; writer options go to the writer as they are.
    """
    first = plan.source.path
    _logger.info(
        "converting %s (%s, scan %s from %s: %s) to %s",
        first,
        "x".join(map(str, plan.frame_shape)),
        plan.navigation,
        plan.scan.evidence.value,
        plan.scan.detail,
        ", ".join(str(path) for path, _, _ in targets.values()),
    )
    for path, _, _ in targets.values():
        _prepare_folder(path)
    options = {target: dict(target_options) for target, (_, target_options, _) in targets.items()}
    frames_read = 0
    if "blockfile" in options:
        options["blockfile"] = resolve_scaling(options["blockfile"], plan.source.dtype)
        if options["blockfile"].get("intensity_scaling") == "minmax":
            data_range, frames_read = _data_range(plan, step, cancelled)
            options["blockfile"]["intensity_scaling"] = list(data_range)
    start, stop = _read_span(plan)
    outputs: list[_Output] = []
    try:
        for target, (path, _, writer_options) in targets.items():
            outputs.append(_Output(target, path, plan, options[target], writer_options))
        done = 0
        if progress is not None:
            progress(0, plan.count)
        with ThreadPoolExecutor(max_workers=len(outputs)) as pool:
            for frames in _frames(plan, step):
                if cancelled():
                    raise Cancelled(f"conversion of {first} cancelled")
                _write_batch(outputs, frames, pool if done else None)
                done += len(frames)
                if progress is not None:
                    progress(done, plan.count)
        if cancelled():
            raise Cancelled(f"conversion of {first} cancelled")
        for output in outputs:
            output.commit()
    except BaseException:
        for output in outputs:
            try:
                output.drop()
            except Exception as error:  # the first error is the one to raise; say this one
                _logger.error("%s: could not remove this output: %s", output.path, error)
        raise
    frames_read += stop - start
    return Converted(
        outputs={output.target: os.fspath(output.path) for output in outputs},
        frames=plan.count,
        navigation_shape=plan.navigation,
        bytes_read=frames_read * plan.source.record_size,
        bytes_written=sum(output.path.stat().st_size for output in outputs),
    )


def convert_mib(
    source: str | os.PathLike[str],
    filename: str | os.PathLike[str],
    *,
    navigation_shape: Sequence[int] | None = None,
    intensity_scaling: str | tuple[float, float] | None = None,
    navigator: str | npt.ArrayLike | None = "navigator",
    header: Mapping[str, Any] | None = None,
    batch_frames: int | None = None,
    show_progressbar: bool = False,
    endianess: str | None = None,
    endianness: str | None = None,
) -> Path:
    """Convert a Merlin run to a blockfile, reading and writing a batch of frames at a time.

    A call of the one converter (:func:`convert_run`) with a blockfile output of your
    choosing: the frames are oriented as :func:`stemcast.readers.mib.file_reader` (and the
    reference reader) return them, so the result equals reading the run with ``file_reader``
    and writing it with :func:`stemcast.writers.blockfile.file_writer`. The scan shape is the
    one ``file_reader`` finds (``.hdr``, timestamps); an interrupted acquisition keeps its
    complete lines.

    Parameters
    ----------
    source
        A ``.mib`` file of the run.
    filename
        The ``.blo`` file to write.
    navigation_shape
        ``(x, y)`` scan shape; inferred when ``None``.
    intensity_scaling, navigator, show_progressbar, endianess, endianness
        As :func:`stemcast.writers.blockfile.file_writer`. ``"minmax"`` takes a first pass
        over the run for the minimum and maximum.
    header
        Header fields to write (calibrations ``SX``, ``SY``, ``SDP``, ``Beam_energy``, ...,
        ``"Note"``) over those taken from the run's metadata (``Acquisition_time``: the time
        of the first frame).
    batch_frames
        Frames read and converted at a time; by default about 16 MiB of source frames.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ParameterError
        Bad options, non-square frames, or a scan that the frames do not fill one line of.
    """
    first = run_source(source)
    if first.suffix.lower() != ".mib":
        raise ParameterError("not a Merlin .mib file", path=source, parameter="source")
    scaling = list(intensity_scaling) if isinstance(intensity_scaling, tuple) else intensity_scaling
    checked = check_options(
        ["blockfile"],
        {
            "blockfile": {
                "intensity_scaling": scaling,
                "endianess": byte_order(endianess, endianness),
            }
        },
    )
    plan = _plan(first, navigation_shape, partial_line_stack=False)
    _check_targets(plan, ["blockfile"], checked)
    if batch_frames is not None and batch_frames < 1:
        raise ParameterError(f"{batch_frames} is below 1", parameter="batch_frames")
    writer_options = {
        "navigator": navigator,
        "header": dict(header or {}),
        "show_progressbar": show_progressbar,
    }
    _convert(
        plan,
        {"blockfile": (Path(filename), checked["blockfile"], writer_options)},
        step=batch_frames or _batch_frames(plan),
        progress=None,
        cancelled=_never,
    )
    return Path(filename)


def throttled(report: Callable[[int, int], None], interval_s: float) -> Callable[[int, int], None]:
    """Wrap a progress report so that it runs at most every ``interval_s``, and at the end.

    Parameters
    ----------
    report
        Called with ``(frames_done, frames_total)``; a costly call (a file, a scheduler).
    interval_s
        Least time between two calls, but for the last one (``done >= total``).

    Returns
    -------
    callable
        A ``progress`` callback for :func:`convert_run`.
    """
    reported = -math.inf

    def progress(done: int, total: int) -> None:
        nonlocal reported
        now = time.monotonic()
        if done >= total or now - reported >= interval_s:
            reported = now
            report(done, total)

    return progress


def convert_on_worker(
    job_id: str,
    source: str,
    targets: list[str],
    output_dir: str,
    *,
    options: dict[str, Any] | None = None,
    navigation_shape: list[int] | None = None,
    relative_to: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run :func:`convert_run` as a dask.distributed task.

    Cancellation is the ``distributed.Event`` named ``stemcast-cancel-<job_id>`` (looked at
    every 0.5 s at most); progress goes to the ``distributed.Variable`` named
    ``stemcast-progress-<job_id>`` as ``{"frames_done": d, "frames_total": t}`` (at most
    every 0.5 s, and when the last batch is written).

    Parameters
    ----------
    job_id
        Identifier of the job, unique on the cluster.
    source, targets, output_dir, options, navigation_shape, relative_to, tags
        As :func:`convert_run`.

    Returns
    -------
    dict
        :meth:`Converted.as_dict` of the result.

    Raises
    ------
    Cancelled
        When the event was set.
    """
    from distributed import Event, Variable

    event = Event(f"stemcast-cancel-{job_id}")  # type: ignore[no-untyped-call]
    variable = Variable(f"stemcast-progress-{job_id}")  # type: ignore[no-untyped-call]
    looked = -math.inf
    stop = False

    def cancelled() -> bool:
        nonlocal looked, stop
        now = time.monotonic()
        if not stop and now - looked >= _WORKER_POLL_S:
            looked = now
            stop = bool(event.is_set())  # type: ignore[no-untyped-call]
        return stop

    def report(done: int, total: int) -> None:
        variable.set({"frames_done": done, "frames_total": total})  # type: ignore[no-untyped-call]

    result = convert_run(
        source,
        targets,
        output_dir,
        options=options,
        navigation_shape=navigation_shape,
        relative_to=relative_to,
        tags=tags,
        progress=throttled(report, _WORKER_POLL_S),
        cancelled=cancelled,
    )
    return result.as_dict()
