"""Conversion targets and their options: checked, and normalised so equal requests are equal.

The service hashes the normalised options to recognise a conversion asked for twice, so
normalising is deterministic: defaults are dropped, keys sorted, sequences made lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import ParameterError
from stemcast.formats.blockfile.spec import INTENSITY_SCALINGS

__all__ = [
    "AUTO_SCALING",
    "TARGETS",
    "check_options",
    "is_int",
    "parse_targets",
    "resolve_scaling",
]

#: Conversion targets and the suffix of their output files.
TARGETS: dict[str, str] = {"blockfile": ".blo", "emd": ".emd"}

_GZIP_DEFAULT_LEVEL = 4
_OPTIONS: dict[str, tuple[str, ...]] = {
    "blockfile": ("endianess", "endianness", "intensity_scaling"),
    "emd": ("chunks", "compression", "compression_opts", "shuffle"),
}
#: The default blockfile scaling: ``"minmax"`` for sources wider than 8 bits, else none.
AUTO_SCALING = "auto"
_DEFAULTS: dict[str, Any] = {
    "blockfile.endianess": "<",
    "blockfile.intensity_scaling": AUTO_SCALING,
    "emd.chunks": None,
    "emd.compression": None,
    "emd.shuffle": False,
}


def parse_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """Read the conversion targets: ``"emd,blockfile"`` or ``["emd", "blockfile"]``.

    Parameters
    ----------
    targets
        Target names (see :data:`TARGETS`), comma-separated or as a sequence.

    Returns
    -------
    tuple of str
        The targets, sorted, each once.

    Raises
    ------
    ParameterError
        When a name is not a target or none is given (``parameter="targets"``).
    """
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    chosen = set()
    for name in names:
        if not isinstance(name, str):
            raise ParameterError(f"{name!r} is not a target name", parameter="targets")
        name = name.strip().lower()
        if not name:
            continue
        if name not in TARGETS:
            raise ParameterError(
                f"{name!r} is not a target: choose from {', '.join(sorted(TARGETS))}",
                parameter="targets",
            )
        chosen.add(name)
    if not chosen:
        raise ParameterError(
            f"no target given: choose from {', '.join(sorted(TARGETS))}", parameter="targets"
        )
    return tuple(sorted(chosen))


def check_options(
    targets: Sequence[str], options: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Check the options of the targets and put them in a canonical form.

    Options left at their default value are dropped, so equal requests give equal
    dictionaries (the service hashes them to avoid converting twice).

    Parameters
    ----------
    targets
        The requested targets.
    options
        ``{"blockfile": {...}, "emd": {...}}``, keys only for requested targets:

        - blockfile: ``intensity_scaling`` (``None``, ``"dtype"``, ``"minmax"``, ``"crop"``
          or ``[low, high]``; by default ``"minmax"`` for sources wider than 8 bits, whose
          counts would otherwise wrap around at 256, and ``None`` for 8-bit sources),
          ``endianess`` (``"<"`` or ``">"``; also spelled ``endianness``, as the reference
          library since its 0.13, and kept as ``endianess``);
        - emd: ``chunks`` (list of int in array order, navigation axes first, or ``None``),
          ``compression`` (``None``, ``"gzip"`` or ``"lzf"``), ``compression_opts`` (gzip
          level 0-9, default 4), ``shuffle`` (bool; only with compression).

    Returns
    -------
    dict
        JSON-serialisable options of every requested target (``{}``: all defaults), keys
        sorted.

    Raises
    ------
    ParameterError
        Naming the offending option, e.g. ``parameter="options.emd.chunks"``.
    """
    chosen = parse_targets(targets)
    given = {} if options is None else options
    if not isinstance(given, Mapping):
        raise ParameterError(f"{given!r} is not a mapping of targets", parameter="options")
    for target in given:
        if target not in chosen:
            raise ParameterError(
                f"options for {target!r}, which is not a requested target ({', '.join(chosen)})",
                parameter=f"options.{target}",
            )
    result: dict[str, dict[str, Any]] = {}
    for target in chosen:
        items = given.get(target, {})
        if not isinstance(items, Mapping):
            raise ParameterError(f"{items!r} is not a mapping", parameter=f"options.{target}")
        for name in items:
            if name not in _OPTIONS[target]:
                raise ParameterError(
                    f"unknown {target} option: choose from {', '.join(_OPTIONS[target])}",
                    parameter=f"options.{target}.{name}",
                )
        checked = _blockfile_options(items) if target == "blockfile" else _emd_options(items)
        result[target] = {
            name: checked[name]
            for name in sorted(checked)
            if f"{target}.{name}" not in _DEFAULTS or checked[name] != _DEFAULTS[f"{target}.{name}"]
        }
    return result


