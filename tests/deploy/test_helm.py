"""The Helm chart (helm/invsync): lint, render, Kubernetes schemas, and wiring to the settings.

Rendered with the default values and with helm/values-production.yaml; no cluster needed. Tests
that run helm skip (saying so) only when helm is not installed: ops/install-helm.sh installs it.
"""

from __future__ import annotations

import json
import os
import tomllib
import typing
from pathlib import Path

import annotated_types
import pytest
import yaml

from invsync.settings import ENV_PREFIX, Settings, load_settings
from tests.deploy import (
    ALERTS,
    CHART,
    CHART_COPIES,
    LOCAL_PROMETHEUS,
    NAMESPACE,
    PLACEHOLDER_MARK,
    PRODUCTION_VALUES,
    SCRAPE_JOBS,
    SETTINGS_TO_COME,
    catalogue_topics,
    containers,
    helm,
    helm_binary,
    manifest_problems,
    only,
    render,
    render_notes,
    settings_env_names,
    template,
    topic_like_names,
    unknown_settings,
    workloads,
)

needs_helm = pytest.mark.skipif(
    helm_binary() is None, reason="helm is not installed: run ops/install-helm.sh (CI does)"
)

VALUE_SETS = {"default": [], "production": [PRODUCTION_VALUES]}

# Settings fields the chart sets from somewhere other than `config` (or that only the local
# stack uses). Any other field must be exposed in values.yaml `config`.
SET_OUTSIDE_CONFIG = {
    "kafka_bootstrap": "kafka.bootstrap",
    "schema_registry_url": "schemaRegistry.url",
    "redis_url": "redis.url",
    "erp_url": "erp.url",
    "state_dir": "persistence.mountPath",
    "standby_replicas": "standbyReplicas",
    "channel_policy": "channelPolicy (mounted file)",
}
LOCAL_STACK_ONLY = {
    "stack_dir",
    "kafka_port",
    "kafka_controller_port",
    "registry_port",
    "redis_port",
}
# Chart defaults that differ from the settings defaults on purpose.
CHART_DEFAULTS_DIFFER = {"channels": "the chart ships the channel policy's three channels"}

COMPONENT = "app.kubernetes.io/component"
JOB_LABEL = "invsync/job"


class Sink(typing.NamedTuple):
    """A sink process as the chart deploys it."""

    values: str  # its block in values.yaml
    args: list[str]  # `invsync <args>`
    port_name: str  # container/Service port, the ServiceMonitor endpoint
    job: str  # Prometheus job (SCRAPE_JOBS)


SINKS = {
    "redis-sink": Sink("redisSink", ["sink", "redis"], "redis-sink", "invsync-redis-sink"),
    "erp-dispatcher": Sink("erpDispatcher", ["sink", "erp"], "erp-sink", "invsync-erp"),
}
# Which sinks each value set deploys: the ERP dispatcher only where an ERP URL is set.
DEPLOYED_SINKS = {"default": ["redis-sink"], "production": ["redis-sink", "erp-dispatcher"]}
ERP_URL = "http://erp.example.com:8080/v1/stock-deltas"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if helm_binary() is None:
        pytest.skip("helm is not installed: run ops/install-helm.sh (CI does)")
    return {name: render(values) for name, values in VALUE_SETS.items()}


def worker(docs: list[dict]) -> dict:
    spec = only(docs, "StatefulSet")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "worker")


def plain_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def deployment(docs: list[dict], component: str) -> dict | None:
    found = [
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["labels"].get(COMPONENT) == component
    ]
    assert len(found) <= 1, f"{len(found)} Deployments of {component}"
    return found[0] if found else None


def sink_container(docs: list[dict], component: str) -> dict:
    found = deployment(docs, component)
    assert found is not None, f"no Deployment of {component}"
    (container,) = found["spec"]["template"]["spec"]["containers"]
    return dict(container)


