"""HDF5 access shared by the NCEM and Velox readers: opening, checked reads, lazy arrays.

The HDF5 library trusts the files it reads. On a corrupt file it mostly reports an error
(which h5py raises as a bare ``OSError``, ``RuntimeError``, ``KeyError``, ...), but two
corruptions found by fuzzing do worse (HDF5 2.0):

* a global heap collection (where variable-length strings live) whose object sizes do not
  add up to the collection's size makes HDF5 parse it forever;
* a variable-length datatype whose kind is neither sequence nor string crashes the process
  when a value of that type is read.

So variable-length values are read through a :class:`HeapCheckingFile` (h5py's
``fileobj`` driver), which checks each global heap collection before HDF5 sees it and hides
a bad one from HDF5; :class:`Hdf5Source` refuses bad datatypes before any value is read; and
:func:`open_hdf5` turns what h5py raises while the file is open into a
:class:`~stemcast.errors.FormatError` naming the file. Sizes HDF5 would allocate before it
finds them wrong (a dataspace far larger than the data stored, a variable-length value
longer than the file) are checked first as well.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError, StemcastError
from stemcast.formats.emd.hdf5_headers import attribute_value

__all__ = ["H5Array", "Hdf5Source", "HeapCheckingFile", "decode_text", "members", "open_hdf5"]

#: Signature of a global heap collection.
_HEAP_SIGNATURE = b"GCOL"
#: Where h5py's own code lives (Cython frames name their ``.pyx`` file relative to it).
_H5PY_DIRECTORY = str(Path(h5py.__file__).resolve().parent)
#: What h5py raises when the HDF5 library reports an error.
_H5PY_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)
#: First bytes of an encoded datatype (``H5Tencode``): the datatype message id, version 0.
_ENCODING_PREFIX = b"\x03\x00"
#: Kinds of variable-length types: sequence and string.
_VLEN_KINDS = (0, 1)
#: Most bytes a chunked dataset may declare per byte it stores (gzip's best ratio is ~1030).
MAX_EXPANSION = 1100
#: Bytes any dataset may declare whatever it stores (fill values of unwritten chunks).
SIZE_SLACK = 2**26
#: Most bytes read at once to check stored values (object header chunks are far smaller).
MAX_VALUES_READ = 2**24


def _heap_problem(collection: bytes, length_size: int) -> str | None:
    """Tell why HDF5 would not get through the objects of a global heap collection, if so.

    ``collection`` is the whole collection (``GCOL``, version, 3 reserved bytes, its size,
    then its objects). HDF5 walks the objects by their sizes until it reaches the end: an
    object of size 0 never moves it on, and one that runs past the end leaves it lost.
    """
    header = 8 + length_size
    object_header = 8 + length_size
    position = header
    while position < len(collection):
        if position + object_header > len(collection):
            return None  # the tail is too short for an object: HDF5 takes it as free space
        index = int.from_bytes(collection[position : position + 2], "little")
        size_at = position + 8
        size = int.from_bytes(collection[size_at : size_at + length_size], "little")
        need = object_header + -(-size // 8) * 8 if index > 0 else size
        if need == 0 or position + need > len(collection):
            return (
                f"global heap object {index} at collection byte {position} has size {size}, "
                f"which does not fit the {len(collection)}-byte collection"
            )
        position += need
    return None


class HeapCheckingFile:
    """A read-only file for h5py's ``fileobj`` driver that checks global heaps for HDF5.

    Every byte HDF5 parses is read here. HDF5 reads a global heap collection from its first
    byte, so a read that starts with ``GCOL`` is a collection (or, rarely, raw data that
    happens to start so, which the check finds fine): the whole collection is checked, and a
    bad one reaches HDF5 with its signature blanked, which HDF5 refuses cleanly. The reason
    is kept in :attr:`problem` for the error message.

    Parameters
    ----------
    path
        The file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._position = 0
        self._checked: dict[int, str | None] = {}
        #: Bytes of a length field (the superblock's "size of lengths"): 8 in practice.
        self.length_size = 8
        #: Why a global heap collection was hidden from HDF5, if one was.
        self.problem: FormatError | None = None

    def __repr__(self) -> str:
        return f"HeapCheckingFile({self.path!r})"

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move to ``offset`` (from the start, the current position or the end)."""
        if whence == os.SEEK_END:
            offset += os.fstat(self._fd).st_size
        elif whence == os.SEEK_CUR:
            offset += self._position
        self._position = offset
        return offset

    def tell(self) -> int:
        """Return the current position."""
        return self._position

    def _pread(self, size: int, offset: int) -> bytes:
        chunks = []
        while size > 0:
            chunk = os.pread(self._fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def read(self, size: int = -1) -> bytes:
        """Read ``size`` bytes from the current position (all that is left if negative)."""
        start = self._position
        left = max(os.fstat(self._fd).st_size - start, 0)
        # A corrupt address may lie anywhere below 2**64: past the end, nothing is read.
        data = self._pread(left if size < 0 else min(size, left), start)
        self._position += len(data)
        if data[:4] == _HEAP_SIGNATURE and self._heap_is_bad(start, data):
            data = bytes(4) + data[4:]
        return data

    def _heap_is_bad(self, address: int, data: bytes) -> bool:
        if address not in self._checked:
            header = 8 + self.length_size
            size = int.from_bytes(data[8:header], "little")
            available = os.fstat(self._fd).st_size - address
            problem = None
            if data[4:5] == b"\x01" and header <= size <= available:
                # HDF5 refuses a collection that does not fit in the file by itself.
                collection = data[:size] if len(data) >= size else self._pread(size, address)
                problem = _heap_problem(collection, self.length_size)
            self._checked[address] = problem
            if problem is not None and self.problem is None:
                self.problem = FormatError(problem, path=self.path, offset=address)
        return self._checked[address] is not None

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _value_size(file: h5py.File) -> int:
    """Bytes of a stored variable-length value: length, global heap collection, index."""
    return 4 + int(file.id.get_create_plist().get_sizes()[0]) + 4


def _raised_by_h5py(error: BaseException) -> bool:
    """Whether ``error`` comes from h5py's code (the HDF5 library refusing the file)."""
    trace = error.__traceback__
    if trace is None:
        return False
    while trace.tb_next is not None:
        trace = trace.tb_next
    name = trace.tb_frame.f_code.co_filename
    return name.startswith((_H5PY_DIRECTORY, "h5py/", "h5py\\"))


