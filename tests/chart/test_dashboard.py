"""The Grafana dashboard: valid JSON, shipped verbatim in the ConfigMap, and
a panel for each metric the metrics work defines."""

from __future__ import annotations

import json
import re

import pytest

import chartlib
from conftest import one

DASHBOARD = chartlib.CHART_DIR / "dashboards" / "vitrine.json"

METRICS = [
    "vitrine_requests_total", "vitrine_request_duration_seconds_bucket",
    "vitrine_fanout_shards_answered", "vitrine_fanout_shards_asked",
    "vitrine_shard_call_duration_seconds_bucket", "vitrine_embed_queue_seconds_bucket",
    "vitrine_embed_compute_seconds_bucket", "vitrine_embed_batch_size_bucket",
    "vitrine_index_items", "vitrine_index_tombstones", "vitrine_wal_bytes",
    "vitrine_wal_fsync_seconds_bucket", "vitrine_explore_slots_total", "vitrine_served_slots_total",
]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_metric_has_a_panel(dashboard):
    used = set()
    for e in exprs(dashboard):
        used |= set(re.findall(r"\bvitrine_[a-z_]+", e))
    assert set(METRICS) - used == set()
    assert used - set(METRICS) == set(), "dashboard uses metric names nobody defines"


def test_labels_used_per_metric(dashboard):
    by_metric = {"vitrine_requests_total": {"rpc", "code"}, "vitrine_request_duration_seconds_bucket": {"rpc"},
                 "vitrine_shard_call_duration_seconds_bucket": {"shard"}}
    joined = "\n".join(exprs(dashboard))
    for metric, labels in by_metric.items():
        grouped = set()
        for m in re.finditer(r"sum by \(([^)]*)\) \(rate\(" + metric, joined):
            grouped |= {x.strip() for x in m.group(1).split(",")}
        assert labels <= grouped, metric


def test_histograms_are_quantiles_of_rates(dashboard):
    for e in exprs(dashboard):
        assert e.count("(") == e.count(")"), e
        for bucket in re.findall(r"vitrine_[a-z_]+_bucket", e):
            assert e.startswith("histogram_quantile(") and f"rate({bucket}" in e, e


def test_panels_well_formed(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "namespace"}


def test_configmap_ships_the_file_verbatim():
    objs = chartlib.render({"metrics": {"dashboard": {"enabled": True, "labels": {"team": "recs"}}}})
    cm = one(objs, "ConfigMap", f"{chartlib.RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["team"] == "recs"
    assert json.loads(cm["data"]["vitrine.json"]) == json.loads(DASHBOARD.read_text())
