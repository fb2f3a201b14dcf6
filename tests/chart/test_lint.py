"""`helm lint --strict` (Helm's own engine) and yamllint on values.yaml and
on the rendered manifests of every matrix case."""

from __future__ import annotations

import shutil

import helm_python as helm
import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

import chartlib
from test_render import IDS, KUBE_VERSIONS, MATRIX, case_values

YAMLLINT = YamlLintConfig(file=str(chartlib.REPO_ROOT / "tests" / "chart" / "yamllint.yaml"))


def lint_findings(values: dict, kube_version: str) -> list[str]:
    report = helm.lint(chartlib.CHART_DIR, values, strict=True, namespace=chartlib.NAMESPACE,
                       kube_version=f"v{kube_version}.0")
    # severity: 1 info, 2 warning, 3 error; strict makes warnings fail.
    bad = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return bad + list(report["errors"])


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("params", MATRIX, ids=IDS)
def test_helm_lint(params, kube_version):
    assert lint_findings(case_values(*params), kube_version) == []


def test_helm_lint_can_fail(tmp_path):
    # A value the schema rejects ...
    assert lint_findings({"shard": {"count": 0}}, KUBE_VERSIONS[-1]) != []
    # ... and a template that renders broken YAML. (`fail` in templates is
    # not an error in lint mode; test_render checks those cases.)
    broken = tmp_path / "vitrine"
    shutil.copytree(chartlib.CHART_DIR, broken)
    (broken / "templates" / "broken.yaml").write_text("apiVersion: v1\nkind: [ConfigMap\n")
    report = helm.lint(broken, {}, strict=True)
    assert any(m["severity"] >= 2 for m in report["messages"]), report


def yamllint(text: str) -> list[str]:
    return [f"{p.line}:{p.column} {p.rule}: {p.desc}" for p in linter.run(text, YAMLLINT)]


def test_yamllint_values():
    assert yamllint((chartlib.CHART_DIR / "values.yaml").read_text()) == []


@pytest.mark.parametrize("params", MATRIX, ids=IDS)
def test_yamllint_rendered(params):
    stream = chartlib.as_stream(chartlib.render_files(case_values(*params)))
    assert yamllint(stream) == []


def test_yamllint_can_fail():
    assert yamllint("a:  1\nb: [ 1 ]\n") != []
