"""values.schema.json: a valid draft-07 schema that covers every value,
accepts the defaults and the test matrix, and rejects bad values both in
jsonschema and in Helm (which validates on install, upgrade and template)."""

from __future__ import annotations

import json

import helm_python as helm
import jsonschema
import pytest
import yaml

import chartlib
from test_render import MATRIX, case_values

SCHEMA_PATH = chartlib.CHART_DIR / "values.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@pytest.fixture(scope="module")
def defaults() -> dict:
    return yaml.safe_load((chartlib.CHART_DIR / "values.yaml").read_text())


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(chartlib.CHART_DIR) as c:
        yield c


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].split("/")[-1]]
    return node


def node_types(schema: dict, node: dict) -> set[str]:
    node = resolve(schema, node)
    if "oneOf" in node:
        return set().union(*(node_types(schema, n) for n in node["oneOf"]))
    t = node.get("type")
    return {t} if isinstance(t, str) else set(t or [])


def test_schema_is_draft07(schema):
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


def test_defaults_validate(schema, defaults, chart):
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(defaults)]
    assert errors == []
    chart.validate_schema({})


@pytest.mark.parametrize("params", MATRIX)
def test_matrix_values_validate(schema, chart, params):
    values = chartlib.deep_merge(chart.values, case_values(*params))
    jsonschema.Draft7Validator(schema).validate(values)
    chart.validate_schema(case_values(*params))


def test_every_value_is_typed(schema, defaults):
    """Each key of values.yaml has a typed schema node; every number has
    bounds. (Typos in user values are rejected by additionalProperties.)"""
    untyped, unbounded = [], []

    def walk(value, node, path):
        node = resolve(schema, node)
        types = node_types(schema, node)
        if not types:
            untyped.append(path)
        if types & {"integer", "number"} and not _has_bounds(schema, node):
            unbounded.append(path)
        if isinstance(value, dict):
            assert "object" in types, path
            for k, v in value.items():
                props = node.get("properties", {})
                if k in props:
                    walk(v, props[k], f"{path}.{k}")
                elif isinstance(node.get("additionalProperties"), dict):
                    walk(v, node["additionalProperties"], f"{path}.{k}")
                else:
                    untyped.append(f"{path}.{k}")

    walk(defaults, schema, "")
    # Integers in free-form objects (tolerations, affinity...) are Kubernetes' to check.
    assert untyped == []
    assert unbounded == []


def _has_bounds(schema: dict, node: dict) -> bool:
    if "oneOf" in node:
        return all(_has_bounds(schema, resolve(schema, n)) for n in node["oneOf"]
                   if node_types(schema, n) & {"integer", "number"})
    return "minimum" in node


def test_ports_and_counts_bounded(schema):
    assert resolve(schema, schema["definitions"]["port"]) == {"type": "integer", "minimum": 1, "maximum": 65535}
    count = schema["properties"]["shard"]["properties"]["count"]
    assert (count["type"], count["minimum"], count["maximum"]) == ("integer", 1, 256)


BAD_VALUES = [
    {"shard": {"count": 0}},
    {"shard": {"count": "2"}},
    {"shard": {"count": 257}},
    {"shard": {"count": 1.5}},
    {"shard": {"port": 0}},
    {"shard": {"replicas": 0}},
    {"shard": {"replicas": 17}},
    {"router": {"writeConsistency": "most"}},
    {"router": {"hedgeMs": -1}},
    {"shard": {"fsync": "sometimes"}},
    {"shard": {"device": "gpu"}},
    {"shard": {"device": "cuda:x"}},
    {"shard": {"gpu": {"enabled": "yes"}}},
    {"shard": {"gpu": {"count": 0}}},
    {"shard": {"persistence": {"size": "lots"}}},
    {"shard": {"startupProbe": {"periodSeconds": 0}}},
    {"router": {"port": 70000}},
    {"router": {"minCoverage": 1.5}},
    {"router": {"autoscaling": {"targetCPUUtilizationPercentage": 0}}},
    {"router": {"replica": 2}},
    {"router": {"podDisruptionBudget": {"minAvailable": "half"}}},
    {"securityContext": {"runAsUser": 0}},
    {"image": {"pullPolicy": "Sometimes"}},
    {"metrics": {"port": "9090"}},
    {"metrics": {"serviceMonitor": {"interval": "often"}}},
    {"tls": {"enabled": True}},
    {"auth": {"enabled": True}},
    {"auth": {"enabled": True, "apiKeys": ["short"]}},
    {"auth": {"enabled": True, "apiKeys": ["read:short"]}},
    {"auth": {"enabled": True, "apiKeys": ["test-key-0123456789abcdef"]}},
    {"auth": {"enabled": True, "apiKeys": ["admin:test-key-0123456789abcdef"]}},
    {"auth": {"enabled": True, "apiKeys": ["read:test key 0123456789abcdef"]}},
    {"tls": {"healthPort": 0}},
    {"tls": {"mutual": "yes"}},
    {"extraConfig": {"NOT VALID": "x"}},
    {"tracing": {"otlpEndpoint": "otel-collector:4317"}},
    {"tracing": {"otlpEndpoint": "https://otel-collector:4317"}},
    {"tracing": {"otlpEndpoint": "http://otel-collector:4317", "caSecret": "otel-ca"}},
    {"tracing": {"caSecret": "otel-ca"}},
    {"tracing": {"sampleRatio": 2}},
    {"shard": {"imageModel": {"dir": "models/vit"}}},
    {"shard": {"imageModel": {"volume": {"emptyDir": {}}}}},
    {"shard": {"imageModel": {"fusion": "average"}}},
    {"shard": {"imageModel": {"imageWeight": 0}}},
    {"shard": {"modelRegistry": {"serve": {"text": "m@1"}}}},
    {"shard": {"modelRegistry": {"models": [{"name": "m", "version": "1", "kind": "text", "dir": "/m"}]}}},
    {"shard": {"modelRegistry": {"models": [{"name": "m@x", "version": "1", "kind": "text", "dir": "/m"}],
                                 "serve": {"text": "m@1"}}}},
    {"shard": {"modelRegistry": {"models": [{"name": "m", "version": "1", "kind": "audio", "dir": "/m"}],
                                 "serve": {"text": "m@1"}}}},
    {"shard": {"modelRegistry": {"models": [{"name": "m", "version": "1", "kind": "text", "dir": "m"}],
                                 "serve": {"text": "m@1"}}}},
    {"shard": {"modelVolumes": [{"name": "v2", "volume": {"emptyDir": {}}}]}},
    {"shard": {"modelVolumes": [{"name": "Bad_Name", "mountPath": "/m", "volume": {"emptyDir": {}}}]}},
    {"shard": {"modelVolumes": [{"name": "v2", "mountPath": "/m", "volume": {}}]}},
    {"unknownTopLevel": True},
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=[json.dumps(b, separators=(",", ":")) for b in BAD_VALUES])
def test_bad_values_rejected(schema, chart, bad):
    merged = chartlib.deep_merge(chart.values, bad)
    assert list(jsonschema.Draft7Validator(schema).iter_errors(merged)), "jsonschema accepted it"
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad)
    with pytest.raises(helm.HelmValuesError):
        chart.render(bad, name=chartlib.RELEASE, namespace=chartlib.NAMESPACE)
