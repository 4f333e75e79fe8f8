"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file against the Compose specification schema (check-jsonschema's vendored copy, so
no download), and its wiring against invsync/settings.py: every INVSYNC_* variable is a setting,
each process's environment is accepted by the settings object, published ports are the settings'
defaults (so the host's CLI reaches the containers with no settings), internal endpoints name a
service and the port it listens on, the channel policy lists the configured channels; the worker,
the Redis sink and the ERP dispatcher run their commands, are health-checked and scraped on the
ports their settings name, as the jobs the alerts select; the dispatcher reaches the ERP simulator.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from invsync.settings import ENV_PREFIX, Settings, load_settings
from state.channel_policy import load_policy
from tests.deploy import (
    ALERTS,
    CHART,
    COMPOSE_FILE,
    DOCKERFILE,
    LOCAL_PROMETHEUS,
    ROOT,
    SCRAPE_JOBS,
    catalogue_topics,
    topic_like_names,
    unknown_settings,
)

INVSYNC_SERVICES = ("topics-init", "worker", "simulator", "redis-sink", "erp-dispatcher")
DEFAULTS = Settings()  # type: ignore[call-arg]
# The long-running processes that serve /metrics: service -> (command, Prometheus job).
SCRAPED = {
    "worker": (["worker"], "invsync"),
    "redis-sink": (["sink", "redis"], "invsync-redis-sink"),
    "erp-dispatcher": (["sink", "erp"], "invsync-erp"),
}
ERP_SIMULATOR = "erp"  # the ERP peer the dispatcher delivers to


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def published(service: dict) -> dict[int, int]:
    """container port -> host port, from "HOST:CONTAINER" entries."""
    ports = {}
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        ports[int(container)] = int(host.rpartition(":")[2])
    return ports


def validate_compose(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    return subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=60)


# --- the Compose specification ---------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail("check-jsonschema is missing: .venv/bin/pip install -e '.[dev]'")
    result = validate_compose(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_compose_specification_violation_is_caught(tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["worker"]["depends_on"]["redis"]["condition"] = "service_ready"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = validate_compose(path)
    assert result.returncode != 0 and "service_ready" in result.stdout + result.stderr


# --- settings --------------------------------------------------------------------------------


def test_env_vars_are_settings(compose: dict) -> None:
    names = [name for s in services(compose).values() for name in environment(s)]
    unknown = unknown_settings(names)
    assert not unknown, f"not fields of invsync/settings.py Settings: {unknown}"


@pytest.mark.parametrize("name", INVSYNC_SERVICES)
def test_settings_accept_each_process_environment(
    compose: dict, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_of(services(compose)[name], monkeypatch)


def settings_of(service: dict, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings object the service's process loads from its environment."""
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in environment(service).items():
        monkeypatch.setenv(key, value)
    return load_settings()  # exits 2 naming the variable if a value is invalid


def test_all_invsync_processes_share_topics_and_group(compose: dict) -> None:
    shared: tuple[str, ...] = (
        "INVSYNC_KAFKA_BOOTSTRAP",
        "INVSYNC_TOPIC_PREFIX",
        "INVSYNC_PARTITIONS",
    )
    shared += ("INVSYNC_CHANNELS", "INVSYNC_APP_ID", "INVSYNC_SCHEMA_REGISTRY_URL")
    envs = [environment(services(compose)[name]) for name in INVSYNC_SERVICES]
    for key in shared:
        assert len({env.get(key) for env in envs}) == 1, f"{key} differs between processes"


def test_settings_defaults_where_they_appear(compose: dict) -> None:
    env = environment(services(compose)["worker"])
    assert int(env["INVSYNC_PARTITIONS"]) == DEFAULTS.partitions
    assert env["INVSYNC_APP_ID"] == DEFAULTS.app_id
    assert int(env["INVSYNC_WEB_PORT"]) == DEFAULTS.web_port
    assert DEFAULTS.default_channel in env["INVSYNC_CHANNELS"].split(",")


# --- ports and endpoints ---------------------------------------------------------------------


def test_published_ports_are_the_settings_defaults(compose: dict) -> None:
    """The host's `invsync tail ...` and curl on :6066 work against compose with no settings."""
    svc = services(compose)
    kafka_host_port = int(DEFAULTS.kafka_bootstrap.rpartition(":")[2])
    assert kafka_host_port == DEFAULTS.kafka_port
    assert DEFAULTS.kafka_port in published(svc["kafka"]).values()
    advertised = environment(svc["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert f"localhost:{DEFAULTS.kafka_port}" in advertised
    registry = urlsplit(DEFAULTS.schema_registry_url)
    assert registry.port == DEFAULTS.registry_port
    assert published(svc["schema-registry"])[8080] == DEFAULTS.registry_port
    redis = urlsplit(DEFAULTS.redis_url)
    assert redis.port == DEFAULTS.redis_port
    assert published(svc["redis"])[6379] == DEFAULTS.redis_port
    web_port = int(environment(svc["worker"])["INVSYNC_WEB_PORT"])
    assert published(svc["worker"]) == {web_port: DEFAULTS.web_port}
    sink_port = int(environment(svc["redis-sink"])["INVSYNC_REDIS_SINK_PORT"])
    assert published(svc["redis-sink"]) == {sink_port: DEFAULTS.redis_sink_port}
    erp_sink_port = int(environment(svc["erp-dispatcher"])["INVSYNC_ERP_SINK_PORT"])
    assert published(svc["erp-dispatcher"]) == {erp_sink_port: DEFAULTS.erp_sink_port}
    erp_port = int(simulator_option(svc[ERP_SIMULATOR], "--port"))
    assert published(svc[ERP_SIMULATOR]) == {erp_port: urlsplit(DEFAULTS.erp_url).port}


def test_internal_endpoints_name_a_service_and_its_port(compose: dict) -> None:
    svc = services(compose)
    env = environment(svc["worker"])
    host, _, port = env["INVSYNC_KAFKA_BOOTSTRAP"].rpartition(":")
    assert f"PLAINTEXT://{host}:{port}" in environment(svc[host])["KAFKA_ADVERTISED_LISTENERS"]
    registry = urlsplit(env["INVSYNC_SCHEMA_REGISTRY_URL"])
    assert registry.hostname in svc and registry.port in published(svc[registry.hostname])
    assert registry.path == urlsplit(DEFAULTS.schema_registry_url).path
    redis = urlsplit(env["INVSYNC_REDIS_URL"])
    assert redis.hostname in svc and redis.port in published(svc[redis.hostname])


def simulator_option(service: dict, option: str) -> str:
    command = [str(word) for word in service["command"]]
    assert option in command, f"{option} not in {command}"
    return command[command.index(option) + 1]


def test_erp_dispatcher_delivers_to_the_erp_simulator(compose: dict) -> None:
    """INVSYNC_ERP_URL names the simulator's service, the port and address it listens on, and
    the path it serves; the simulator really takes those options."""
    svc = services(compose)
    url = urlsplit(environment(svc["erp-dispatcher"])["INVSYNC_ERP_URL"])
    assert url.scheme == "http" and url.hostname == ERP_SIMULATOR
    simulator = svc[ERP_SIMULATOR]
    assert url.port == int(simulator_option(simulator, "--port"))
    assert url.path == urlsplit(DEFAULTS.erp_url).path  # POST /v1/stock-deltas
    # `invsync erp-simulator` listens on 127.0.0.1 only: unreachable from another container.
    assert simulator_option(simulator, "--host") == "0.0.0.0"
    assert simulator["entrypoint"] == ["python", "-m", "invsync.erp_simulator"]
    usage = subprocess.run(
        [sys.executable, "-m", "invsync.erp_simulator", "--help"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert usage.returncode == 0, usage.stderr
    for option in ("--host", "--port", "--db"):
        assert option in usage.stdout, f"the simulator has no {option} option"
    # Accepted deltas (its idempotency memory) survive a restart: the db is on a named volume.
    db = Path(simulator_option(simulator, "--db"))
    volumes = [str(v).split(":") for v in simulator.get("volumes", [])]
    assert any(src in compose["volumes"] and db.parent == Path(dst) for src, dst in volumes)
    assert "livez" in " ".join(simulator["healthcheck"]["test"])
    assert f":{url.port}/livez" in " ".join(simulator["healthcheck"]["test"])
    rule = svc["erp-dispatcher"]["depends_on"][ERP_SIMULATOR]["condition"]
    assert rule == "service_healthy"
    assert not [k for k in environment(simulator) if k.startswith(ENV_PREFIX)]


@pytest.mark.parametrize("name", SCRAPED)
def test_scraped_processes_commands_ports_and_health(
    compose: dict, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process runs its command, publishes the port its settings name for the job and has
    its health check there (the image's HEALTHCHECK probes the worker's port only)."""
    service = services(compose)[name]
    command, job = SCRAPED[name]
    assert service["command"] == command
    port = getattr(settings_of(service, monkeypatch), SCRAPE_JOBS[job])
    assert port in published(service)
    check = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/livez" in check, check
    assert service["restart"] == "unless-stopped"


def test_prometheus_scrapes_every_process_as_its_job(
    compose: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose's Prometheus scrapes each process at <service>:<port from its settings> as the
    job ops/prometheus/prometheus.yml and the alerts use for it."""
    svc = services(compose)
    config = yaml.safe_load(volume_mounts(svc["prometheus"])["/etc/prometheus/prometheus.yml"]
                           .read_text())  # fmt: skip
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    local = yaml.safe_load(LOCAL_PROMETHEUS.read_text())
    local_jobs = {job["job_name"] for job in local["scrape_configs"]}
    for name, (_, job) in SCRAPED.items():
        port = getattr(settings_of(svc[name], monkeypatch), SCRAPE_JOBS[job])
        assert jobs[job]["static_configs"][0]["targets"] == [f"{name}:{port}"], job
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
        assert job in local_jobs, f"{job} is not a job of {LOCAL_PROMETHEUS}"
    assert {job for _, job in SCRAPED.values()} == set(SCRAPE_JOBS)
    assert {j for j in jobs if j.startswith("invsync")} == set(SCRAPE_JOBS)


def test_prometheus_scrapes_the_worker_as_job_invsync(compose: dict) -> None:
    svc = services(compose)
    mounts = volume_mounts(svc["prometheus"])
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs["invsync"]["static_configs"][0]["targets"]
    web_port = environment(svc["worker"])["INVSYNC_WEB_PORT"]
    assert targets == [f"worker:{web_port}"]
    assert jobs["invsync"].get("metrics_path", "/metrics") == "/metrics"
    assert [mounts[path] for path in config["rule_files"]] == [ALERTS]
    if ALERTS.is_file():
        assert 'job="invsync"' in ALERTS.read_text()


def test_grafana_provisions_the_dashboard(compose: dict) -> None:
    mounts = volume_mounts(services(compose)["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "invsync.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert mounts[path] == ROOT / "ops" / "grafana"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    assert sources["datasources"][0]["isDefault"] is True


def volume_mounts(service: dict) -> dict[str, Path]:
    """container path -> host path of the bind mounts (which must exist)."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        if source.startswith("."):
            host = (ROOT / source).resolve()
            assert host.exists(), f"bind mount source {source} does not exist"
            mounts[target] = host
    return mounts


def test_bind_mounts_exist(compose: dict) -> None:
    for service in services(compose).values():
        volume_mounts(service)


# --- start order and health ------------------------------------------------------------------


def test_depends_on_conditions(compose: dict) -> None:
    svc = services(compose)
    for name, service in svc.items():
        for dependency, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                check = svc[dependency].get("healthcheck", {})
                assert check and not check.get("disable"), f"{name}: {dependency} has no check"
    for name in ("worker", "simulator", "redis-sink", "erp-dispatcher"):
        rule = svc[name]["depends_on"]["topics-init"]["condition"]
        assert rule == "service_completed_successfully", name
    assert svc["redis-sink"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["topics-init"]["restart"] == "no"
    assert "livez" in " ".join(svc["worker"]["healthcheck"]["test"])


def test_one_shot_and_simulator_commands(compose: dict) -> None:
    svc = services(compose)
    init_script = volume_mounts(svc["topics-init"])[svc["topics-init"]["entrypoint"][-1]]
    assert init_script.read_text().rstrip().endswith("exec invsync topics create")
    assert svc["simulator"]["command"][0] == "simulate"
    assert svc["worker"]["command"] == ["worker"]


def test_images_are_pinned(compose: dict) -> None:
    svc = services(compose)
    for name, service in svc.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    assert svc["schema-registry"]["image"].startswith("apicurio/apicurio-registry:3.")
    assert "broker,controller" in environment(svc["kafka"])["KAFKA_PROCESS_ROLES"]  # KRaft


# --- channels and topics ---------------------------------------------------------------------


def test_channel_policy_lists_the_configured_channels(compose: dict) -> None:
    worker = services(compose)["worker"]
    env = environment(worker)
    policy_file = volume_mounts(worker)[env["INVSYNC_CHANNEL_POLICY"]]
    policy = tomllib.loads(policy_file.read_text())
    assert sorted(policy["channels"]) == sorted(env["INVSYNC_CHANNELS"].split(","))
    chart_toml = yaml.safe_load((CHART / "values.yaml").read_text())["channelPolicy"]["toml"]
    assert policy == tomllib.loads(chart_toml), "the compose and chart policies differ"
    load_policy(policy_file).require(env["INVSYNC_CHANNELS"].split(","))  # the worker's check


def test_topic_names_are_in_the_catalogue(compose: dict) -> None:
    channels = environment(services(compose)["worker"])["INVSYNC_CHANNELS"].split(",")
    catalogue = catalogue_topics(channels)
    for path in (COMPOSE_FILE, ROOT / "ops" / "compose" / "topics-init.sh"):
        stray = topic_like_names(path.read_text()) - catalogue
        assert not stray, f"{path}: {sorted(stray)} are not topics of streams/topics.py"


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()

    def last(keyword: str) -> str:
        return [arg for key, arg in instructions if key == keyword][-1]

    bases = [arg.split()[0] for key, arg in instructions if key == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases), bases
    user = last("USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, "run as a numeric non-root user"
    assert last("ENTRYPOINT") == '["invsync"]' and last("CMD") == '["worker"]'
    assert "/livez" in last("HEALTHCHECK")
    assert last("EXPOSE") == str(DEFAULTS.web_port)
    assert f"INVSYNC_WEB_PORT={DEFAULTS.web_port}" in " ".join(
        a for k, a in instructions if k == "ENV"
    )


def test_docker_build_context_has_the_package() -> None:
    """What pyproject.toml packages is copied, and .dockerignore does not drop it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    copied: set[str] = set()
    for key, arg in dockerfile_instructions():
        if key == "COPY" and not arg.startswith("--from"):
            copied |= {source.rstrip("/") for source in arg.split()[:-1]}
    needed = packages | {"schemas", "pyproject.toml", "README.md"}
    assert needed <= copied, f"the Dockerfile does not copy {sorted(needed - copied)}"
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in sorted(needed):
        hits = [p for p in ignored if fnmatch.fnmatch(path, p) or path.startswith(p + "/")]
        assert not hits, f".dockerignore drops {path} ({hits})"


def test_compose_builds_the_dockerfile(compose: dict) -> None:
    for name in (*INVSYNC_SERVICES, ERP_SIMULATOR):
        build = services(compose)[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
