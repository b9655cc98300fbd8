"""The top-level package: a fast import, and ``stemcast.file_reader`` for every format."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import stemcast
from conftest import shared_file
from stemcast.errors import FormatError
from stemcast.readers import blockfile, emd, mib, tvips


def test_import_stemcast_loads_no_format_module() -> None:
    code = (
        "import sys, stemcast; "
        "print(sorted(m for m in sys.modules if m.startswith(('stemcast.', 'numpy', 'h5py'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("parts", "reader"),
    [
        (("tvips", "test_tvips_2233_000.tvips"), tvips.file_reader),
        (("blockfile", "test2.blo"), blockfile.file_reader),
        (("emd", "fei_example_tem_stack.emd"), emd.file_reader),
    ],
)
def test_file_reader_reads_with_the_reader_of_the_format(parts: tuple[str, str], reader) -> None:
    path = shared_file(*parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, expected = stemcast.file_reader(path), reader(path)
        lazy = stemcast.file_reader(str(path), lazy=True)
    assert len(ours) == len(expected) == len(lazy)
    for signal, want, deferred in zip(ours, expected, lazy, strict=True):
        np.testing.assert_array_equal(signal["data"], want["data"])
        np.testing.assert_array_equal(deferred["data"].compute(), want["data"])
        assert signal["axes"] == want["axes"]


def test_file_reader_passes_keywords_to_the_merlin_reader(merlin_dir: Path) -> None:
    path = merlin_dir / "Single_9_Frame_CounterDepth_6_Rows_256.mib"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signal = stemcast.file_reader(path, navigation_shape=(3, 3))[0]
        expected = mib.file_reader(path, navigation_shape=(3, 3))[0]
    assert signal["data"].shape == (3, 3, 256, 256)
    np.testing.assert_array_equal(signal["data"], expected["data"])


def test_file_reader_names_an_unknown_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a data file")
    with pytest.raises(FormatError, match="unrecognised format") as error:
        stemcast.file_reader(path)
    assert error.value.path == str(path)


def test_the_viewer_page_ships_in_the_wheel(tmp_path: Path) -> None:
    """Installed from a wheel (not from the source tree), the package serves its viewer."""
    pytest.importorskip("hatchling")
    root = Path(__file__).parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheel"), str(root)],
        check=True, timeout=120,
    )  # fmt: skip
    [wheel] = (tmp_path / "wheel").glob("stemcast-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
         str(tmp_path / "site"), str(wheel)],
        check=True, timeout=120,
    )  # fmt: skip
    code = (
        "import stemcast, importlib.resources as r; print(stemcast.__file__); "
        "static = r.files('stemcast.service.viewer') / 'static'; "
        "print(sorted(p.name for p in static.iterdir()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    location, files = done.stdout.splitlines()
    assert location.startswith(str(tmp_path / "site"))
    assert files == "['index.html', 'viewer.css', 'viewer.js']"
