"""Shared fixtures: real instrument files from ../shared/data (skipped when absent)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """Path of a real test file under ../shared/data, or skip the test if it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available ({'/'.join(parts)})")
    return path


@pytest.fixture(scope="session")
def merlin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Merlin files (Merlin_Single_Quad.zip), unpacked once per session."""
    archive = shared_file("quantumdetector", "Merlin_Single_Quad.zip")
    target = tmp_path_factory.mktemp("merlin")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)
    return target
