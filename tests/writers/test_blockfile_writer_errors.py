"""Bad input to ``file_writer``: a ParameterError (a ValueError, as the reference raises) naming
the parameter and the problem, and no output file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest

from stemcast.errors import ParameterError
from stemcast.writers.blockfile import file_writer


def _signal(data: Any) -> dict[str, Any]:
    return {"data": data, "metadata": {}, "original_metadata": {}}


def _refused(tmp_path: Path, signal: dict[str, Any], match: str, **kwargs: Any) -> ParameterError:
    path = tmp_path / "out.blo"
    with pytest.raises(ParameterError, match=match) as error:
        file_writer(path, signal, show_progressbar=False, **kwargs)
    assert list(tmp_path.iterdir()) == []
    assert isinstance(error.value, ValueError)
    return error.value


@pytest.mark.parametrize("lazy", [False, True])
def test_float_data_with_dtype_scaling(tmp_path: Path, lazy: bool) -> None:
    data: Any = np.ones((2, 3, 4, 4), np.float32)
    if lazy:
        data = da.from_array(data, chunks=(1, 3, 4, 4))
    error = _refused(
        tmp_path, _signal(data), "float32 data cannot use 'dtype'", intensity_scaling="dtype"
    )
    assert error.parameter == "intensity_scaling"


@pytest.mark.parametrize(
    "navigator", [np.zeros((3, 2)), np.zeros(5), np.zeros((2, 3, 1, 2)), "vbf", 3.0]
)
def test_navigator_of_the_wrong_shape_or_kind(tmp_path: Path, navigator: Any) -> None:
    error = _refused(
        tmp_path,
        _signal(np.zeros((2, 3, 4, 4), np.uint8)),
        "parameter 'navigator'",
        navigator=navigator,
    )
    assert error.parameter == "navigator"


def test_navigator_that_is_not_numeric(tmp_path: Path) -> None:
    navigator = np.array([["a", "b", "c"], ["d", "e", "f"]])
    _refused(tmp_path, _signal(np.zeros((2, 3, 4, 4), np.uint8)), "numeric", navigator=navigator)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 3, 4, 5), "square"),
        ((2, 2, 2, 4, 4), "at most 2 navigation"),
        ((16,), "at most 2 navigation"),
    ],
)
def test_data_shapes_a_blockfile_cannot_hold(
    tmp_path: Path, shape: tuple[int, ...], match: str
) -> None:
    _refused(tmp_path, _signal(np.zeros(shape, np.uint8)), match)


@pytest.mark.parametrize(
    "scaling", ["max", (1,), (5, 1), ("a", "b"), (float("nan"), 1.0), 3, (1, 2, 3)]
)
def test_intensity_scaling_values(tmp_path: Path, scaling: Any) -> None:
    error = _refused(
        tmp_path,
        _signal(np.zeros((2, 4, 4), np.uint8)),
        "parameter 'intensity_scaling'",
        intensity_scaling=scaling,
    )
    assert error.parameter == "intensity_scaling"


def test_complex_data(tmp_path: Path) -> None:
    _refused(tmp_path, _signal(np.zeros((2, 4, 4), complex)), "integers or floats only")


def test_endianess(tmp_path: Path) -> None:
    _refused(tmp_path, _signal(np.zeros((2, 4, 4), np.uint8)), "endianess", endianess="little")


@pytest.mark.parametrize("scale", [0.0, -1.0, 1e-5, float("inf")])
def test_signal_scale_that_sdp_cannot_hold(tmp_path: Path, scale: float) -> None:
    signal = _signal(np.zeros((2, 4, 4), np.uint8))
    signal["axes"] = [
        {"size": 2, "scale": 1.0, "units": "nm", "index_in_array": 0},
        {"size": 4, "scale": scale, "units": "cm", "index_in_array": 1},
        {"size": 4, "scale": scale, "units": "cm", "index_in_array": 2},
    ]
    _refused(tmp_path, signal, "SDP")


def test_header_value_a_field_cannot_hold(tmp_path: Path) -> None:
    signal = _signal(np.zeros((2, 4, 4), np.uint8))
    signal["original_metadata"] = {"blockfile_header": {"Camera_length": 2**40}}
    _refused(tmp_path, signal, "Camera_length")
