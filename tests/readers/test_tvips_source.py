"""The TVIPS series model passes the shared Source conformance tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import shared_file
from source_conformance import SourceTests, quietly
from stemcast.formats.tvips.run import TvipsSeries
from stemcast.formats.tvips.spec import MAIN_HEADER_SIZE
from stemcast.readers.tvips import file_reader
from stemcast.simulate import simulate_tvips


class TvipsSourceTests(SourceTests[TvipsSeries]):
    name = "scan"
    header_bytes = MAIN_HEADER_SIZE

    def open(self, path: Path) -> TvipsSeries:
        return TvipsSeries.open(path)

    def read(self, path: Path) -> dict[str, Any]:
        return quietly(file_reader, str(path), scan_shape="auto")[0]

    def read_reference(self, path: Path) -> dict[str, Any]:
        rsciio_tvips = pytest.importorskip("rsciio.tvips")
        return quietly(rsciio_tvips.file_reader, str(path))[0]


class TestScanOverSeveralParts(TvipsSourceTests):
    @pytest.fixture
    def run_file(self, tmp_path: Path) -> Path:
        paths = simulate_tvips(
            tmp_path, scan_shape=(4, 4), frame_size=32, bits=16, max_file_size=6 * 2200
        )
        assert len(paths) > 1
        return paths[0]


class TestRealStack(TvipsSourceTests):
    name = "test_tvips_2345"

    @pytest.fixture
    def run_file(self) -> Path:
        return shared_file("tvips", "test_tvips_2345_000.tvips")


class TestRealRecording(TvipsSourceTests):
    name = "test_tvips_2233"

    @pytest.fixture
    def run_file(self) -> Path:
        return shared_file("tvips", "test_tvips_2233_000.tvips")
