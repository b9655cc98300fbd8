"""The Merlin run model passes the shared Source conformance tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from source_conformance import SourceTests, quietly
from stemcast.formats.mib.run import MibRun
from stemcast.readers.mib import file_reader
from stemcast.simulate import simulate_mib


class MibSourceTests(SourceTests[MibRun]):
    name = "scan"

    def open(self, path: Path) -> MibRun:
        return MibRun.open(path)

    def read(self, path: Path) -> dict[str, Any]:
        return quietly(file_reader, str(path))[0]

    def read_reference(self, path: Path) -> dict[str, Any]:
        rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
        return quietly(rsciio_qd.file_reader, str(path))[0]


class TestScanWithHdrShape(MibSourceTests):
    @pytest.fixture
    def run_file(self, tmp_path: Path) -> Path:
        [path] = simulate_mib(
            tmp_path, scan_shape=(6, 4), frame_size=32, counter_depth=12, hdr_scan_size=True
        )
        return path


class TestInterruptedScanFoundFromTimestamps(MibSourceTests):
    frames_past_scan = 3  # 13 frames: 2 lines of 5, and 3

    @pytest.fixture
    def run_file(self, tmp_path: Path) -> Path:
        [path] = simulate_mib(
            tmp_path, scan_shape=(5, 4), frame_size=32, counter_depth=6, interrupt_after=13
        )
        return path

    def read_reference(self, path: Path) -> dict[str, Any]:
        # The reference cannot shape an interrupted scan: compare the complete lines.
        rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
        return quietly(rsciio_qd.file_reader, str(path), navigation_shape=(5, 2))[0]


class TestRawQuad(MibSourceTests):
    @pytest.fixture
    def run_file(self, tmp_path: Path) -> Path:
        [path] = simulate_mib(
            tmp_path, scan_shape=(3, 2), frame_size=512, quad=True, raw=True, counter_depth=1
        )
        return path

    def read_reference(self, path: Path) -> dict[str, Any]:
        pytest.skip("the reference reads no RAW data")


class TestRealSingleChipRun(MibSourceTests):
    name = "Single_9_Frame_CounterDepth_12_Rows_256"

    @pytest.fixture
    def run_file(self, merlin_dir: Path) -> Path:
        return merlin_dir / f"{self.name}.mib"


class TestRealQuadRun(MibSourceTests):
    name = "Quad_9_Frame_CounterDepth_6_Rows_256"

    @pytest.fixture
    def run_file(self, merlin_dir: Path) -> Path:
        return merlin_dir / f"{self.name}.mib"