def selects(selector: dict[str, str], workload: dict) -> bool:
    return selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings object a process with (the plain values of) ``env`` would load."""
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            monkeypatch.setenv(key, value)
    return load_settings()  # exits 2 naming the variable if a value is invalid


# --- copies of ops/ files inside the chart ---------------------------------------------------


@pytest.mark.parametrize("copy", sorted(CHART_COPIES), ids=lambda p: p.name)
def test_chart_copy_matches_its_source(copy: Path) -> None:
    source = CHART_COPIES[copy]
    assert copy.is_file(), f"{copy.relative_to(CHART)} is missing: run ops/check_deploy.sh"
    if source.is_file():
        assert copy.read_bytes() == source.read_bytes(), (
            f"{copy.relative_to(CHART.parent.parent)} differs from "
            f"{source.relative_to(CHART.parent.parent)}: "
            "run ops/check_deploy.sh and commit the copy"
        )
    else:  # the source is not written yet: the chart carries a marked placeholder
        assert PLACEHOLDER_MARK in copy.read_text(), (
            f"{source} is missing and {copy} is no placeholder"
        )


# --- lint, render, validate ------------------------------------------------------------------


@needs_helm
@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint(name: str) -> None:
    args = [a for path in VALUE_SETS[name] for a in ("-f", str(path))]
    result = helm("lint", "--strict", CHART, *args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_are_valid_kubernetes(rendered: dict, name: str) -> None:
    builtin, custom, problems = manifest_problems(rendered[name])
    assert not problems, "\n".join(problems)
    assert builtin >= 6
    assert custom == (2 if name == "production" else 0)


def test_rendered_kinds(rendered: dict) -> None:
    def kinds(docs: list[dict]) -> list[str]:
        return sorted(doc["kind"] for doc in docs)

    base = ["ConfigMap", "ConfigMap", "PodDisruptionBudget", "Service", "Service"]
    base += ["ServiceAccount", "StatefulSet"]
    sink = ["Deployment", "Service", "PodDisruptionBudget"]  # per sink
    assert kinds(rendered["default"]) == sorted([*base, *sink])  # the Redis sink
    production = [*base, *sink, *sink, "PrometheusRule", "ServiceMonitor"]
    assert kinds(rendered["production"]) == sorted(production)


def test_a_schema_violation_is_caught() -> None:
    """The validator itself: a field Kubernetes does not know fails strict validation."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPort": "web", "protocl": "TCP"}]},
    }
    _, _, problems = manifest_problems([service])
    assert problems and "protocl" in problems[0]


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_env_vars_are_settings(rendered: dict, name: str) -> None:
    names = [e["name"] for c in containers(rendered[name]) for e in c.get("env", [])]
    assert names, "no environment rendered"
    unknown = unknown_settings(names)
    assert not unknown, f"not fields of invsync/settings.py Settings: {unknown}"


