"""Shared helpers for the chart tests (tests/chart/run.sh sets up the venv)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import chartlib  # noqa: E402


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def workloads(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")]


def containers(workload: dict) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    """name -> env entry (with `value` or `valueFrom`)."""
    return {e["name"]: e for e in container.get("env", [])}


def effective_env(objs: list[dict], container: dict) -> dict[str, str]:
    """What the process sees: envFrom ConfigMaps, then env values (env wins).
    valueFrom entries are left out (resolved by the kubelet)."""
    out: dict[str, str] = {}
    for src in container.get("envFrom", []):
        ref = src["configMapRef"]["name"]
        out.update(one(objs, "ConfigMap", ref)["data"])
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
    return out


@pytest.fixture(scope="session")
def default_objs() -> list[dict]:
    return chartlib.render()
