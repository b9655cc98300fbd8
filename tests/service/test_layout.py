"""Which modules an import brings in: the dependencies of the service point one way."""

from __future__ import annotations

import subprocess
import sys


def loaded_by(module: str) -> set[str]:
    """The stemcast modules a fresh interpreter has loaded after importing ``module``."""
    code = (
        f"import sys, {module}; "
        "print('\\n'.join(m for m in sys.modules if m.split('.')[0] == 'stemcast'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


def test_the_control_server_imports_without_the_app() -> None:
    loaded = loaded_by("stemcast.service.control.api")
    assert "stemcast.service.control.api" in loaded
    assert "stemcast.service.app" not in loaded


def test_the_client_imports_nothing_of_the_service() -> None:
    loaded = loaded_by("stemcast.client")
    assert "stemcast.protocol" in loaded
    assert not {name for name in loaded if name.split(".")[:2] == ["stemcast", "service"]}
