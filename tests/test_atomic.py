from __future__ import annotations

from pathlib import Path

import pytest

from stemcast._atomic import atomic_path


def test_output_appears_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    with atomic_path(final) as temporary:
        temporary.write_bytes(b"abc")
        assert not final.exists()
    assert final.read_bytes() == b"abc"
    assert list(tmp_path.iterdir()) == [final]


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")

    def write_then_fail() -> None:
        with atomic_path(final) as temporary:
            temporary.write_bytes(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert final.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [final]
