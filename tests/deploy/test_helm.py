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
    PLACEHOLDER_MARK,
    PRODUCTION_VALUES,
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
    assert kinds(rendered["default"]) == sorted(base)
    assert kinds(rendered["production"]) == sorted([*base, "PrometheusRule", "ServiceMonitor"])


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
    env = plain_env(worker(rendered[name]))
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()  # exits 2 naming the variable if a value is invalid
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
        expected = {}
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
    services = [d for d in docs if d["kind"] == "Service"]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert [s["metadata"]["name"] for s in headless] == [statefulset["spec"]["serviceName"]]
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["web"]
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for standard in ("app.kubernetes.io/name", "app.kubernetes.io/instance"):
        assert all(standard in d["metadata"]["labels"] for d in docs), standard


@pytest.mark.parametrize("name", VALUE_SETS)
def test_security_context(rendered: dict, name: str) -> None:
    pod = only(rendered[name], "StatefulSet")["spec"]["template"]["spec"]
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
    pod = only(docs, "StatefulSet")["spec"]["template"]
    assert "checksum/credentials" in pod["metadata"]["annotations"]


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
    selected = [
        d
        for d in docs
        if d["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
    ]
    assert len(selected) == 1 and selected[0]["spec"].get("clusterIP") != "None"
    assert selected[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "invsync"
    assert monitor["spec"]["endpoints"][0]["port"] == "web"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    if ALERTS.is_file():
        assert 'job="invsync"' in ALERTS.read_text()


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


def test_topic_names_in_values_are_in_the_catalogue() -> None:
    channels = yaml.safe_load((CHART / "values.yaml").read_text())["config"]["channels"]
    catalogue = catalogue_topics(channels)
    for path in [CHART / "values.yaml", PRODUCTION_VALUES]:
        stray = topic_like_names(path.read_text()) - catalogue
        assert not stray, f"{path}: {sorted(stray)} are not topics of streams/topics.py"