def test_settings_to_come_are_not_settings_yet() -> None:
    landed = sorted(SETTINGS_TO_COME & settings_env_names())
    assert not landed, f"{landed} are Settings fields now: drop them from SETTINGS_TO_COME"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_settings_accept_the_rendered_environment(
    rendered: dict, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(plain_env(worker(rendered[name])), monkeypatch)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if name == "production":
        values |= yaml.safe_load(PRODUCTION_VALUES.read_text())
    assert list(settings.channels) == values["config"]["channels"]
    assert settings.partitions == values["config"]["partitions"]
    assert str(settings.state_dir) == values.get("persistence", {}).get(
        "mountPath", "/var/lib/invsync/state"
    )


def test_values_schema_mirrors_settings() -> None:
    """values.schema.json `config` has the bounds, choices and defaults of Settings."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    properties = schema["properties"]["config"]["properties"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    assert set(defaults) == set(properties), "values.yaml config and its schema differ"
    fields = Settings.model_fields
    for name, prop in properties.items():
        assert name in fields, f"config.{name} is not a Settings field"
        field = fields[name]
        expected: dict[str, object] = {}
        for rule in field.metadata:
            if isinstance(rule, annotated_types.Ge):
                expected["minimum"] = rule.ge
            elif isinstance(rule, annotated_types.Le):
                expected["maximum"] = rule.le
            elif isinstance(rule, annotated_types.Gt):
                expected["exclusiveMinimum"] = rule.gt
        bounds = {k: prop[k] for k in ("minimum", "maximum", "exclusiveMinimum") if k in prop}
        assert bounds == expected, f"config.{name}: schema {bounds}, settings {expected}"
        if typing.get_origin(field.annotation) is typing.Literal:
            assert set(prop["enum"]) == set(typing.get_args(field.annotation)), name
        if name not in CHART_DEFAULTS_DIFFER:
            default = field.default
            default = list(default) if isinstance(default, tuple) else default
            assert defaults[name] == default, f"config.{name}: {defaults[name]!r} != {default!r}"
    missing = set(fields) - set(properties) - set(SET_OUTSIDE_CONFIG) - LOCAL_STACK_ONLY
    assert not missing, f"Settings fields the chart cannot set: {sorted(missing)} (add to config)"


# --- the worker pod --------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_worker_pod_wiring(rendered: dict, name: str) -> None:
    docs = rendered[name]
    statefulset = only(docs, "StatefulSet")
    pod = statefulset["spec"]["template"]
    container = worker(docs)
    env = {e["name"]: e for e in container["env"]}
    web_port = int(env["INVSYNC_WEB_PORT"]["value"])
    assert container["ports"] == [{"name": "web", "containerPort": web_port, "protocol": "TCP"}]
    assert container["args"] == ["worker"]
    for probe, path in [("startupProbe", "/livez"), ("livenessProbe", "/livez")]:
        assert container[probe]["httpGet"] == {"path": path, "port": "web"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "web"}

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert env["INVSYNC_STATE_DIR"]["value"] == mounts["state"]["mountPath"]
    claims = [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]]
    assert claims == ["state"], "the state directory must be a PVC per replica"
    policy_path = Path(env["INVSYNC_CHANNEL_POLICY"]["value"])
    assert str(policy_path.parent) == mounts["channel-policy"]["mountPath"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config_map = volumes["channel-policy"]["configMap"]
    assert config_map["items"] == [{"key": "channels.toml", "path": policy_path.name}]

    labels = pod["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = [
        d for d in docs if d["kind"] == "Service" and selects(d["spec"]["selector"], statefulset)
    ]
    assert len(services) == 2, "the worker has a Service and a headless Service"
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert [s["metadata"]["name"] for s in headless] == [statefulset["spec"]["serviceName"]]
    for service in services:
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["web"]
    pdbs = [
        d
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
        and selects(d["spec"]["selector"]["matchLabels"], statefulset)
    ]
    assert len(pdbs) == 1
    for standard in ("app.kubernetes.io/name", "app.kubernetes.io/instance"):
        assert all(standard in d["metadata"]["labels"] for d in docs), standard


@pytest.mark.parametrize("name", VALUE_SETS)
def test_security_context(rendered: dict, name: str) -> None:
    for workload in workloads(rendered[name]):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
    writable = {"state", "tmp"}
    for container in containers(rendered[name]):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        for mount in container["volumeMounts"]:
            assert mount.get("readOnly") or mount["name"] in writable, mount


def test_standby_replicas_and_scale(rendered: dict) -> None:
    docs = render(sets={"replicaCount": "4", "standbyReplicas": "2"})
    assert only(docs, "StatefulSet")["spec"]["replicas"] == 4
    assert plain_env(worker(docs))["INVSYNC_STANDBY_REPLICAS"] == "2"
    assert only(rendered["production"], "StatefulSet")["spec"]["replicas"] == 3


@needs_helm
def test_without_persistence_state_is_an_emptydir() -> None:
    docs = render(sets={"persistence.enabled": "false"})
    statefulset = only(docs, "StatefulSet")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["state"]
    assert "replays the whole changelog" in render_notes(sets={"persistence.enabled": "false"})


def test_channel_policy_config_map(rendered: dict) -> None:
    docs = rendered["default"]
    config_map = next(d for d in docs if d["metadata"]["name"].endswith("-channel-policy"))
    policy = tomllib.loads(config_map["data"]["channels.toml"])
    channels = plain_env(worker(docs))["INVSYNC_CHANNELS"].split(",")
    assert sorted(policy["channels"]) == sorted(channels)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_worker_web_host_is_its_stable_dns_name(
    rendered: dict, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's WEB_HOST makes the worker's canonical URL (where the query API forwards
    /v1/positions requests to a partition's owner) the pod's name in the headless Service,
    which resolves from the other pods; Faust's default, the bare hostname, does not."""
    docs = rendered[name]
    statefulset = only(docs, "StatefulSet")
    env = worker(docs)["env"]
    names = [e["name"] for e in env]
    index = {e["name"]: i for i, e in enumerate(env)}
    for var, field in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")]:
        assert env[index[var]]["valueFrom"] == {"fieldRef": {"fieldPath": field}}
        assert index[var] < index["WEB_HOST"], f"$({var}) is expanded only if defined before"
    assert names.count("WEB_HOST") == 1
    headless = statefulset["spec"]["serviceName"]
    web_host = env[index["WEB_HOST"]]["value"]
    assert web_host == f"$(POD_NAME).{headless}.$(POD_NAMESPACE).svc"
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == headless]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True  # recovering owners resolve too
    assert selects(service["spec"]["selector"], statefulset)

    # What Faust makes of it in pod <statefulset>-1: the canonical URL the group announces.
    import faust

    pod_name = f"{statefulset['metadata']['name']}-1"
    expanded = web_host.replace("$(POD_NAME)", pod_name).replace("$(POD_NAMESPACE)", NAMESPACE)
    web_port = settings_from(plain_env(worker(docs)), monkeypatch).web_port
    monkeypatch.setenv("WEB_HOST", expanded)
    app = faust.App("web-host-check", web_port=web_port, web_bind="0.0.0.0")
    assert str(app.conf.canonical_url) == f"http://{pod_name}.{headless}.{NAMESPACE}.svc:{web_port}"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_no_service_links(rendered: dict, name: str) -> None:
    """Kubernetes would put <SERVICE>_PORT=tcp://... into every pod: for the Service
    invsync-redis-sink that is INVSYNC_REDIS_SINK_PORT, and Faust reads WEB_PORT & co."""
    for workload in workloads(rendered[name]):
        assert workload["spec"]["template"]["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("name", VALUE_SETS)
def test_startup_probes_outlast_the_startup_timeout(rendered: dict, name: str) -> None:
    """The HTTP ports open after the start-up checks, which give up after startup_timeout_s."""
    for container in containers(rendered[name]):
        if "startupProbe" not in container:
            continue  # init containers
        timeout = float(plain_env(container)["INVSYNC_STARTUP_TIMEOUT_S"])
        probe = container["startupProbe"]
        window = probe["periodSeconds"] * probe["failureThreshold"]
        assert window > timeout, f"{container['name']}: {window}s <= {timeout}s"


# --- the sinks -------------------------------------------------------------------------------


def test_sinks_deployed_by_default_values(rendered: dict) -> None:
    for name, expected in DEPLOYED_SINKS.items():
        deployed = [c for c in SINKS if deployment(rendered[name], c) is not None]
        assert deployed == expected, name


@pytest.mark.parametrize(
    ("sink", "name"), [(s, n) for n, sinks in DEPLOYED_SINKS.items() for s in sinks]
)
def test_sink_deployment(
    rendered: dict, sink: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[name]
    spec = SINKS[sink]
    found = deployment(docs, sink)
    assert found is not None
    values = yaml.safe_load((CHART / "values.yaml").read_text())[spec.values]
    if name == "production":
        values |= yaml.safe_load(PRODUCTION_VALUES.read_text())[spec.values]
    assert found["spec"]["replicas"] == values["replicaCount"]
    assert found["spec"]["selector"]["matchLabels"][COMPONENT] == sink
    assert selects(found["spec"]["selector"]["matchLabels"], found)
    container = sink_container(docs, sink)
    assert container["args"] == spec.args
    assert container["resources"] == values["resources"]

    # The environment the settings object needs: the worker's shared settings, accepted.
    settings = settings_from(plain_env(container), monkeypatch)
    port = getattr(settings, SCRAPE_JOBS[spec.job])
    assert container["ports"] == [
        {"name": spec.port_name, "containerPort": port, "protocol": "TCP"}
    ]
    shared = {"INVSYNC_KAFKA_BOOTSTRAP", "INVSYNC_SCHEMA_REGISTRY_URL", "INVSYNC_REDIS_URL",
              "INVSYNC_APP_ID", "INVSYNC_TOPIC_PREFIX", "INVSYNC_PARTITIONS", "INVSYNC_CHANNELS",
              "INVSYNC_STARTUP_TIMEOUT_S", "INVSYNC_LOG_LEVEL"}  # fmt: skip
    if sink == "erp-dispatcher":
        shared |= {"INVSYNC_ERP_URL", "INVSYNC_ERP_TIMEOUT_S", "INVSYNC_ERP_MAX_ATTEMPTS"}
    worker_env = {e["name"]: e for e in worker(docs)["env"]}
    sink_env = {e["name"]: e for e in container["env"]}
    for var in sorted(shared):
        assert sink_env[var] == worker_env[var], var  # same value or same Secret reference
    assert len(sink_env) == len(container["env"]), "an env var is set twice"

    # Probes on the sink's own port, paths it serves (checked against its HTTP handler below).
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/livez", "port": spec.port_name}, probe
        kind = probe.removesuffix("Probe")
        for key, value in values["probes"][kind].items():
            assert container[probe][key] == value, (probe, key)
    strategy = found["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0, "readiness gates the rollout"

    # A Service for scraping, selecting these pods only, the port by name.
    services = [d for d in docs if d["kind"] == "Service" and selects(d["spec"]["selector"], found)]
    assert len(services) == 1
    (service_port,) = services[0]["spec"]["ports"]
    assert service_port["targetPort"] == spec.port_name and service_port["port"] == port
    assert services[0]["metadata"]["labels"][JOB_LABEL] == spec.job
    others = [w for w in workloads(docs) if w is not found]
    assert not [w for w in others if selects(services[0]["spec"]["selector"], w)]
    pdbs = [
        d
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
        and selects(d["spec"]["selector"]["matchLabels"], found)
    ]
    assert len(pdbs) == 1 and pdbs[0]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("sink", SINKS)
def test_sink_command_serves_its_port(sink: str) -> None:
    """`invsync <args>` is a command, and it is the one that serves the port setting."""
    import typer.main

    from invsync.cli import app

    command: typing.Any = typer.main.get_command(app)
    for word in SINKS[sink].args:
        command = command.commands[word]
    field = SCRAPE_JOBS[SINKS[sink].job]
    assert (ENV_PREFIX + field.upper()) in (command.help or ""), command.help


def _serve_sink_health(sink: str, alive: bool) -> tuple[typing.Any, int]:
    """The sink's real HTTP server on a free port, alive or stalled."""
    if sink == "redis-sink":
        from sinks.http import serve

        server: typing.Any = serve(0, lambda: (alive, "test"), host="127.0.0.1")
    else:
        import threading

        from sinks.erp import _HealthServer

        server = _HealthServer(0, lambda: alive)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _status(port: int, path: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("sink", SINKS)
def test_sink_probe_paths_mean_something(rendered: dict, sink: str) -> None:
    """The probed path answers 200 while the sink's loop turns and 503 when it stalls (so the
    liveness probe restarts a hung sink); /metrics is there for the ServiceMonitor. The sinks
    serve no /readyz: when they do, probe it for readiness instead."""
    container = sink_container(rendered["production"], sink)
    paths = {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    for alive, expected in [(True, 200), (False, 503)]:
        server, port = _serve_sink_health(sink, alive)
        try:
            for path in paths:
                assert _status(port, path) == expected, (path, alive)
            assert _status(port, "/metrics") == 200
            assert _status(port, "/readyz") == 404, "the sink has /readyz now: probe it"
        finally:
            server.shutdown()
            server.server_close()


@needs_helm
def test_erp_dispatcher_enabled() -> None:
    """auto: deployed when the chart sets INVSYNC_ERP_URL; true/false: as told."""

    def erp(sets: dict[str, str]) -> dict | None:
        return deployment(render(sets=sets), "erp-dispatcher")

    assert erp({}) is None  # no URL: nothing to deliver to
    found = erp({"erp.url": ERP_URL})
    assert found is not None
    env = plain_env(found["spec"]["template"]["spec"]["containers"][0])
    assert env["INVSYNC_ERP_URL"] == ERP_URL
    assert erp({"erp.url": ERP_URL, "erpDispatcher.enabled": "false"}) is None
    assert erp({"erp.url": ERP_URL, "erpDispatcher.enabled": "true"}) is not None
    from_secret = {
        "credentials.existingSecret": "s",
        "credentials.fromSecret.INVSYNC_ERP_URL": "erp-url",
    }
    assert erp(from_secret) is not None
    docs = render(sets={"redisSink.enabled": "false"})
    assert deployment(docs, "redis-sink") is None
    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis-sink")]


@needs_helm
def test_sink_values_reach_the_deployments() -> None:
    sets = {"redisSink.replicaCount": "3", "redisSink.extraEnv[0].name": "INVSYNC_REDIS_BATCH",
            "redisSink.extraEnv[0].value": "100", "extraEnv[0].name": "INVSYNC_LOG_LEVEL",
            "extraEnv[0].value": "debug", "config.redis_sink_port": "7067",
            "redisSink.podDisruptionBudget.enabled": "false"}  # fmt: skip
    docs = render(sets=sets)
    found = deployment(docs, "redis-sink")
    assert found is not None and found["spec"]["replicas"] == 3
    container = found["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    # the sink's extraEnv after the shared one, both after the chart's settings (later wins)
    assert names[-2:] == ["INVSYNC_LOG_LEVEL", "INVSYNC_REDIS_BATCH"]
    assert container["ports"][0]["containerPort"] == 7067
    worker_env = worker(docs)["env"]
    assert worker_env[-1] == {"name": "INVSYNC_LOG_LEVEL", "value": "debug"}  # extraEnv: all
    batch = [e for e in worker_env if e["name"] == "INVSYNC_REDIS_BATCH"]
    assert batch == [{"name": "INVSYNC_REDIS_BATCH", "value": "500"}]  # not the sink's extraEnv
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert [d["metadata"]["labels"][COMPONENT] for d in pdbs] == ["worker"]


# --- credentials -----------------------------------------------------------------------------


def test_credentials_from_an_existing_secret(rendered: dict) -> None:
    docs = rendered["production"]
    assert not [d for d in docs if d["kind"] == "Secret"], "existingSecret: the chart makes none"
    for container in containers(docs):
        env = {e["name"]: e for e in container["env"]}
        for name, key in [("INVSYNC_REDIS_URL", "redis-url"), ("INVSYNC_ERP_URL", "erp-url")]:
            assert env[name] == {
                "name": name,
                "valueFrom": {"secretKeyRef": {"name": "invsync-credentials", "key": key}},
            }


@needs_helm
def test_credentials_in_a_chart_made_secret() -> None:
    sets = {
        "credentials.fromSecret.INVSYNC_REDIS_URL": "redis-url",
        "credentials.data.redis-url": "redis://:s3cret@redis:6379/0",
    }
    docs = render(sets=sets)
    secret = only(docs, "Secret")
    assert secret["stringData"] == {"redis-url": "redis://:s3cret@redis:6379/0"}
    env = {e["name"]: e for e in worker(docs)["env"]}
    reference = env["INVSYNC_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    for workload in workloads(docs):  # the worker and the Redis sink restart on a new Secret
        pod = workload["spec"]["template"]
        assert "checksum/credentials" in pod["metadata"]["annotations"], workload["kind"]
    env = {e["name"]: e for e in sink_container(docs, "redis-sink")["env"]}
    assert env["INVSYNC_REDIS_URL"]["valueFrom"]["secretKeyRef"] == reference


# --- monitoring ------------------------------------------------------------------------------


def test_prometheus_rule_carries_the_alerts(rendered: dict) -> None:
    rule = only(rendered["production"], "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yml").read_text())
    if ALERTS.is_file():
        assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def test_service_monitor_gives_job_invsync(rendered: dict) -> None:
    """The alerts select job="invsync": the ServiceMonitor takes the job from that label."""
    docs = rendered["production"]
    monitor = only(docs, "ServiceMonitor")
    selected = scraped_services(monitor, docs)
    web = [s for s in selected if "web" in port_names(s)]
    assert len(web) == 1 and web[0]["spec"].get("clusterIP") != "None"
    assert web[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "invsync"
    assert monitor["spec"]["endpoints"][0]["port"] == "web"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    if ALERTS.is_file():
        assert 'job="invsync"' in ALERTS.read_text()


def port_names(service: dict) -> list[str]:
    return [p["name"] for p in service["spec"]["ports"]]


def scraped_services(monitor: dict, docs: list[dict]) -> list[dict]:
    """The Services a ServiceMonitor selects (matchLabels, and matchExpressions Exists)."""
    selector = monitor["spec"]["selector"]
    found = []
    for doc in docs:
        if doc["kind"] != "Service":
            continue
        labels = doc["metadata"]["labels"]
        if not selector.get("matchLabels", {}).items() <= labels.items():
            continue
        expressions = selector.get("matchExpressions", [])
        assert all(e["operator"] == "Exists" for e in expressions), "only Exists is evaluated"
        if all(e["key"] in labels for e in expressions):
            found.append(doc)
    return found


@pytest.mark.parametrize("name", ["production", "sinks-off", "erp-url"])
def test_service_monitor_scrapes_every_process_as_its_job(
    rendered: dict, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One endpoint per deployed process; each matches exactly one Service, whose pods serve
    /metrics on that port, and the job is the one the alerts, the dashboard and
    ops/prometheus/prometheus.yml use for that process (SCRAPE_JOBS)."""
    sets = {"metrics.serviceMonitor.enabled": "true"}
    if name == "production":
        docs = rendered["production"]
    elif name == "sinks-off":
        docs = render(sets=sets | {"redisSink.enabled": "false", "erp.url": ERP_URL,
                                   "erpDispatcher.enabled": "false"})  # fmt: skip
    else:
        docs = render(sets=sets | {"erp.url": ERP_URL})
    monitor = only(docs, "ServiceMonitor")
    selected = scraped_services(monitor, docs)
    assert not [s for s in selected if s["spec"].get("clusterIP") == "None"], "headless scraped"
    jobs = {}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        (service,) = [s for s in selected if endpoint["port"] in port_names(s)]
        job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
        (target,) = [w for w in workloads(docs) if selects(service["spec"]["selector"], w)]
        container = target["spec"]["template"]["spec"]["containers"][0]
        (port,) = [p for p in container["ports"] if p["name"] == endpoint["port"]]
        settings = settings_from(plain_env(container), monkeypatch)
        assert port["containerPort"] == getattr(settings, SCRAPE_JOBS[job]), job
        jobs[job] = endpoint["port"]
    expected = {"production": set(SCRAPE_JOBS), "sinks-off": {"invsync"}}
    expected["erp-url"] = set(SCRAPE_JOBS)
    assert set(jobs) == expected[name]
    assert len(monitor["spec"]["endpoints"]) == len(jobs), "two endpoints give one job"


def test_scrape_jobs_are_the_alerts_and_local_prometheus_jobs() -> None:
    config = yaml.safe_load(LOCAL_PROMETHEUS.read_text())
    local = {
        job["job_name"]: job["static_configs"][0]["targets"]
        for job in config["scrape_configs"]
        if job["job_name"] in SCRAPE_JOBS
    }
    defaults = Settings()  # type: ignore[call-arg]
    for job, field in SCRAPE_JOBS.items():
        assert local.get(job) == [f"127.0.0.1:{getattr(defaults, field)}"], job
    if ALERTS.is_file():
        alerts = ALERTS.read_text()
        assert 'job="invsync"' in alerts and 'job="invsync-erp"' in alerts
    selected = {s.job for s in SINKS.values()} | {"invsync"}
    assert selected == set(SCRAPE_JOBS)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_dashboard_config_map_for_the_grafana_sidecar(rendered: dict, name: str) -> None:
    docs = rendered[name]
    config_map = next(d for d in docs if d["metadata"]["name"].endswith("-dashboard"))
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = config_map["data"]["invsync.json"]
    assert json.loads(text) == json.loads((CHART / "files" / "invsync.json").read_text())


# --- bad values ------------------------------------------------------------------------------

BAD_VALUES = [
    ({"replicaCount": -1}, "/replicaCount"),
    ({"standbyReplicas": -1}, "/standbyReplicas"),
    ({"config": {"partitions": 0}}, "/config/partitions"),
    ({"config": {"web_port": 70000}}, "/config/web_port"),
    ({"config": {"channels": ["Web"]}}, "/config/channels/0"),
    ({"config": {"channels": []}}, "/config/channels"),
    ({"config": {"log_level": "verbose"}}, "/config/log_level"),
    ({"config": {"state_dir": "/x"}}, "'state_dir' not allowed"),
    ({"replicas": 3}, "'replicas' not allowed"),
    ({"kafka": {"bootstrap": "kafka"}}, "/kafka/bootstrap"),
    ({"schemaRegistry": {"url": "registry:8080"}}, "/schemaRegistry/url"),
    ({"persistence": {"size": "ten gigs"}}, "/persistence/size"),
    ({"probes": {"liveness": {"periodSeconds": 0}}}, "/probes/liveness/periodSeconds"),
    ({"metrics": {"serviceMonitor": {"interval": "15"}}}, "/metrics/serviceMonitor/interval"),
    ({"credentials": {"fromSecret": {"INVSYNC_APP_ID": "x"}}}, "propertyName 'INVSYNC_APP_ID'"),
    ({"replicaCount": 2, "standbyReplicas": 2}, "standbyReplicas (2) must be less than"),
    ({"credentials": {"fromSecret": {"INVSYNC_REDIS_URL": "redis-url"}}}, "there is no Secret"),
    (
        {"credentials": {"fromSecret": {"INVSYNC_REDIS_URL": "a"}, "data": {"b": "x"}}},
        'reads key "a"',
    ),
    ({"redisSink": {"replicaCount": -1}}, "/redisSink/replicaCount"),
    ({"redisSink": {"enabled": "yes"}}, "/redisSink/enabled"),
    ({"redisSink": {"replicas": 2}}, "'replicas' not allowed"),
    (
        {"erpDispatcher": {"probes": {"readiness": {"timeoutSeconds": 0}}}},
        "/erpDispatcher/probes/readiness/timeoutSeconds",
    ),
    ({"erpDispatcher": {"enabled": "yes"}}, "/erpDispatcher/enabled"),
    ({"erpDispatcher": {"enabled": True}}, "erpDispatcher.enabled is true but no ERP URL"),
]


@needs_helm
@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_fail_to_render(values: dict, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    result = template([path])
    assert result.returncode != 0, f"rendered with bad values {values}"
    assert message in result.stderr, result.stderr


@needs_helm
def test_bad_values_fail_lint(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("replicaCount: -1\n")
    result = helm("lint", CHART, "-f", path)
    assert result.returncode != 0
    assert "/replicaCount" in result.stdout + result.stderr


# --- NOTES and topic names -------------------------------------------------------------------


@needs_helm
def test_notes_render_and_name_catalogue_topics() -> None:
    notes = render_notes()
    channels = yaml.safe_load((CHART / "values.yaml").read_text())["config"]["channels"]
    for channel in channels:
        assert f"availability.{channel}" in notes
    assert topic_like_names(notes) <= catalogue_topics(channels)
    crowded = render_notes(sets={"replicaCount": "8"})
    assert "replicaCount (8) exceeds config.partitions (6)" in crowded
    assert "kubectl" in render_notes([PRODUCTION_VALUES])  # topics.create=false: how to create
    assert "Redis sink: Deployment invsync-redis-sink" in notes
    assert "No ERP dispatcher" in notes
    assert "ERP dispatcher: Deployment invsync-erp-dispatcher" in render_notes([PRODUCTION_VALUES])


def test_topic_names_in_values_are_in_the_catalogue() -> None:
    channels = yaml.safe_load((CHART / "values.yaml").read_text())["config"]["channels"]
    catalogue = catalogue_topics(channels)
    for path in [CHART / "values.yaml", PRODUCTION_VALUES]:
        stray = topic_like_names(path.read_text()) - catalogue
        assert not stray, f"{path}: {sorted(stray)} are not topics of streams/topics.py"
