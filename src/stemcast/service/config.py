"""Settings of the live service: one model read from a TOML file, the environment and flags.

Precedence, highest first: values given to :func:`load_settings` (the command-line flags),
environment variables ``STEMCAST_<FIELD>`` (lists as JSON, e.g.
``STEMCAST_WATCH='["/data/a", "/data/b"]'``), the TOML file, the defaults below.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stemcast.errors import ParameterError
from stemcast.shape import check_navigation_shape

__all__ = ["ConversionRule", "ServiceSettings", "http_bind_address", "load_settings"]

#: Where the HTTP control API binds when the address names only a port.
_HTTP_HOST = "127.0.0.1"
_HTTP_OFF = frozenset(("", "off", "none", "false", "no"))


def http_bind_address(address: str) -> tuple[str, int]:
    """Split an HTTP bind address into host and port.

    Parameters
    ----------
    address
        ``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` or ``PORT``; a missing host is
        ``127.0.0.1``. Port 0 binds a free port.

    Returns
    -------
    tuple of str and int
        The host (IPv6 without brackets) and the port.

    Raises
    ------
    ParameterError
        When the port is not a number in 0..65535.
    """
    host, _, port = address.strip().rpartition(":")
    host = host.strip("[]") or _HTTP_HOST
    try:
        number = int(port)
    except ValueError:
        raise ParameterError(
            f"{address!r} is not an address like 127.0.0.1:8750", parameter="http"
        ) from None
    if not 0 <= number <= 65535:
        raise ParameterError(f"{address!r}: port {number} is not in 0..65535", parameter="http")
    return host, number


def _split_targets(value: Any) -> Any:
    """Accept ``"emd,blockfile"`` (a flag, an environment variable) as well as a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _checked_targets(value: list[str]) -> list[str]:
    from stemcast.convert.options import parse_targets

    return list(parse_targets(value)) if value else []


def _checked_options(
    targets: list[str], options: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Normalise the options of ``targets``; options of other targets are left out."""
    from stemcast.convert.options import check_options

    if not targets:
        return {}
    return check_options(targets, {name: options[name] for name in targets if name in options})


class ConversionRule(BaseModel):
    """Targets and options for the runs of one detector and/or one watch folder.

    Rules are tried in order; the first that matches a run decides its automatic
    conversion. An empty ``targets`` list turns automatic conversion off for the runs it
    matches.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: Literal["merlin", "tvips"] | None = Field(
        default=None, description="Runs of this detector only."
    )
    folder: Path | None = Field(default=None, description="Runs of this watch folder only.")
    targets: list[str] = Field(description='Formats to convert to, e.g. ["emd", "blockfile"].')
    options: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description="Options per target; the service-wide convert_options when not given.",
    )

    _split = field_validator("targets", mode="before")(_split_targets)

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, value: list[str]) -> list[str]:
        return _checked_targets(value)

    @model_validator(mode="after")
    def _selective(self) -> Self:
        if self.detector is None and self.folder is None:
            raise ValueError("a conversion rule needs a 'detector', a 'folder' or both")
        if self.options is not None:
            _checked_options(self.targets, self.options)
        return self

    def matches(self, detector: str, folder: Path) -> bool:
        """Whether the rule applies to a run of ``detector`` found in ``folder``.

        Parameters
        ----------
        detector
            ``"merlin"`` or ``"tvips"``.
        folder
            The folder holding the run's first file.

        Returns
        -------
        bool
            Whether every condition the rule sets holds.
        """
        if self.detector is not None and self.detector != detector:
            return False
        return self.folder is None or os.path.realpath(self.folder) == os.path.realpath(folder)


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
        description="Bind address of the data channel (ROUTER): every client gets every "
        "frame, at its own pace, from where it chooses.",
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
        description="A run whose files stop growing for this long ends: complete, unless its "
        "length was known and not reached or its scan is visibly cut short (interrupted).",
    )
    batch_bytes: int = Field(
        default=4 * 2**20,
        ge=1,
        description="Bytes of frames read and decoded at once by the follower and by each "
        "data client (at least one frame): memory is a few batches per run and per client.",
    )
    max_frame_bytes: int = Field(
        default=256 * 2**20,
        ge=1,
        description="Largest frame followed, as stored or decoded: a run whose header claims "
        "larger frames is refused as a format error (memory follows the frame size; the "
        "largest cameras write 8192 x 8192 16-bit frames, 128 MiB).",
    )
    data_credit: int = Field(
        default=128,
        ge=1,
        description="Most messages in flight to one data client (its credit): a slow client "
        "holds back only itself, and reads older frames back from the files.",
    )
    data_credit_bytes: int = Field(
        default=32 * 2**20,
        ge=1,
        description="Most bytes of frames in flight to one data client, whatever its credit "
        "(at least one frame): what a client's queue holds of the service's memory.",
    )
    client_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A data client that sends nothing for this long (no credit, no "
        "heartbeat) is forgotten; it goes on from its position when it speaks again.",
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
    http: str | None = Field(
        default=f"{_HTTP_HOST}:8750",
        description="Bind address of the HTTP control API (HOST:PORT; a bare PORT or :PORT "
        "binds 127.0.0.1; port 0 a free port); 'off' or empty turns the API off.",
    )
    output: Path | None = Field(
        default=None, description="Output root: converted files go under this folder."
    )
    convert: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Formats every finished run is converted to (emd, blockfile), unless a "
        "conversion rule says otherwise; empty: no automatic conversion.",
    )
    convert_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Writer options per target, e.g. {emd = {compression = 'gzip'}}.",
    )
    conversion_rules: list[ConversionRule] = Field(
        default_factory=list,
        description="Targets and options per detector and/or watch folder; the first rule "
        "that matches a run wins, else convert and convert_options apply.",
    )
    token_file: Path | None = Field(
        default=None,
        description="File holding the bearer token of the HTTP API's POST and DELETE calls.",
    )
    token: SecretStr | None = Field(
        default=None,
        description="The bearer token itself (environment STEMCAST_TOKEN), if no token_file.",
    )
    registry: Path | None = Field(
        default=None,
        description="SQLite file of runs and jobs; $XDG_STATE_HOME/stemcast/registry.sqlite3 "
        "when not given.",
    )
    scheduler: str | None = Field(
        default=None,
        description="Address of a dask.distributed scheduler that runs the conversions "
        "(one task per run); conversions run in the service when not given.",
    )
    convert_workers: int = Field(
        default=1,
        ge=1,
        description="Conversions running at once (in the service or on the cluster).",
    )
    live_conversions: int = Field(
        default=2,
        ge=1,
        description="Runs converted while they are acquired at once, each by its own worker "
        "process (a run beyond these is converted live as soon as one ends, catching up from "
        "its files).",
    )
    input_roots: list[Path] = Field(
        default_factory=list,
        description="Folders besides the watch folders whose runs POST /convert may read.",
    )

    @field_validator("navigation_shape")
    @classmethod
    def _positive_shape(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is None:
            return None
        try:
            x, y = check_navigation_shape(value, ndim=2)
        except ParameterError as error:
            raise ValueError(error.problem) from None
        return x, y

    @field_validator("watch", "input_roots")
    @classmethod
    def _absolute(cls, value: list[Path]) -> list[Path]:
        # Discovery reports absolute paths: a relative folder would make one run two.
        return [Path(os.path.abspath(folder)) for folder in value]

    @field_validator("http")
    @classmethod
    def _http_address(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in _HTTP_OFF:
            return None
        host, port = http_bind_address(value)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    _split = field_validator("convert", mode="before")(_split_targets)

    @field_validator("convert")
    @classmethod
    def _known_targets(cls, value: list[str]) -> list[str]:
        return _checked_targets(value)

    @field_validator("convert_options")
    @classmethod
    def _known_options(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return _checked_options(list(value), value)

    @model_validator(mode="after")
    def _output_for_conversions(self) -> Self:
        automatic = self.convert or any(rule.targets for rule in self.conversion_rules)
        if automatic and self.output is None:
            raise ValueError(
                "automatic conversion needs an output root: set 'output' (--output DIR)"
            )
        return self

    def conversion_for(
        self, detector: str, folder: str | os.PathLike[str]
    ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """Return the automatic conversion of a run: its targets and their options.

        Parameters
        ----------
        detector
            ``"merlin"`` or ``"tvips"``.
        folder
            The folder holding the run's first file.

        Returns
        -------
        tuple
            The targets (empty: no automatic conversion) and the normalised options of
            those targets, from the first matching rule, else from ``convert`` and
            ``convert_options``.
        """
        rule = self._rule_for(detector, folder)
        targets = self.convert if rule is None else rule.targets
        return targets, self.options_for(detector, folder, targets)

    def options_for(
        self, detector: str, folder: str | os.PathLike[str], targets: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Return the options a run's conversion to ``targets`` uses unless told otherwise.

        Parameters
        ----------
        detector
            ``"merlin"`` or ``"tvips"``.
        folder
            The folder holding the run's first file.
        targets
            The targets converted to.

        Returns
        -------
        dict
            The normalised options of each target: the first matching rule's ``options``,
            else ``convert_options`` (``{}``: the defaults).
        """
        rule = self._rule_for(detector, folder)
        options = self.convert_options if rule is None or rule.options is None else rule.options
        return _checked_options(list(targets), options)

    def _rule_for(self, detector: str, folder: str | os.PathLike[str]) -> ConversionRule | None:
        return next(
            (rule for rule in self.conversion_rules if rule.matches(detector, Path(folder))), None
        )

    def api_token(self) -> str | None:
        """Return the bearer token of the HTTP API's mutating calls, if one is configured.

        Returns
        -------
        str or None
            The first line of ``token_file``, else ``token``; ``None`` when neither is set.

        Raises
        ------
        ParameterError
            When ``token_file`` cannot be read or is empty.
        """
        if self.token_file is not None:
            try:
                text = self.token_file.read_text().strip()
            except OSError as error:
                raise ParameterError(
                    f"cannot read the token: {error.strerror}",
                    path=self.token_file,
                    parameter="token_file",
                ) from None
            if not text:
                raise ParameterError("the token file is empty", path=self.token_file)
            return text.splitlines()[0].strip()
        if self.token is None or not self.token.get_secret_value():
            return None
        return self.token.get_secret_value()

    def registry_path(self) -> Path:
        """Return the registry file: ``registry``, else the per-user default."""
        from stemcast.service.state.registry import default_registry_path

        return self.registry if self.registry is not None else default_registry_path()

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
            ": ".join(filter(None, [".".join(map(str, item["loc"])), item["msg"]]))
            for item in error.errors()
        )
        raise ParameterError(f"invalid settings: {problems}", path=config_file) from None
    return settings