def _reason(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error) or type(error).__name__


def _vlen_kind(datatype: h5py.h5t.TypeID) -> int | None:
    """Return the stored kind of a variable-length type (0 sequence, 1 string), if known.

    h5py reports any kind but "string" as a sequence; the stored kind is in the datatype's
    encoding (``H5Tencode``: a 2-byte prefix, then the datatype message, whose low 4 bits of
    the first flag byte are the kind).
    """
    encoded = datatype.encode()
    if encoded[:2] != _ENCODING_PREFIX or len(encoded) < 4:
        return None
    return int(encoded[3]) & 0x0F


def _check_type(datatype: h5py.h5t.TypeID, what: str, path: str) -> bool:
    """Refuse a datatype whose values crash HDF5; tell whether it holds variable-length data.

    A variable-length type is a sequence or a string: any other kind (a corrupt file) crashes
    HDF5 when a value is read, so it is refused, inside compound and array types too.
    """
    kind = datatype.get_class()
    variable_string = kind == h5py.h5t.STRING and datatype.is_variable_str()
    if kind == h5py.h5t.VLEN or variable_string:
        stored = _vlen_kind(datatype)
        if stored is not None and stored not in _VLEN_KINDS:
            raise FormatError(
                f"{what} has a variable-length type of unknown kind {stored}", path=path
            )
        if kind == h5py.h5t.VLEN:
            _check_type(datatype.get_super(), what, path)
        return True
    if kind == h5py.h5t.ARRAY:
        return _check_type(datatype.get_super(), what, path)
    if kind == h5py.h5t.COMPOUND:
        members = [
            _check_type(datatype.get_member_type(index), what, path)
            for index in range(datatype.get_nmembers())
        ]
        return any(members)
    return False


