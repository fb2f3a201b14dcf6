"""Renders charts/vitrine offline with the Helm engine of helm-python-sdk
(no helm binary, no cluster) and gives the tests parsed manifests.

Also a small CLI used by tests/python/test_image_layout.py, which runs in a
different virtualenv:

    python tests/chart/chartlib.py '{"shard": {"count": 1}}'

prints the rendered manifests as a JSON list.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "vitrine"
RELEASE = "vitrine"
NAMESPACE = "shop"

# Kinds whose schema is not part of Kubernetes (CRDs): kubernetes-validate
# has no schema for them, so they are checked by the tests' own assertions.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render_files(values: dict | None = None, *, name: str = RELEASE,
                 namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` computes it."""
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(values or {}, name=name, namespace=namespace,
                            is_install=True)


def as_stream(files: dict[str, str]) -> str:
    """The rendered manifests as one YAML stream, laid out like `helm template`."""
    parts = []
    for path in sorted(files):
        if path.endswith("NOTES.txt") or not files[path].strip():
            continue
        for doc in files[path].split("\n---\n"):
            if doc.strip():
                parts.append(f"---\n# Source: {path}\n{doc.strip()}\n")
    return "".join(parts)


def render(values: dict | None = None, **kw: Any) -> list[dict]:
    """Rendered Kubernetes objects (NOTES.txt and empty documents dropped)."""
    docs = yaml.safe_load_all(as_stream(render_files(values, **kw)))
    return [d for d in docs if d]


def main(argv: list[str]) -> int:
    values = json.loads(argv[1]) if len(argv) > 1 else {}
    json.dump(render(values), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
