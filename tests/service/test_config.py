"""Settings: defaults, TOML file, environment and flags, in that order of precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stemcast.errors import ParameterError
from stemcast.service.config import ServiceSettings, load_settings


def test_defaults_bind_to_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STEMCAST_DATA_ENDPOINT", "STEMCAST_PREVIEW_ENDPOINT", "STEMCAST_POLLING"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.data_endpoint.startswith("tcp://127.0.0.1:")
    assert settings.preview_endpoint.startswith("tcp://127.0.0.1:")
    assert settings.polling is False


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "stemcast.toml"
    config.write_text(
        'watch = ["/data/a"]\nidle_timeout_s = 3.5\npolling = true\n'
        'data_endpoint = "tcp://127.0.0.1:7000"\npreview_max_fps = 4\n'
    )
    monkeypatch.setenv("STEMCAST_IDLE_TIMEOUT_S", "7")
    monkeypatch.setenv("STEMCAST_DATA_ENDPOINT", "tcp://127.0.0.1:7100")
    settings = load_settings(config, data_endpoint="tcp://127.0.0.1:7200", watch=None)
    assert settings.watch == [Path("/data/a")]
    assert settings.polling is True
    assert settings.preview_max_fps == 4
    assert settings.idle_timeout_s == 7
    assert settings.data_endpoint == "tcp://127.0.0.1:7200"


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "stemcast.toml"
    config.write_text("idle_timout_s = 3\n")
    with pytest.raises(ParameterError, match="idle_timout_s"):
        load_settings(config)
    with pytest.raises(ParameterError, match="batch_frames"):
        load_settings(batch_frames=0)
    with pytest.raises(ValidationError, match="batch_frames"):
        ServiceSettings(batch_frames=0)
    with pytest.raises(ParameterError, match=r"missing\.toml: no such configuration file"):
        load_settings(tmp_path / "missing.toml")
