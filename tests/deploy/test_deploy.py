"""The deployment files hold together: every path, port, name and metric they refer to exists.

No container engine runs here, so the compose file, the Dockerfile, the Prometheus and
Grafana configuration and the systemd unit are checked for what they promise to each other
and to the code; ``promtool`` (installed with Prometheus) checks the Prometheus files when
present.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stemcast.service.config import load_settings
from stemcast.service.metrics import Metrics

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
#: Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(ROOT / "docker-compose.yml")
    return data


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (DEPLOY / "grafana" / "dashboards" / "stemcast.json").read_text()
    )
    return data


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def exposed_series() -> set[str]:
    """Every series name a fresh :class:`Metrics` can expose, as PromQL spells them."""
    names: set[str] = set()
    for family in text_string_to_metric_families(Metrics().render()[0].decode()):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not its functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = _LABEL_LISTS.sub("", expr)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group()
        if expr[match.end() :].lstrip().startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def mounts(service: str) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) of a compose service's volumes (short syntax)."""
    found = {}
    for volume in compose()["services"][service]["volumes"]:
        # A source may be ${VAR:?message with spaces}: split from the right.
        source, target, *mode = re.split(r":(?![^{]*\})", volume)
        found[target] = (source, mode[0] if mode else "rw")
    return found


def repo_file(source: str) -> Path:
    """The repository path of a bind-mount source such as ./deploy/x; it must exist."""
    assert source.startswith("./"), f"{source} is not a path in the repository"
    path = ROOT / source
    assert path.exists(), f"{source} is mounted but does not exist"
    return path


def in_mount(service: str, container_path: str) -> Path:
    """The repository file a service sees at ``container_path`` through its bind mounts."""
    wanted = PurePosixPath(container_path)
    for target, (source, _) in mounts(service).items():
        if wanted == PurePosixPath(target) or PurePosixPath(target) in wanted.parents:
            path = repo_file(source) / wanted.relative_to(target)
            assert path.exists(), f"{service} reads {container_path}, {path} does not exist"
            return path
    raise AssertionError(f"{service} mounts nothing at {container_path}")


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def container_http_port() -> int:
    [command] = [json.loads(args) for name, args in dockerfile() if name == "CMD"]
    return int(command[command.index("--http") + 1].rsplit(":", 1)[1])


def systemd_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / "stemcast.service").read_text())
    return unit


# The PromQL reader the dashboard and alert checks rely on.


def test_metric_names_are_read_out_of_promql_without_functions_labels_or_numbers() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, detector) (rate(stemcast_x_bucket{a=~"$b"}[1m])))'
        " / on (instance) group_left max(up) > 50e9 and stemcast_y offset 5m"
    )
    assert metric_names(expr) == {"stemcast_x_bucket", "up", "stemcast_y"}


def test_a_misspelt_metric_is_not_among_the_exposed_series() -> None:
    exposed = exposed_series()
    assert "stemcast_frames_ingested_total" in exposed
    assert "stemcast_decode_duration_seconds_bucket" in exposed
    assert "stemcast_frames_ingested" not in exposed
    assert "stemcast_frame_ingested_total" not in exposed


# docker-compose.yml


def test_compose_starts_stemcast_prometheus_and_grafana() -> None:
    assert set(compose()["services"]) == {"stemcast", "prometheus", "grafana"}


def test_compose_builds_stemcast_from_the_repository_with_the_deploy_dockerfile() -> None:
    build = compose()["services"]["stemcast"]["build"]
    context = ROOT / build["context"]
    assert context.resolve() == ROOT
    assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_compose_publishes_every_port_on_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_mounts_the_watch_folder_read_only_and_the_output_and_state_writable() -> None:
    volumes = mounts("stemcast")
    assert volumes["/data/watch"][1] == "ro"
    assert volumes["/data/output"][1] == "rw"
    state, mode = volumes["/var/lib/stemcast"]
    assert mode == "rw"
    assert state in compose()["volumes"]


