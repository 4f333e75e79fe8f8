"""Deployment checks without a cluster or a Docker engine: the Helm chart and docker compose.

Shared by ``tests/deploy/test_*.py`` and ``ops/check_deploy.sh``: where the files are, how helm is
found and run, and how rendered manifests are checked against the Kubernetes schemas
(``kubernetes-validate``, strict) and, for prometheus-operator's custom resources, structurally.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from invsync.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "invsync"
PRODUCTION_VALUES = ROOT / "helm" / "values-production.yaml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
LOCAL_PROMETHEUS = ROOT / "ops" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "invsync.json"

# The Kubernetes release whose schemas the manifests must satisfy: kubernetes-validate's newest,
# and the one helm (built against client-go v0.37) reports as .Capabilities.KubeVersion.
KUBERNETES_VERSION = "1.37.0"

# Settings the deployment already sets, before invsync/settings.py has them (issue 6 and the
# channel-policy / ERP issues). Each must become a Settings field; then drop it from here.
SETTINGS_TO_COME: frozenset[str] = frozenset()

# Copies inside the chart (Helm's .Files cannot read outside the chart) -> their sources.
# ops/check_deploy.sh refreshes them; the tests fail when one differs from its source.
CHART_COPIES = {
    CHART / "files" / "alerts.yml": ALERTS,
    CHART / "files" / "invsync.json": DASHBOARD,
}
PLACEHOLDER_MARK = "placeholder"

RELEASE = "invsync"
NAMESPACE = "invsync"

# Prometheus job of each invsync process -> the Settings field of the port it serves /metrics
# on. The alerts and the dashboard select these jobs (InvsyncWorkerDown: job="invsync",
# InvsyncErpDispatcherDown: job="invsync-erp"); ops/prometheus/prometheus.yml, the compose
# Prometheus and the chart's ServiceMonitor must all scrape each process as its job.
SCRAPE_JOBS = {
    "invsync": "web_port",
    "invsync-redis-sink": "redis_sink_port",
    "invsync-erp": "erp_sink_port",
}


def settings_env_names() -> frozenset[str]:
    """``INVSYNC_<FIELD>`` for every field of the settings object."""
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


def unknown_settings(names: Iterable[str]) -> list[str]:
    """The ``INVSYNC_*`` names that are neither a Settings field nor a setting to come."""
    known = settings_env_names() | SETTINGS_TO_COME
    return sorted(n for n in set(names) if n.startswith(ENV_PREFIX) and n not in known)


# --- helm ------------------------------------------------------------------------------------


def helm_binary() -> str | None:
    """$HELM, else ops/install-helm.sh's .stack/tools/bin/helm, else helm on PATH."""
    candidates = [os.environ.get("HELM"), str(ROOT / ".stack" / "tools" / "bin" / "helm")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("helm")


def helm(*args: str | Path, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    binary = helm_binary()
    if binary is None:
        raise FileNotFoundError("helm is not installed: run ops/install-helm.sh")
    command = [binary, *(str(a) for a in args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def values_args(values: Sequence[Path], sets: dict[str, str] | None = None) -> list[str]:
    args: list[str] = []
    for path in values:
        args += ["-f", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def template(
    values: Sequence[Path] = (), sets: dict[str, str] | None = None, chart: Path = CHART
) -> subprocess.CompletedProcess[str]:
    return helm("template", RELEASE, chart, "--namespace", NAMESPACE, *values_args(values, sets))


def render(values: Sequence[Path] = (), sets: dict[str, str] | None = None) -> list[dict]:
    """The chart's manifests for these values; raises AssertionError with helm's message."""
    result = template(values, sets)
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_notes(values: Sequence[Path] = (), sets: dict[str, str] | None = None) -> str:
    """NOTES.txt as `helm install` would print it (helm template never outputs it).

    A copy of the chart gets a template that renders NOTES.txt with ``tpl`` into a document.
    """
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / CHART.name
        shutil.copytree(CHART, chart)
        notes = chart / "templates" / "NOTES.txt"
        (chart / "files" / "NOTES.txt").write_text(notes.read_text())
        notes.unlink()
        (chart / "templates" / "zz-notes.yaml").write_text(
            'notes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}\n'
        )
        result = helm(
            "template", RELEASE, chart, "--namespace", NAMESPACE,
            "--show-only", "templates/zz-notes.yaml", *values_args(values, sets),
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"rendering NOTES.txt failed:\n{result.stderr}")
        return str(yaml.safe_load(result.stdout)["notes"])


# --- manifest checks -------------------------------------------------------------------------

_DURATION = (
    "^(0|" + "".join(f"(([0-9]+){unit})?" for unit in ("y", "w", "d", "h", "m", "s", "ms")) + ")$"
)
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}

# The parts of prometheus-operator's CRDs (monitoring.coreos.com/v1) that the chart uses;
# kubernetes-validate has no schemas for custom resources.
CUSTOM_RESOURCE_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {}},
                    },
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["port"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": _DURATION},
                                "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": {"type": "string", "pattern": _DURATION},
                                "query_offset": {"type": "string", "pattern": _DURATION},
                                "limit": {"type": "integer", "minimum": 0},
                                "labels": _STRING_MAP,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "oneOf": [
                                            {"required": ["alert"]},
                                            {"required": ["record"]},
                                        ],
                                        "properties": {
                                            "alert": {"type": "string", "minLength": 1},
                                            "record": {"type": "string", "minLength": 1},
                                            "expr": {"type": ["string", "integer"]},
                                            "for": {"type": "string", "pattern": _DURATION},
                                            "keep_firing_for": {
                                                "type": "string",
                                                "pattern": _DURATION,
                                            },
                                            "labels": _STRING_MAP,
                                            "annotations": _STRING_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def manifest_problems(docs: Iterable[dict]) -> tuple[int, int, list[str]]:
    """Validate rendered objects: (built-in kinds checked, custom resources checked, problems).

    Built-in kinds against the Kubernetes ``KUBERNETES_VERSION`` schemas in strict mode (unknown
    fields are errors); prometheus-operator resources against :data:`CUSTOM_RESOURCE_SCHEMAS`;
    any other kind is a problem.
    """
    import jsonschema
    import kubernetes_validate

    builtin = custom = 0
    problems: list[str] = []
    for doc in docs:
        kind = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CUSTOM_RESOURCE_SCHEMAS:
            custom += 1
            validator = jsonschema.Draft7Validator(CUSTOM_RESOURCE_SCHEMAS[key])
            for error in validator.iter_errors(doc):
                where = "/".join(str(p) for p in error.absolute_path)
                problems.append(f"{kind}: {where}: {error.message}")
            continue
        builtin += 1
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{kind}: no Kubernetes {KUBERNETES_VERSION} schema for {key}")
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{kind}: {where}: {exc.message}")
    return builtin, custom, problems


WORKLOAD_KINDS = ("StatefulSet", "Deployment")


def workloads(docs: Iterable[dict], kinds: Sequence[str] = WORKLOAD_KINDS) -> list[dict]:
    """The objects with a pod template: the worker StatefulSet and the sinks' Deployments."""
    return [doc for doc in docs if doc["kind"] in kinds]


def containers(docs: Iterable[dict], kind: str | None = None) -> list[dict]:
    """Every container and init container of the pod templates of ``kind`` objects (default:
    every workload, the worker's and the sinks')."""
    found: list[dict] = []
    for doc in workloads(docs, WORKLOAD_KINDS if kind is None else (kind,)):
        spec = doc["spec"]["template"]["spec"]
        found += spec.get("initContainers", []) + spec["containers"]
    return found


def only(docs: Iterable[dict], kind: str) -> dict:
    matches = [doc for doc in docs if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, rendered {len(matches)}"
    return matches[0]


# --- topics ----------------------------------------------------------------------------------

# Not inside a longer word: `invsync.erp_simulator` (a module) is no topic `invsync.erp`.
_TOPIC_LIKE = re.compile(
    r"(?<![\w.-])((?:pos|wms|inventory|reservations|availability|erp|invsync)\.[a-z][a-z0-9-]*)"
    r"(?!\w)"
)


_FILE_SUFFIXES = {"json", "yaml", "yml", "txt", "py", "md", "sh", "sqlite"}


def chart_value_paths() -> set[str]:
    """``key.subkey`` of the chart's values (``erp.url`` is a value, not a topic)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return {
        f"{key}.{sub}" for key, value in values.items() if isinstance(value, dict) for sub in value
    }


def topic_like_names(text: str) -> set[str]:
    """Words in ``text`` that look like a topic of the catalogue (``pos.sales``, ...)."""
    names = {m.group(1) for m in _TOPIC_LIKE.finditer(text)}
    names -= chart_value_paths()
    return {n for n in names if n.rpartition(".")[2] not in _FILE_SUFFIXES}


def catalogue_topics(channels: Iterable[str]) -> set[str]:
    from streams.topics import all_topics

    settings = Settings(channels=tuple(channels))  # type: ignore[call-arg]
    return {spec.full_name(settings) for spec in all_topics(settings)}


def main(argv: Sequence[str]) -> int:
    """Validate rendered manifest files (ops/check_deploy.sh); 0 when all are valid."""
    status = 0
    for path in argv:
        docs = [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]
        builtin, custom, problems = manifest_problems(docs)
        for problem in problems:
            print(f"  {path}: {problem}")
        verdict = "FAILED" if problems else "ok"
        print(
            f"{path}: {builtin} objects against the Kubernetes {KUBERNETES_VERSION} schemas "
            f"(strict), {custom} custom resources structurally: {verdict}"
        )
        status |= bool(problems)
    return status
