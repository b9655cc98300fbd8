"""Unit strings of EMD files: NCEM spellings normalised, Velox calibrations given SI prefixes.

A small, dependency-free subset of what the reference does with ``pint``: products and
quotients of (prefixed) unit symbols with integer exponents, formatted in the short form
``"nm"``, ``"1 / nm"``, ``"nm * s"``, ``"nm ** 2"``. A unit string it does not recognise is
returned unchanged, as the reference does when ``pint`` cannot parse it.
"""

from __future__ import annotations

import math
import re

__all__ = ["compact_unit", "normalise_ncem_units"]

_PREFIXES = {
    "y": -24,
    "z": -21,
    "a": -18,
    "f": -15,
    "p": -12,
    "n": -9,
    "µ": -6,
    "u": -6,
    "m": -3,
    "c": -2,
    "d": -1,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
#: Prefix symbol of each power of 1000, for :func:`compact_calibration`.
_COMPACT_PREFIXES = {
    -24: "y",
    -21: "z",
    -18: "a",
    -15: "f",
    -12: "p",
    -9: "n",
    -6: "µ",
    -3: "m",
    0: "",
    3: "k",
    6: "M",
    9: "G",
    12: "T",
    15: "P",
    18: "E",
}
#: Symbols that take an SI prefix.
_PREFIXABLE = frozenset({"m", "s", "rad", "eV", "V", "A", "Hz", "g", "C", "K", "W", "J", "N"})
#: Symbols (and spellings) that stand alone, mapped to their short form.
_STANDALONE = {
    "Å": "Å",
    "deg": "deg",
    "degree": "deg",
    "degrees": "deg",
    "pixel": "pixel",
    "pixels": "pixel",
    "px": "px",
    "count": "count",
    "counts": "count",
    "min": "min",
    "h": "h",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "meter": "m",
    "metre": "m",
    "micron": "µm",
    "nanometer": "nm",
    "nanometre": "nm",
    "e": "e",
}
_FACTOR = re.compile(r"^(?P<symbol>[^\s*/^]+?)(?:(?:\^|\*\*)(?P<power>[+-]?\d+))?$")
_TOKEN = re.compile(r"[^\s*/()^]+(?:(?:\^|\*\*)[+-]?\d+)?|[*/()]")
_BRACKETED = re.compile(r"\[([^\]]+)\]")


def _symbol(token: str) -> str | None:
    """Return the short form of a unit symbol (``"um"`` -> ``"µm"``), ``None`` if unknown."""
    if token in _STANDALONE:
        return _STANDALONE[token]
    if token in _PREFIXABLE:
        return token
    prefix, rest = token[:1], token[1:]
    if prefix in _PREFIXES and rest in _PREFIXABLE:
        return ("µ" if prefix == "u" else prefix) + rest
    return None


def _parse(text: str) -> list[tuple[str, int]] | None:
    """Split ``text`` into ``(symbol, power)`` factors, or ``None`` if it is not a unit.

    Understands ``*``, ``/``, juxtaposition (``"nm s"``), ``^n`` and ``**n`` exponents and a
    leading ``1`` numerator (``"1/nm"``).
    """
    compact = re.sub(r"\s*(\^|\*\*)\s*", r"\1", text.strip())
    tokens = _TOKEN.findall(compact)
    if "".join(tokens) != "".join(compact.split()) or "(" in tokens or ")" in tokens:
        return None
    factors: list[tuple[str, int]] = []
    sign = 1
    expect_factor = True
    for token in tokens:
        if token in ("*", "/"):
            if expect_factor:
                return None
            sign = -1 if token == "/" else 1
            expect_factor = True
            continue
        if token == "1" and not factors and expect_factor:
            expect_factor = False
            continue
        match = _FACTOR.match(token)
        if match is None:
            return None
        symbol = _symbol(match["symbol"])
        if symbol is None:
            return None
        factors.append((symbol, sign * int(match["power"] or 1)))
        sign = 1
        expect_factor = False
    return None if expect_factor or not factors else factors


def _format(factors: list[tuple[str, int]]) -> str:
    """Short ``pint``-style form: ``"nm * s"``, ``"1 / nm ** 2"``, ``"nm / s"``."""

    def term(symbol: str, power: int) -> str:
        return symbol if power == 1 else f"{symbol} ** {power}"

    numerator = [term(symbol, power) for symbol, power in factors if power > 0]
    denominator = [term(symbol, -power) for symbol, power in factors if power < 0]
    text = " * ".join(numerator) if numerator else "1"
    for item in denominator:
        text += f" / {item}"
    return text


def normalise_ncem_units(units: str) -> str:
    """Normalise the ``units`` attribute of an NCEM ``dim`` dataset.

    ``"A"`` is read as ångström (py4DSTEM), bracketed NCEM tokens are joined
    (``"[n_m]"`` -> ``"nm"``, ``"[1_/_n_m]"`` -> ``"1 / nm"``), and recognised units are
    written in short form. ``"[]"`` (an empty bracket, written by old HyperSpy for "no unit")
    is kept as is, like the reference reader does.

    Parameters
    ----------
    units
        The attribute, decoded.

    Returns
    -------
    str
        The unit string.
    """
    if units == "A":
        units = "Å"
    elif units == "A^-1":
        units = "Å^-1"
    tokens = _BRACKETED.findall(units)
    if tokens:
        units = " * ".join(token.replace("_", "") for token in tokens)
    factors = _parse(units)
    return units if factors is None else _format(factors)


def compact_unit(scale: float, units: str, size_factor: float) -> tuple[str, float]:
    """Choose the SI prefix that suits a whole axis, as ``pint``'s ``to_compact`` does.

    The prefix is the one that brings ``size_factor * scale`` into ``[1, 1000)``, so a
    16-pixel image of 3.6 nm pixels gets nanometres and an FFT of 585390 1/m pixels gets
    ``1 / µm``.

    Parameters
    ----------
    scale
        Pixel size in ``units``.
    units
        ``"m"``, ``"1/m"``, ``"s"`` or another unit without prefix; a unit that is not a
        single prefixable symbol (to the power 1 or -1) keeps its unit.
    size_factor
        Half the number of pixels of the axis (the reference's choice).

    Returns
    -------
    tuple of (str, float)
        The unit, and the factor that converts values from ``units`` into it.
    """
    factors = _parse(units) if units else None
    if factors is None:
        return units, 1.0
    if len(factors) != 1:
        return _format(factors), 1.0
    symbol, power = factors[0]
    magnitude = size_factor * scale
    if (
        magnitude == 0
        or not math.isfinite(magnitude)
        or symbol not in _PREFIXABLE
        or power not in (1, -1)
    ):
        return _format(factors), 1.0
    # 1 (prefixed unit)**power = 10**(prefix exponent * power) units**power.
    scaled = min(max(math.floor(math.log10(abs(magnitude)) / 3) * 3, -24), 18)
    exponent = scaled * power
    if exponent not in _COMPACT_PREFIXES:
        return _format(factors), 1.0
    return _format([(_COMPACT_PREFIXES[exponent] + symbol, power)]), 10.0**-scaled
