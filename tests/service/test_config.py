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
    with pytest.raises(ParameterError, match="batch_bytes"):
        load_settings(batch_bytes=0)
    with pytest.raises(ValidationError, match="data_credit"):
        ServiceSettings(data_credit=0)
    with pytest.raises(ParameterError, match=r"missing\.toml: no such configuration file"):
        load_settings(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("given", "bound"),
    [
        ("8751", "127.0.0.1:8751"),
        (":0", "127.0.0.1:0"),
        ("0.0.0.0:80", "0.0.0.0:80"),
        ("[::1]:9000", "[::1]:9000"),
        ("off", None),
        ("", None),
    ],
)
def test_http_address_forms(given: str, bound: str | None) -> None:
    assert load_settings(http=given).http == bound


def test_http_defaults_to_loopback_and_refuses_bad_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEMCAST_HTTP", raising=False)
    assert load_settings().http == "127.0.0.1:8750"
    with pytest.raises(ParameterError, match="http"):
        load_settings(http="localhost:http")
    with pytest.raises(ParameterError, match="70000"):
        load_settings(http="70000")


def test_conversion_targets_from_flag_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(convert="emd, blockfile", output=tmp_path).convert == ["blockfile", "emd"]
    monkeypatch.setenv("STEMCAST_CONVERT", "emd")
    monkeypatch.setenv("STEMCAST_OUTPUT", str(tmp_path))
    assert load_settings().convert == ["emd"]
    with pytest.raises(ParameterError, match=r"convert: .*'tiff' is not a target"):
        load_settings(convert="tiff")


def test_automatic_conversion_needs_an_output_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEMCAST_OUTPUT", raising=False)
    with pytest.raises(ParameterError, match="automatic conversion needs an output root"):
        load_settings(convert="emd")
    with pytest.raises(ParameterError, match="automatic conversion needs an output root"):
        load_settings(conversion_rules=[{"detector": "tvips", "targets": ["blockfile"]}])
    assert load_settings().output is None


def test_rules_pick_targets_per_detector_and_folder(tmp_path: Path) -> None:
    config = tmp_path / "stemcast.toml"
    config.write_text(
        f"""
watch = ["{tmp_path / "merlin"}", "{tmp_path / "fast"}"]
output = "{tmp_path / "out"}"
convert = ["emd"]
convert_options = {{ emd = {{ compression = "gzip" }} }}

[[conversion_rules]]
folder = "{tmp_path / "fast"}"
targets = []

[[conversion_rules]]
detector = "tvips"
targets = ["blockfile", "emd"]
options = {{ blockfile = {{ intensity_scaling = "minmax" }} }}
"""
    )
    settings = load_settings(config)
    gzip = {"emd": {"compression": "gzip", "compression_opts": 4}}
    assert settings.conversion_for("merlin", tmp_path / "merlin") == (["emd"], gzip)
    assert settings.conversion_for("tvips", tmp_path / "merlin") == (
        ["blockfile", "emd"],
        {"blockfile": {"intensity_scaling": "minmax"}, "emd": {}},
    )
    # The first matching rule wins: the folder rule turns conversion off even for TVIPS.
    assert settings.conversion_for("tvips", tmp_path / "fast") == ([], {})
    # The options a run's conversion to given targets uses: its rule's, else convert_options.
    assert settings.options_for("tvips", tmp_path / "merlin", ["blockfile"]) == {
        "blockfile": {"intensity_scaling": "minmax"}
    }
    assert settings.options_for("tvips", tmp_path / "merlin", ["emd"]) == {"emd": {}}
    assert settings.options_for("merlin", tmp_path / "merlin", ["emd", "blockfile"]) == {
        **gzip,
        "blockfile": {},
    }
    assert settings.options_for("merlin", tmp_path / "fast", ["emd"]) == gzip


def test_bad_rules_are_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="needs a 'detector', a 'folder' or both"):
        load_settings(output=tmp_path, conversion_rules=[{"targets": ["emd"]}])
    with pytest.raises(ParameterError, match=r"conversion_rules\.0.*options\.emd\.chunks"):
        load_settings(
            output=tmp_path,
            conversion_rules=[
                {"detector": "merlin", "targets": ["emd"], "options": {"emd": {"chunks": "big"}}}
            ],
        )
    with pytest.raises(ParameterError, match=r"convert_options: .*options\.emd\.shuffle"):
        load_settings(convert_options={"emd": {"shuffle": True}})


def test_the_token_comes_from_its_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STEMCAST_TOKEN", raising=False)
    assert load_settings().api_token() is None
    monkeypatch.setenv("STEMCAST_TOKEN", "from-the-environment")
    settings = load_settings()
    assert settings.api_token() == "from-the-environment"
    assert "from-the-environment" not in repr(settings)
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    assert load_settings(token_file=token_file).api_token() == "from-the-file"
    with pytest.raises(ParameterError, match=r"missing.*cannot read the token"):
        load_settings(token_file=tmp_path / "missing").api_token()


def test_the_registry_defaults_to_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("STEMCAST_REGISTRY", raising=False)
    assert load_settings().registry_path() == tmp_path / "state" / "stemcast" / "registry.sqlite3"
    assert load_settings(registry=tmp_path / "r.sqlite3").registry_path() == tmp_path / "r.sqlite3"


def test_relative_folders_are_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(watch=[Path("camera")], input_roots=[Path("archive")])
    assert settings.watch == [tmp_path / "camera"]
    assert settings.input_roots == [tmp_path / "archive"]