def _blockfile_options(items: Mapping[str, Any]) -> dict[str, Any]:
    scaling = items.get("intensity_scaling", AUTO_SCALING)
    where = "options.blockfile.intensity_scaling"
    if isinstance(scaling, str):
        if scaling not in (*INTENSITY_SCALINGS, AUTO_SCALING):
            raise ParameterError(
                f"{scaling!r} is not None, "
                f"{', '.join(map(repr, INTENSITY_SCALINGS))} or [low, high]",
                parameter=where,
            )
    elif scaling is not None:
        scaling = _range(scaling, where)
    given = {name: items[name] for name in ("endianess", "endianness") if name in items}
    for name, value in given.items():
        if value not in ("<", ">"):
            raise ParameterError(
                f"{value!r} is not '<' or '>'", parameter=f"options.blockfile.{name}"
            )
    if len(set(given.values())) > 1:
        raise ParameterError(
            f"endianess={given['endianess']!r} and endianness={given['endianness']!r} "
            "disagree: give one of them",
            parameter="options.blockfile.endianness",
        )
    # One key for both spellings, so equal requests normalise (and hash) alike.
    return {"intensity_scaling": scaling, "endianess": next(iter(given.values()), "<")}


def resolve_scaling(options: Mapping[str, Any], dtype: npt.DTypeLike) -> dict[str, Any]:
    """Replace the default blockfile scaling by what it means for a source of ``dtype``.

    Parameters
    ----------
    options
        Checked blockfile options.
    dtype
        The source's frame dtype.

    Returns
    -------
    dict
        The options with an explicit ``intensity_scaling``: ``"minmax"`` for sources wider
        than 8 bits (their counts would wrap around at 256), ``None`` for 8-bit ones.
    """
    scaling = options.get("intensity_scaling", AUTO_SCALING)
    if scaling == AUTO_SCALING:
        scaling = None if np.dtype(dtype) == np.uint8 else "minmax"
    return {**options, "intensity_scaling": scaling}


def _range(value: Any, where: str) -> list[float]:
    """``[low, high]`` finite numbers with ``low < high``."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ParameterError(f"{value!r} is not [low, high]", parameter=where)
    numbers = list(value)
    if len(numbers) != 2 or not all(_is_number(number) for number in numbers):
        raise ParameterError(f"{value!r} is not [low, high]", parameter=where)
    low, high = (float(number) for number in numbers)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ParameterError(f"{value!r} is not a finite range with low < high", parameter=where)
    return [low, high]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _emd_options(items: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    chunks = items.get("chunks")
    if chunks is not None:
        if (
            isinstance(chunks, (str, bytes, Mapping))
            or not isinstance(chunks, Sequence)
            or not chunks
            or not all(is_int(size) and size >= 1 for size in chunks)
        ):
            raise ParameterError(
                f"{chunks!r} is not a list of positive integers (array order)",
                parameter="options.emd.chunks",
            )
        chunks = [int(size) for size in chunks]
    checked["chunks"] = chunks
    compression = items.get("compression")
    if compression not in (None, "gzip", "lzf"):
        raise ParameterError(
            f"{compression!r} is not None, 'gzip' or 'lzf'", parameter="options.emd.compression"
        )
    checked["compression"] = compression
    level = items.get("compression_opts")
    if compression == "gzip":
        level = _GZIP_DEFAULT_LEVEL if level is None else level
        if not (is_int(level) and 0 <= level <= 9):
            raise ParameterError(
                f"{level!r} is not a gzip level 0-9", parameter="options.emd.compression_opts"
            )
        checked["compression_opts"] = int(level)
    elif level is not None:
        raise ParameterError(
            f"{level!r}: compression_opts sets the gzip level, and compression is {compression!r}",
            parameter="options.emd.compression_opts",
        )
    shuffle = items.get("shuffle", False)
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ParameterError(f"{shuffle!r} is not true or false", parameter="options.emd.shuffle")
    if shuffle and compression is None:
        # The shuffle filter only helps a compressor; alone it just reorders the bytes.
        raise ParameterError(
            "shuffle only applies with a compression ('gzip' or 'lzf')",
            parameter="options.emd.shuffle",
        )
    checked["shuffle"] = bool(shuffle)
    return checked
