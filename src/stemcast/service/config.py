"""Settings of the live service: one model read from a TOML file, the environment and flags.

Precedence, highest first: values given to :func:`load_settings` (the command-line flags),
environment variables ``STEMCAST_<FIELD>`` (lists as JSON, e.g.
``STEMCAST_WATCH='["/data/a", "/data/b"]'``), the TOML file, the defaults below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stemcast.errors import ParameterError

__all__ = ["ServiceSettings", "load_settings"]


class ServiceSettings(BaseSettings):
    """Everything ``stemcast serve`` can be told; every field has a working default."""

    model_config = SettingsConfigDict(env_prefix="STEMCAST_", extra="forbid")
    #: The TOML file to read, set by :func:`load_settings`.
    config_file: ClassVar[Path | None] = None

    watch: list[Path] = Field(
        default_factory=list, description="Directories the camera writes runs to."
    )
    data_endpoint: str = Field(
        default="tcp://127.0.0.1:5555",
        description="Bind address of the lossless PUSH data channel.",
    )
    preview_endpoint: str = Field(
        default="tcp://127.0.0.1:5556",
        description="Bind address of the throttled PUB preview channel.",
    )
    polling: bool = Field(
        default=False,
        description="Poll the directories instead of waiting for file-system events: needed "
        "on network shares (SMB, NFS), where events from other machines never arrive.",
    )
    poll_interval_s: float = Field(
        default=0.5, gt=0, description="Time between directory scans when polling."
    )
    tail_interval_s: float = Field(
        default=0.001, gt=0, description="Time between two looks at a growing run's file sizes."
    )
    rescan_interval_s: float = Field(
        default=0.1,
        gt=0,
        description="Time between full re-reads of a run's file list (new files of a "
        "multi-file Merlin run or a rolling TVIPS series) while its last file is not growing.",
    )
    idle_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A run whose files stop growing for this long ends as interrupted.",
    )
    batch_frames: int = Field(
        default=16,
        ge=1,
        description="Frames read and decoded at once (memory: a few batches per run).",
    )
    data_hwm: int = Field(
        default=64,
        ge=1,
        description="Frames queued on the data channel before sending waits: the tailer "
        "then falls behind the file, which is the buffer.",
    )
    preview_hwm: int = Field(default=2, ge=1, description="Frames queued on the preview channel.")
    preview_max_fps: float = Field(
        default=10.0, gt=0, description="Most preview frames per second per run."
    )
    navigation_shape: tuple[int, int] | None = Field(
        default=None, description="Scan shape (x, y) to assume for every run, overriding inference."
    )
    timestamp_frames: int = Field(
        default=4096,
        ge=3,
        description="Frame timestamps kept per run to infer the scan width from fly-back gaps.",
    )
    shutdown_timeout_s: float = Field(
        default=5.0, gt=0, description="Time given to runs to finish their batch on SIGTERM."
    )
    existing_max_age_s: float = Field(
        default=10.0,
        ge=0,
        description="At start-up, runs whose files changed within this many seconds are "
        "followed (they may still grow); older runs are left alone.",
    )

    @field_validator("navigation_shape")
    @classmethod
    def _positive_shape(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError(f"navigation shape {value} has a size below 1")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read flags, then the environment, then the TOML file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.config_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> ServiceSettings:
    """Read the service settings.

    Parameters
    ----------
    config_file
        A TOML file with top-level keys named like the fields (``watch = ["/data"]``).
    **overrides
        Values that win over the environment and the file (command-line flags); ``None``
        values are ignored, so unset flags do not hide the file.

    Returns
    -------
    ServiceSettings
        The validated settings.

    Raises
    ------
    ParameterError
        When the file is missing or a value (from any source) is invalid.
    """
    if config_file is not None and not Path(config_file).is_file():
        raise ParameterError("no such configuration file", path=config_file)
    settings_cls = type("ServiceSettingsFromFile", (ServiceSettings,), {"config_file": config_file})
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings: ServiceSettings = settings_cls(**given)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors()
        )
        raise ParameterError(f"invalid settings: {problems}", path=config_file) from None
    return settings