class Hdf5Source:
    """An HDF5 file open for reading, with the reads the EMD readers make of it.

    Navigation (groups, shapes, dtypes) uses :attr:`file`. Values are read through the
    methods here, which refuse corrupt datatypes and implausible sizes first, and read
    variable-length values (strings, which live in global heaps) through a second handle
    on a :class:`HeapCheckingFile`. Numbers are read by HDF5's own file driver, which is
    much faster for strided selections.

    Parameters
    ----------
    path
        The file.
    file
        The file opened by h5py.
    """

    def __init__(self, path: str, file: h5py.File) -> None:
        self.path = path
        self.file = file
        self._heaps: HeapCheckingFile | None = None
        self._guarded: h5py.File | None = None
        self._checked: dict[str, bool] = {}

    @property
    def problem(self) -> FormatError | None:
        """Why a global heap collection was hidden from HDF5, if one was."""
        return None if self._heaps is None else self._heaps.problem

    def _guarded_file(self) -> h5py.File:
        if self._guarded is None:
            self._heaps = HeapCheckingFile(self.path)
            self._guarded = h5py.File(self._heaps, "r")
            self._heaps.length_size = int(self.file.id.get_create_plist().get_sizes()[1])
        return self._guarded

    def close(self) -> None:
        """Close the second handle, if it was opened."""
        if self._guarded is not None:
            self._guarded.close()
        if self._heaps is not None:
            self._heaps.close()

    def attribute(self, node: h5py.Group | h5py.Dataset, name: str) -> Any:
        """Read attribute ``name`` of ``node``."""
        attribute = node.attrs.get_id(name)
        datatype = attribute.get_type()
        what = f"attribute {name!r} of {node.name!r}"
        if _check_type(datatype, what, self.path):
            address = getattr(h5py.h5o.get_info(node.id), "addr", None)
            sizes = self.file.id.get_create_plist().get_sizes()
            stored = None
            if address is not None:
                stored = attribute_value(self._read_at, address, name, *map(int, sizes))
            if stored is not None:
                offset, raw = stored
                count = int(np.prod(attribute.shape, dtype=np.int64))
                self._check_lengths(raw, count, datatype, what, offset)
            node = self._guarded_file()[node.name]
        return node.attrs[name]

    def _read_at(self, offset: int, size: int) -> bytes:
        """Read up to ``size`` bytes at ``offset`` (at most :data:`MAX_VALUES_READ`)."""
        with open(self.path, "rb") as stream:
            end = os.fstat(stream.fileno()).st_size
            if offset >= end:
                return b""
            stream.seek(offset)
            return stream.read(min(size, end - offset, MAX_VALUES_READ))

    def attributes(self, node: h5py.Group | h5py.Dataset) -> dict[str, Any]:
        """Read every attribute of ``node``."""
        return {name: self.attribute(node, name) for name in list(node.attrs)}

    def check(self, dataset: h5py.Dataset) -> bool:
        """Check ``dataset`` once (see :meth:`_check`); tell whether its values are variable."""
        if dataset.name not in self._checked:
            self._checked[dataset.name] = self._check(dataset)
        return self._checked[dataset.name]

    def _check(self, dataset: h5py.Dataset) -> bool:
        """Refuse a dataset that cannot be read safely; tell whether its values are variable.

        Its type must be sound (a variable-length type of unknown kind crashes HDF5). Beyond
        :data:`SIZE_SLACK` bytes, its shape must fit what is stored: a contiguous dataset
        must lie within the file, a chunked one must store at least 1/:data:`MAX_EXPANSION`
        of the bytes its shape declares (compression does not shrink data further). A shape
        far larger comes from a corrupt dataspace, and reading it would only exhaust memory.
        """
        datatype = dataset.id.get_type()
        what = f"dataset {dataset.name!r}"
        variable = _check_type(datatype, what, self.path)
        offset = dataset.id.get_offset()
        if variable and offset is not None:  # contiguous: the stored values are at offset
            raw = self._read_at(offset, dataset.size * _value_size(self.file))
            self._check_lengths(raw, dataset.size, datatype, what, offset)
        declared = dataset.size * dataset.dtype.itemsize
        if declared <= SIZE_SLACK:
            return variable
        if dataset.chunks is not None:
            stored = dataset.id.get_storage_size()
            if declared > stored * MAX_EXPANSION + SIZE_SLACK:
                raise FormatError(
                    f"dataset {dataset.name!r} declares {declared} bytes (shape "
                    f"{dataset.shape}) but stores {stored}",
                    path=self.path,
                )
            return variable
        offset = dataset.id.get_offset()
        size = os.path.getsize(self.path)
        if offset is not None and offset + declared > size:
            raise FormatError(
                f"dataset {dataset.name!r} of {declared} bytes (shape {dataset.shape}) "
                f"at byte {offset} runs past the end of the file ({size} bytes)",
                path=self.path,
                offset=offset,
            )
        return variable

    def _check_lengths(
        self, raw: bytes, count: int, datatype: h5py.h5t.TypeID, what: str, offset: int
    ) -> None:
        """Refuse variable-length values longer than the file, before HDF5 allocates them.

        HDF5 allocates (and clears) the memory of each value from the length stored with
        it, before it finds that the value is not in the file: a corrupt length of 0x20202020
        costs half a gigabyte. ``raw`` holds the stored values (length, global heap
        collection, object index) from byte ``offset``: those of a contiguous dataset or of
        an attribute in its object header. Values inside compound and array types, and of
        chunked or densely stored data, are left to HDF5.
        """
        kind = datatype.get_class()
        if kind not in (h5py.h5t.VLEN, h5py.h5t.STRING):
            return
        item = 1 if kind == h5py.h5t.STRING else datatype.get_super().get_size()
        stride = _value_size(self.file)
        usable = min(count, len(raw) // stride) * stride
        records = np.frombuffer(raw, dtype=np.uint8, count=usable).reshape(-1, stride)
        lengths = records[:, :4].copy().view("<u4").ravel().astype(np.int64)
        size = os.path.getsize(self.path)
        too_long = np.flatnonzero(lengths * item > size)
        if too_long.size:
            index = int(too_long[0])
            raise FormatError(
                f"value {index} of {what} claims {int(lengths[index]) * item} bytes, more than "
                "the file holds",
                path=self.path,
                offset=offset + index * stride,
            )

    def values(self, dataset: h5py.Dataset, key: Any = ()) -> Any:
        """Read ``dataset[key]``."""
        return self.read(dataset, key, variable=self.check(dataset))

    def read(self, dataset: h5py.Dataset, key: Any, *, variable: bool) -> Any:
        """Read ``dataset[key]`` of a dataset already checked (see :meth:`check`)."""
        if variable:
            dataset = self._guarded_file()[dataset.name]
        return dataset[key]

    def text(self, dataset: h5py.Dataset) -> Any:
        """Read a string dataset as ``str`` values."""
        if self.check(dataset):
            dataset = self._guarded_file()[dataset.name]
        return dataset.asstr()[()]

    def dataset(self, group: h5py.Group, name: str) -> h5py.Dataset:
        """Return the dataset ``name`` of ``group``; a :class:`FormatError` if there is none."""
        node = group.get(name)
        if not isinstance(node, h5py.Dataset):
            found = "nothing" if node is None else type(node).__name__.lower()
            raise FormatError(
                f"{group.name!r} has {found} for its dataset {name!r}", path=self.path
            )
        return node

    def json(self, dataset: h5py.Dataset, column: int = 0) -> Any:
        """Decode a Velox JSON dataset.

        Text datasets are one-element arrays of UTF-8 bytes; ``Metadata`` datasets are
        ``(60000, n)`` ``uint8`` arrays holding one NUL-padded document per column.

        Parameters
        ----------
        dataset
            The dataset.
        column
            Which column of a 2-D ``uint8`` dataset (the frame).

        Returns
        -------
        Any
            The decoded JSON value.
        """
        if dataset.dtype == np.uint8 and dataset.ndim == 2:
            raw = bytes(self.values(dataset, (slice(None), column))).rstrip(b"\x00")
        else:
            raw = self.values(dataset)
            if isinstance(raw, np.ndarray):
                raw = raw.ravel()[0] if raw.size else b""
            raw = raw if isinstance(raw, bytes) else str(raw).encode()
        try:
            return json.loads(raw.decode("utf-8").rstrip("\x00"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FormatError(
                f"dataset {dataset.name!r} does not hold a JSON document ({error})",
                path=self.path,
            ) from error

    def json_object(self, dataset: h5py.Dataset, column: int = 0) -> dict[str, Any]:
        """Decode a Velox JSON dataset that must hold an object (see :meth:`json`)."""
        value = self.json(dataset, column)
        if not isinstance(value, dict):
            raise FormatError(
                f"dataset {dataset.name!r} holds a JSON {type(value).__name__}, not an object",
                path=self.path,
            )
        return value

    def lazy(
        self,
        dataset: h5py.Dataset,
        *,
        chunks: Any = None,
        convert: Callable[[npt.NDArray[Any]], npt.NDArray[Any]] | None = None,
        dtype: npt.DTypeLike | None = None,
    ) -> Any:
        """Wrap ``dataset`` in a dask array that reads it block by block.

        Parameters
        ----------
        dataset
            The dataset (its file stays closed between reads).
        chunks
            Dask chunks; defaults to the HDF5 chunks, or ``"auto"`` for contiguous datasets.
        convert
            Applied to every block (e.g. compound to complex).
        dtype
            The dtype of the converted blocks.

        Returns
        -------
        dask.array.Array
            The lazy array.
        """
        import dask.array as da
        from dask.base import tokenize

        source = H5Array(
            os.path.abspath(self.path),
            dataset.name,
            dataset.shape,
            dataset.dtype,
            self.check(dataset),
        )
        stat = os.stat(source.path)
        name = "emd-" + tokenize(source.path, source.name, stat.st_mtime_ns, stat.st_size)
        if chunks is None:
            chunks = dataset.chunks or "auto"
        if dataset.dtype.names is not None and chunks == "auto":
            chunks = dataset.shape
        array = da.from_array(  # type: ignore[no-untyped-call, unused-ignore]
            source, chunks=chunks, name=name, asarray=False, fancy=False
        )
        if convert is not None:
            array = array.map_blocks(convert, dtype=dtype)
        return array


@contextmanager
def open_hdf5(path: str | os.PathLike[str]) -> Iterator[Hdf5Source]:
    """Open an HDF5 file read-only for the EMD readers.

    While the file is open, what h5py raises for an error of the HDF5 library (a corrupt
    file) becomes a :class:`~stemcast.errors.FormatError` naming the file; errors raised by
    other code pass unchanged.

    Parameters
    ----------
    path
        The file.

    Yields
    ------
    Hdf5Source
        The open file and its reads.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FormatError("no such file", path=path)
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise FormatError(f"not an HDF5 file ({_reason(error)})", path=path) from error
    source = Hdf5Source(path, file)
    try:
        yield source
    except StemcastError:
        raise
    except _H5PY_ERRORS as error:
        if not _raised_by_h5py(error):
            raise
        if source.problem is not None:
            raise source.problem from error
        raise FormatError(f"corrupt HDF5 file ({_reason(error)})", path=path) from error
    finally:
        source.close()
        file.close()


def members(group: h5py.Group) -> list[tuple[str, Any]]:
    """Return the ``(name, object)`` members of ``group``, read in one go.

    h5py's views iterate holding its global lock: a loop that raises (or stops) before the
    end leaves the lock with a suspended generator until the garbage collector closes it,
    possibly on another thread, which cannot release it, and h5py then deadlocks. Every
    loop over a group's members therefore iterates this list. Members whose name is not
    UTF-8 text (h5py gives those as ``bytes``) are left out: no name the readers look for is.
    """
    return [(name, node) for name, node in list(group.items()) if isinstance(name, str)]


def decode_text(value: Any) -> str:
    """Return an HDF5 string attribute or scalar as ``str`` (stored as bytes or as text)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


@dataclass(frozen=True, slots=True)
class H5Array:
    """A picklable stand-in for an HDF5 dataset that opens the file for each read.

    Dask tasks carry it and read their block themselves, so a lazy signal keeps no file
    handle open and works with distributed schedulers.
    """

    path: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    variable: bool  # variable-length values, read through a HeapCheckingFile

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def __getitem__(self, key: Any) -> npt.NDArray[Any]:
        with open_hdf5(self.path) as source:
            return np.asarray(source.read(source.file[self.name], key, variable=self.variable))