def test_every_named_volume_used_by_a_service_is_declared() -> None:
    declared = set(compose()["volumes"])
    for name in compose()["services"]:
        for source, _ in mounts(name).values():
            if not source.startswith(("./", "/", "$")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_every_repository_file_compose_mounts_exists() -> None:
    for name in compose()["services"]:
        for source, _ in mounts(name).values():
            if source.startswith("./"):
                repo_file(source)


def test_every_variable_compose_needs_is_explained_in_the_operations_guide() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    variables = set(re.findall(r"\$\{(\w+)", text))
    variables.update(secret["environment"] for secret in compose()["secrets"].values())
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert variables
    for variable in variables:
        assert variable in guide, variable


def test_the_token_reaches_the_service_as_a_secret_file() -> None:
    service = compose()["services"]["stemcast"]
    [secret] = service["secrets"]
    assert secret in compose()["secrets"]
    assert service["environment"]["STEMCAST_TOKEN_FILE"] == f"/run/secrets/{secret}"


def test_the_published_http_port_is_the_one_the_container_serves_on() -> None:
    ports = compose()["services"]["stemcast"]["ports"]
    published = {int(port.rsplit(":", 1)[1]) for port in ports}
    assert container_http_port() in published


@pytest.fixture
def without_stemcast_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read from the files alone, whatever the environment of the test run."""
    for name in list(os.environ):
        if name.startswith("STEMCAST_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("without_stemcast_environment")
def test_the_mounted_service_settings_load_and_match_the_mounts() -> None:
    toml = in_mount("stemcast", "/etc/stemcast/stemcast.toml")
    settings = load_settings(toml)
    assert [str(path) for path in settings.watch] == ["/data/watch"]
    assert str(settings.output) == "/data/output"
    assert set(mounts("stemcast")) >= {"/data/watch", "/data/output"}


# Prometheus


def test_prometheus_scrapes_stemcast_on_the_port_it_serves() -> None:
    command = compose()["services"]["prometheus"]["command"]
    [config_flag] = [flag for flag in command if flag.startswith("--config.file=")]
    config = load_yaml(in_mount("prometheus", config_flag.split("=", 1)[1]))
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "stemcast"]
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert targets == [f"stemcast:{container_http_port()}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["scrape_interval"] == "5s"


def test_prometheus_rule_files_exist_and_alert_on_exposed_metrics_only() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    exposed = exposed_series() | PROMETHEUS_SERIES
    assert config["rule_files"]
    for name in config["rule_files"]:
        rules = load_yaml(DEPLOY / "prometheus" / name)
        for group in rules["groups"]:
            for rule in group["rules"]:
                used = metric_names(rule["expr"])
                assert used, rule["alert"]
                assert used <= exposed, f"{rule['alert']} uses {used - exposed}"


@pytest.mark.parametrize("check", [("config", "prometheus.yml"), ("rules", "alerts.yml")])
def test_promtool_accepts_the_prometheus_files(check: tuple[str, str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (it comes with the prometheus package)")
    kind, name = check
    result = subprocess.run(
        [promtool, "check", kind, str(DEPLOY / "prometheus" / name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_on_what_they_should_and_only_that() -> None:
    """``alerts_test.yml`` feeds the rules series (stalled and catching-up clients and
    writers, a tail falling behind) and says which alerts fire when."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (it comes with the prometheus package)")
    result = subprocess.run(
        [promtool, "test", "rules", str(Path(__file__).with_name("alerts_test.yml"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Grafana


def test_grafana_provisioning_and_dashboards_are_mounted_where_grafana_reads_them() -> None:
    provisioning = in_mount("grafana", "/etc/grafana/provisioning")
    [provider] = load_yaml(provisioning / "dashboards" / "stemcast.yml")["providers"]
    assert provider["type"] == "file"
    folder = in_mount("grafana", provider["options"]["path"])
    assert (
        folder / "stemcast.json"
    ).resolve() == DEPLOY / "grafana" / "dashboards" / "stemcast.json"


def test_grafana_datasource_is_the_compose_prometheus_under_the_dashboard_default_uid() -> None:
    provisioning = in_mount("grafana", "/etc/grafana/provisioning")
    [source] = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    [variable] = [v for v in dashboard()["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    assert variable["current"]["value"] == source["uid"]


def test_grafana_admin_password_comes_from_the_environment() -> None:
    environment = compose()["services"]["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")


def test_dashboard_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    every = dashboard()["panels"]
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in every:
        box = panel["gridPos"]
        assert box["x"] >= 0, panel["title"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        cells = {(box["x"] + dx, box["y"] + dy) for dx in range(box["w"]) for dy in range(box["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_dashboard_uses_the_datasource_variable_everywhere() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    name = next(v["name"] for v in board["templating"]["list"] if v["type"] == "datasource")
    for panel in panels():
        assert panel["datasource"]["uid"] == f"${{{name}}}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == f"${{{name}}}", panel["title"]


def test_every_dashboard_query_selects_only_metrics_stemcast_exposes() -> None:
    exposed = exposed_series()
    for panel in panels():
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used, f"{panel['title']}: {target['expr']}"
            assert used <= exposed, f"{panel['title']} queries {used - exposed}"
    for variable in dashboard()["templating"]["list"]:
        for metric in re.findall(r"label_values\((\w+)", variable.get("definition", "")):
            assert metric in exposed, variable["name"]


def test_dashboard_shows_throughput_lag_latency_runs_and_conversions() -> None:
    queried = {
        name
        for panel in panels()
        for target in panel["targets"]
        for name in metric_names(target["expr"])
    }
    for metric in (
        "stemcast_frames_ingested_total",
        "stemcast_frames_published_total",
        "stemcast_bytes_ingested_total",
        "stemcast_bytes_published_total",
        "stemcast_tail_lag_bytes",
        "stemcast_tail_lag_frames",
        "stemcast_tail_lag_seconds",
        "stemcast_decode_duration_seconds_bucket",
        "stemcast_publish_duration_seconds_bucket",
        "stemcast_preview_frames_dropped_total",
        "stemcast_runs",
        "stemcast_conversion_jobs",
        "stemcast_conversion_jobs_finished_total",
        "stemcast_conversion_duration_seconds_bucket",
        "stemcast_conversion_written_bytes_total",
        "stemcast_registry_queue_depth",
        "stemcast_output_free_bytes",
        "stemcast_subscribers",
        "stemcast_consumer_lag_frames",
        "stemcast_consumer_lag_bytes",
        "stemcast_consumer_lag_seconds",
    ):
        assert metric in queried, metric


# Dockerfile and .dockerignore


def test_dockerfile_runs_a_slim_python_as_a_user_that_is_not_root() -> None:
    instructions = dockerfile()
    [base] = [args for name, args in instructions if name == "FROM"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base)
    users = [args for name, args in instructions if name == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_health_check_asks_the_service_for_health() -> None:
    [check] = [args for name, args in dockerfile() if name == "HEALTHCHECK"]
    assert f"127.0.0.1:{container_http_port()}/health" in check
    assert "curl" not in check  # not in the slim image


def test_dockerfile_installs_the_package_from_the_copied_repository_files() -> None:
    instructions = dockerfile()
    for name, args in instructions:
        if name == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), source
    assert any(
        name == "RUN" and "pip install --no-cache-dir" in args for name, args in instructions
    )
    [exposed] = [args for name, args in instructions if name == "EXPOSE"]
    assert str(container_http_port()) in exposed.split()


def test_dockerignore_lets_through_what_the_dockerfile_copies() -> None:
    patterns = (ROOT / ".dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in patterns if line.startswith("!")}
    assert "*" in patterns
    for name, args in dockerfile():
        if name == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert Path(source).parts[0] in kept, source


# systemd


def test_systemd_unit_runs_the_service_as_its_own_user_with_a_clean_stop() -> None:
    service = systemd_unit()["Service"]
    command = shlex.split(service["ExecStart"])
    assert command == [
        "/opt/stemcast/venv/bin/stemcast", "serve", "--config", "/etc/stemcast/stemcast.toml"
    ]  # fmt: skip
    assert service["User"] not in {"root", "0"}
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 0
    assert systemd_unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_is_hardened_and_keeps_the_registry_in_its_state_directory() -> None:
    service = systemd_unit()["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "stemcast"
    environment = dict(item.split("=", 1) for item in shlex.split(service["Environment"]))
    assert environment["STEMCAST_REGISTRY"].startswith("%S/stemcast/")


@pytest.mark.usefixtures("without_stemcast_environment")
def test_systemd_unit_opens_exactly_the_folders_of_the_example_settings() -> None:
    settings = load_settings(DEPLOY / "stemcast.toml")
    service = systemd_unit()["Service"]
    assert service["ReadOnlyPaths"].split() == [str(path) for path in settings.watch]
    assert service["ReadWritePaths"].split() == [str(settings.output)]


# The operations guide


def test_operations_guide_explains_every_metric_and_every_panel() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    for family in text_string_to_metric_families(Metrics().render()[0].decode()):
        if family.name.startswith("stemcast_") and not family.name.endswith("_created"):
            assert family.name in guide, family.name
    for panel in panels():
        assert panel["title"] in guide, panel["title"]
