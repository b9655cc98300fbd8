"""HDF5 access shared by the NCEM and Velox readers: opening, text attributes, lazy arrays."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError

__all__ = ["H5Array", "decode_text", "lazy_array", "open_hdf5", "read_json"]


def open_hdf5(path: str | os.PathLike[str]) -> h5py.File:
    """Open an HDF5 file read-only, with a :class:`~stemcast.errors.FormatError` if it is not one.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    h5py.File
        The open file.
    """
    if not os.path.isfile(path):
        raise FormatError("no such file", path=path)
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise FormatError(f"not an HDF5 file ({error})", path=path) from error


def decode_text(value: Any) -> str:
    """Return an HDF5 string attribute or scalar as ``str`` (stored as bytes or as text)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def read_json(dataset: h5py.Dataset, column: int = 0) -> Any:
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
        raw = bytes(dataset[:, column]).rstrip(b"\x00")
    else:
        raw = dataset[()]
        if isinstance(raw, np.ndarray):
            raw = raw.ravel()[0]
        raw = raw if isinstance(raw, bytes) else str(raw).encode()
    try:
        return json.loads(raw.decode("utf-8").rstrip("\x00"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(
            f"dataset {dataset.name!r} does not hold a JSON document ({error})",
            path=dataset.file.filename,
        ) from error


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

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def __getitem__(self, key: Any) -> npt.NDArray[Any]:
        with h5py.File(self.path, "r") as file:
            return np.asarray(file[self.name][key])


def lazy_array(
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
        os.path.abspath(dataset.file.filename), dataset.name, dataset.shape, dataset.dtype
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
