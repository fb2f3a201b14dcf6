"""Renders the chart for a matrix of values and checks what Kubernetes would
get: schema-valid objects, the shard topology, probes, security and the
optional parts (GPU, TLS, metrics) present exactly when enabled."""

from __future__ import annotations

import copy
import itertools
import json

import kubernetes_validate

import pytest
from kubernetes_validate.utils import latest_version

import chartlib
from conftest import by_kind, containers, effective_env, env_of, one, workloads

R = chartlib.RELEASE
NS = chartlib.NAMESPACE
# The chart's minimum (Chart.yaml kubeVersion) and the newest schema the
# pinned kubernetes-validate ships.
KUBE_VERSIONS = ["1.28", ".".join(latest_version().split(".")[:2])]
API_KEY = "write:test-key-0123456789abcdef"
HEALTH_PORT = 8086


def case_values(gpu: bool, topology: tuple[int, int], tls: bool, metrics: bool) -> dict:
    count, replicas = topology
    v: dict = {"shard": {"count": count, "replicas": replicas, "gpu": {"enabled": gpu}}}
    if tls:
        v["tls"] = {"enabled": True, "existingSecret": "vitrine-tls"}
        v["auth"] = {"enabled": True, "apiKeys": [API_KEY]}
    if metrics:
        v["metrics"] = {"enabled": True, "serviceMonitor": {"enabled": True},
                        "dashboard": {"enabled": True}}
        v["networkPolicy"] = {"enabled": True}
    return v


# (shards, replicas per shard).
TOPOLOGIES = [(1, 1), (3, 1), (2, 3)]
MATRIX = list(itertools.product([False, True], TOPOLOGIES, [False, True], [False, True]))
IDS = [f"gpu={int(g)}-shards={c}x{r}-tls={int(t)}-metrics={int(m)}" for g, (c, r), t, m in MATRIX]


@pytest.fixture(scope="module", params=MATRIX, ids=IDS)
def case(request):
    gpu, (count, replicas), tls, metrics = request.param
    return {"gpu": gpu, "count": count, "replicas": replicas, "tls": tls, "metrics": metrics,
            "objs": chartlib.render(case_values(*request.param))}


def router_deploy(objs, fullname: str = R):
    return one(objs, "Deployment", f"{fullname}-router")


def shard_sts(objs, fullname: str = R):
    return one(objs, "StatefulSet", f"{fullname}-shard")


def shard_addrs(count: int, release: str = R, fullname: str = R, ns: str = NS,
                domain: str = "cluster.local", port: int = 50061) -> list[str]:
    return [f"{fullname}-shard-{i}.{fullname}-shard.{ns}.svc.{domain}:{port}" for i in range(count)]


def router_shard_args(objs, fullname: str = R) -> list[str]:
    (c,) = router_deploy(objs, fullname)["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["vitrine-router"]
    shards = [a.removeprefix("--shard=") for a in c["args"] if a.startswith("--shard=")]
    assert len(shards) == len(c["args"]), f"unexpected router args: {c['args']}"
    return shards


# ---- every case -------------------------------------------------------------


def test_kubernetes_schemas(case):
    """Every object validates (strict: unknown fields fail) against the
    Kubernetes OpenAPI schemas, except CRD kinds, which have none there."""
    for obj in case["objs"]:
        if (obj["apiVersion"], obj["kind"]) in chartlib.CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: "
                            f"{'.'.join(map(str, e.path))}: {e.message}")


def test_only_known_kinds(case):
    kinds = {(o["apiVersion"], o["kind"]) for o in case["objs"]}
    crds = kinds & chartlib.CRD_KINDS
    assert crds == ({("monitoring.coreos.com/v1", "ServiceMonitor")} if case["metrics"] else set())
    names = [(o["kind"], o["metadata"]["name"]) for o in case["objs"]]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


def test_shard_count_drives_statefulset_and_router(case):
    n = case["count"] * case["replicas"]
    sts = shard_sts(case["objs"])
    assert sts["spec"]["replicas"] == n
    assert sts["spec"]["serviceName"] == f"{R}-shard"
    assert router_shard_args(case["objs"]) == shard_addrs(n)


def test_headless_service_resolves_shard_pods(case):
    objs = case["objs"]
    sts = shard_sts(objs)
    svc = one(objs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["grpc"] == 50061


def test_selectors_match_pod_labels(case):
    objs = case["objs"]
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads(objs)}
    for w in workloads(objs):
        assert w["spec"]["selector"]["matchLabels"].items() <= pods[w["metadata"]["name"]].items()
    for svc in by_kind(objs, "Service"):
        sel = svc["spec"]["selector"]
        matched = [n for n, labels in pods.items() if sel.items() <= labels.items()]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {matched}"
        (target,) = [w for w in workloads(objs) if w["metadata"]["name"] == matched[0]]
        port_names = {p["name"] for c in containers(target) for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in port_names, f"{svc['metadata']['name']}: {p}"
    for pdb in by_kind(objs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert sum(sel.items() <= labels.items() for labels in pods.values()) == 1


def test_probes_on_every_container(case):
    # Kubelet gRPC probes cannot use TLS: with TLS on they go to the
    # plaintext health port, which each binary then serves.
    probe_port_name = "health" if case["tls"] else "grpc"
    for w in workloads(case["objs"]):
        for c in containers(w):
            probe_port = {p["name"]: p["containerPort"] for p in c["ports"]}[probe_port_name]
            for probe in ("readinessProbe", "livenessProbe"):
                assert c[probe]["grpc"]["port"] == probe_port, (w["metadata"]["name"], probe)
    (shard,) = containers(shard_sts(case["objs"]))
    assert shard["startupProbe"]["grpc"]["port"] == (HEALTH_PORT if case["tls"] else 50061)
    # Models and WAL replay get minutes, not the liveness probe's seconds.
    sp = shard["startupProbe"]
    assert sp["failureThreshold"] * sp["periodSeconds"] >= 300


def test_security_everywhere(case):
    for w in workloads(case["objs"]):
        name = w["metadata"]["name"]
        spec = w["spec"]["template"]["spec"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert psc["runAsUser"] == 10001 and psc["fsGroup"] == 10001, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp is not an emptyDir"
            res = c["resources"]
            assert res["requests"]["cpu"] and res["requests"]["memory"], name
            assert res["limits"]["cpu"] and res["limits"]["memory"], name


def test_gpu_only_when_enabled(case):
    sts = shard_sts(case["objs"])
    spec = sts["spec"]["template"]["spec"]
    (shard,) = spec["containers"]
    limits = shard["resources"]["limits"]
    if case["gpu"]:
        assert limits["nvidia.com/gpu"] == 1
        assert spec["runtimeClassName"] == "nvidia"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    else:
        assert "nvidia.com/gpu" not in limits
        assert "runtimeClassName" not in spec
        assert "tolerations" not in spec
    for w in workloads(case["objs"]):
        for c in containers(w):
            if w is not sts:
                assert not any("gpu" in k for k in c["resources"].get("limits", {})), w["metadata"]["name"]


def test_tls_and_auth_only_when_enabled(case):
    objs = case["objs"]
    tls_env = {"VITRINE_TLS_CERT": "/etc/vitrine/tls/tls.crt", "VITRINE_TLS_KEY": "/etc/vitrine/tls/tls.key",
               "VITRINE_TLS_CA": "/etc/vitrine/tls/ca.crt"}
    for w in (router_deploy(objs), shard_sts(objs)):
        spec = w["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        env = effective_env(objs, c)
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        component = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        health_var = f"VITRINE_{component.upper()}_HEALTH_LISTEN"
        if case["tls"]:
            assert {k: env.get(k) for k in tls_env} == tls_env
            assert env[health_var] == f"0.0.0.0:{HEALTH_PORT}"
            m = mounts["/etc/vitrine/tls"]
            assert m["readOnly"] is True
            assert volumes[m["name"]]["secret"]["secretName"] == "vitrine-tls"
        else:
            assert not set(tls_env) & set(env)
            assert health_var not in env
            assert "/etc/vitrine/tls" not in mounts
        # Mutual TLS is a separate choice (test_mutual_tls).
        assert not {"VITRINE_SHARD_TLS_CLIENT_AUTH", "VITRINE_ROUTER_SHARD_TLS_CERT"} & set(env)
    (router,) = router_deploy(objs)["spec"]["template"]["spec"]["containers"]
    env = effective_env(objs, router)
    if case["tls"]:  # the matrix turns auth on with TLS
        assert env["VITRINE_API_KEYS_FILE"] == "/etc/vitrine/auth/api-keys"
        secret = one(objs, "Secret", f"{R}-auth")
        assert secret["stringData"]["api-keys"].split() == [API_KEY]
    else:
        assert "VITRINE_API_KEYS_FILE" not in env
        assert not by_kind(objs, "Secret")


def test_metrics_only_when_enabled(case):
    objs = case["objs"]
    for w, var in ((router_deploy(objs), "VITRINE_ROUTER_METRICS_ADDR"),
                   (shard_sts(objs), "VITRINE_SHARD_METRICS_ADDR")):
        (c,) = containers(w)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        env = effective_env(objs, c)
        if case["metrics"]:
            assert env[var] == "0.0.0.0:9090"
            assert ports["metrics"] == 9090
        else:
            assert var not in env and "metrics" not in ports
    monitors = by_kind(objs, "ServiceMonitor")
    dashboards = [o for o in by_kind(objs, "ConfigMap") if o["metadata"].get("labels", {}).get("grafana_dashboard")]
    policies = by_kind(objs, "NetworkPolicy")
    if case["metrics"]:
        (sm,) = monitors
        sel = sm["spec"]["selector"]["matchLabels"]
        scraped = [s for s in by_kind(objs, "Service") if sel.items() <= s["metadata"]["labels"].items()]
        # one Service per workload, each with a port named like the endpoint
        assert sorted(s["spec"]["selector"]["app.kubernetes.io/component"] for s in scraped) == ["router", "shard"]
        for s in scraped:
            assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in s["spec"]["ports"]}
        assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
        (dash,) = dashboards
        assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert len(policies) == 2
    else:
        assert monitors == [] and dashboards == [] and policies == []


def test_shard_statefulset_storage_and_identity(case):
    sts = shard_sts(case["objs"])
    (vct,) = sts["spec"]["volumeClaimTemplates"]
    (c,) = containers(sts)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    env = effective_env(case["objs"], c)
    assert mounts[vct["metadata"]["name"]] == env["VITRINE_SHARD_DATA_DIR"] == "/var/lib/vitrine"
    assert vct["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    shard_id = env_of(c)["VITRINE_SHARD_POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert shard_id == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert c["command"] == ["vitrine-shard"] and "args" not in c


# ---- single cases -----------------------------------------------------------


def test_default_values(default_objs):
    kinds = sorted(o["kind"] for o in default_objs)
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                            "PodDisruptionBudget", "Service", "Service", "ServiceAccount", "StatefulSet"])
    assert router_shard_args(default_objs) == shard_addrs(2)
    hpa = one(default_objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{R}-router"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    # The HPA owns the replica count.
    assert "replicas" not in router_deploy(default_objs)["spec"]
    pdb = one(default_objs, "PodDisruptionBudget", f"{R}-router")
    assert pdb["spec"] == {"minAvailable": 1, "selector": pdb["spec"]["selector"]}
    svc = one(default_objs, "Service", R)
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"][0]["port"] == 50051


def test_configmap_carries_settings(default_objs):
    cm = one(default_objs, "ConfigMap", f"{R}-config")["data"]
    assert cm["VITRINE_SHARD_MODEL_DIR"] == "/opt/vitrine/models/all-minilm-l6-v2"
    assert cm["VITRINE_SHARD_ORT_LIB"] == "/opt/vitrine/models/libonnxruntime.so.1.31.1"
    assert cm["VITRINE_SHARD_FSYNC"] == "group"
    assert cm["VITRINE_LOG_JSON"] == "true"
    assert cm["VITRINE_SHARD_SNAPSHOTS_KEEP"] == "2"
    # The text model runs on the CPU unless GPUs are asked for; then CUDA
    # when the runtime has it (auto), or exactly what shard.device says.
    assert cm["VITRINE_SHARD_DEVICE"] == "cpu"
    gpu_cm = lambda values: one(chartlib.render(values), "ConfigMap", f"{R}-config")["data"]  # noqa: E731
    assert gpu_cm({"shard": {"gpu": {"enabled": True}}})["VITRINE_SHARD_DEVICE"] == "auto"
    assert gpu_cm({"shard": {"gpu": {"enabled": True}, "device": "cuda:1"}})["VITRINE_SHARD_DEVICE"] == "cuda:1"
    # No collector configured: no trace export, not even an empty variable.
    assert not any(k.startswith("VITRINE_OTLP_") for k in cm)
    objs = chartlib.render({"shard": {"fsync": "always", "fsyncGroupMs": 5, "snapshotWalBytes": 0, "drainMs": 0},
                            "router": {"minCoverage": 0.75},
                            "extraConfig": {"VITRINE_SHARD_HNSW_EF_SEARCH": 128}})
    cm2 = one(objs, "ConfigMap", f"{R}-config")["data"]
    assert cm2["VITRINE_SHARD_FSYNC"] == "always"
    assert cm2["VITRINE_SHARD_FSYNC_GROUP_MS"] == "5"
    assert cm2["VITRINE_SHARD_SNAPSHOT_WAL_BYTES"] == "0"
    assert cm2["VITRINE_SHARD_DRAIN_MS"] == "0"
    assert cm2["VITRINE_ROUTER_MIN_COVERAGE"] == "0.75"
    assert cm2["VITRINE_SHARD_HNSW_EF_SEARCH"] == "128"
    # Tracing, when a collector is named, for both workloads (envFrom).
    traced = one(chartlib.render({"tracing": {"otlpEndpoint": "http://otel-collector.obs:4317", "sampleRatio": 0.25}}),
                 "ConfigMap", f"{R}-config")["data"]
    assert traced["VITRINE_OTLP_ENDPOINT"] == "http://otel-collector.obs:4317"
    assert traced["VITRINE_OTLP_SAMPLE_RATIO"] == "0.25"
    # A config change rolls the pods.
    ann = lambda objs, w: w(objs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]  # noqa: E731
    assert ann(default_objs, router_deploy) != ann(objs, router_deploy)
    assert ann(default_objs, shard_sts) != ann(objs, shard_sts)


def test_an_image_model_is_mounted_and_configured():
    default_cm = one(chartlib.render({}), "ConfigMap", f"{R}-config")["data"]
    assert not any(k in default_cm for k in ("VITRINE_SHARD_IMAGE_MODEL_DIR", "VITRINE_SHARD_FUSION"))
    values = {"shard": {"imageModel": {"dir": "/opt/vitrine/image-model", "textWeight": 0.6, "imageWeight": 0.4,
                                       "volume": {"persistentVolumeClaim": {"claimName": "vit-base", "readOnly": True}}}}}
    objs = chartlib.render(values)
    cm = one(objs, "ConfigMap", f"{R}-config")["data"]
    assert cm["VITRINE_SHARD_IMAGE_MODEL_DIR"] == "/opt/vitrine/image-model"
    assert (cm["VITRINE_SHARD_FUSION"], cm["VITRINE_SHARD_TEXT_WEIGHT"], cm["VITRINE_SHARD_IMAGE_WEIGHT"]) == \
        ("concat", "0.6", "0.4")
    pod = shard_sts(objs)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "image-model"]
    assert volume["persistentVolumeClaim"]["claimName"] == "vit-base"
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "image-model"]
    assert mount == {"name": "image-model", "mountPath": "/opt/vitrine/image-model", "readOnly": True}
    # The router does not load models.
    assert all(v["name"] != "image-model" for v in router_deploy(objs)["spec"]["template"]["spec"]["volumes"])
    # A directory the image already has needs no volume.
    baked = chartlib.render({"shard": {"imageModel": {"dir": "/opt/models/clip"}}})
    assert one(baked, "ConfigMap", f"{R}-config")["data"]["VITRINE_SHARD_IMAGE_MODEL_DIR"] == "/opt/models/clip"
    assert all(v["name"] != "image-model" for v in shard_sts(baked)["spec"]["template"]["spec"]["volumes"])


def test_a_model_registry_is_mounted_without_rolling_the_pods_on_edit():
    default = chartlib.render({})
    assert "VITRINE_SHARD_MODELS" not in one(default, "ConfigMap", f"{R}-config")["data"]
    assert not [o for o in default if o["kind"] == "ConfigMap" and o["metadata"]["name"] == f"{R}-models"]
    registry = {
        "models": [
            {"name": "all-MiniLM-L6-v2", "version": "1", "kind": "text", "dir": "/opt/vitrine/models/all-minilm-l6-v2"},
            {"name": "all-MiniLM-L6-v2", "version": "2", "kind": "text", "dir": "/models/minilm-v2",
             "pooling": "cls"},
        ],
        "serve": {"text": "all-MiniLM-L6-v2@1"},
    }
    volumes = [{"name": "minilm-v2", "mountPath": "/models/minilm-v2",
                "volume": {"persistentVolumeClaim": {"claimName": "minilm-v2"}}}]
    objs = chartlib.render({"shard": {"modelRegistry": registry, "modelVolumes": volumes}})
    assert one(objs, "ConfigMap", f"{R}-config")["data"]["VITRINE_SHARD_MODELS"] == "/etc/vitrine/models/models.json"
    assert json.loads(one(objs, "ConfigMap", f"{R}-models")["data"]["models.json"]) == registry
    pod = shard_sts(objs)["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["model-registry"] == {"name": "model-registry", "mountPath": "/etc/vitrine/models", "readOnly": True}
    assert mounts["model-minilm-v2"] == {"name": "model-minilm-v2", "mountPath": "/models/minilm-v2",
                                         "readOnly": True}
    by_name = {v["name"]: v for v in pod["volumes"]}
    assert by_name["model-registry"]["configMap"]["name"] == f"{R}-models"
    assert by_name["model-minilm-v2"]["persistentVolumeClaim"]["claimName"] == "minilm-v2"
    # Declaring another version (or switching `serve`) does not roll the
    # pods: `vitrine models switch` does the change while they serve.
    registry["serve"] = {"text": "all-MiniLM-L6-v2@2"}
    edited = chartlib.render({"shard": {"modelRegistry": registry, "modelVolumes": volumes}})
    ann = lambda objs: shard_sts(objs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]  # noqa: E731
    assert ann(edited) == ann(objs)
    assert one(edited, "ConfigMap", f"{R}-models") != one(objs, "ConfigMap", f"{R}-models")
    # The router does not load models.
    assert all(v["name"] != "model-registry" for v in router_deploy(objs)["spec"]["template"]["spec"]["volumes"])


def test_a_tls_collector_gets_its_ca_in_both_workloads():
    values = {"tracing": {"otlpEndpoint": "https://otel-collector.obs:4317", "caSecret": "otel-ca"}}
    objs = chartlib.render(values)
    cm = one(objs, "ConfigMap", f"{R}-config")["data"]
    assert cm["VITRINE_OTLP_ENDPOINT"] == "https://otel-collector.obs:4317"
    assert cm["VITRINE_OTLP_CA"] == "/etc/vitrine/otlp/ca.crt"
    for workload in (router_deploy(objs), shard_sts(objs)):
        pod = workload["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "otlp-ca"]
        assert volume["secret"]["secretName"] == "otel-ca"
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "otlp-ca"]
        assert mount == {"name": "otlp-ca", "mountPath": "/etc/vitrine/otlp", "readOnly": True}
    # Without a TLS collector nothing is mounted.
    default = chartlib.render({})
    for workload in (router_deploy(default), shard_sts(default)):
        assert all(v["name"] != "otlp-ca" for v in workload["spec"]["template"]["spec"]["volumes"])
    # An https:// endpoint without a CA, or a CA for a plaintext endpoint,
    # is refused by the values schema (tests/chart/test_values_schema.py).


def test_drain_must_fit_in_the_grace_period():
    with pytest.raises(Exception, match="drainMs must be shorter"):
        chartlib.render({"shard": {"drainMs": 60000, "terminationGracePeriodSeconds": 60}})
    chartlib.render({"shard": {"drainMs": 59000, "terminationGracePeriodSeconds": 60}})


def test_other_release_name_namespace_and_domain():
    objs = chartlib.render({"clusterDomain": "k8s.example", "shard": {"count": 4, "port": 7000}},
                           name="shop", namespace="prod")
    assert router_shard_args(objs, "shop-vitrine") == shard_addrs(
        4, fullname="shop-vitrine", ns="prod", domain="k8s.example", port=7000)
    assert shard_sts(objs, "shop-vitrine")["spec"]["serviceName"] == "shop-vitrine-shard"
    objs = chartlib.render({"fullnameOverride": "recs"})
    assert router_shard_args(objs, "recs") == shard_addrs(2, fullname="recs")


def test_replicas_place_pods_and_peers():
    """shard.replicas multiplies the pods; the router gets every replica's
    address, each shard's together; each pod's peers (the template the shard
    fills in with --pod-index) are exactly the other replicas of its shard."""
    objs = chartlib.render({"shard": {"count": 2, "replicas": 3},
                            "router": {"writeConsistency": "all", "hedgeMs": 0}})
    sts = shard_sts(objs)
    assert sts["spec"]["replicas"] == 6
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    addrs = router_shard_args(objs)
    assert addrs == shard_addrs(6)
    cm = one(objs, "ConfigMap", f"{R}-config")["data"]
    assert cm["VITRINE_ROUTER_REPLICAS"] == cm["VITRINE_SHARD_REPLICAS"] == "3"
    assert cm["VITRINE_ROUTER_WRITE_CONSISTENCY"] == "all"
    assert cm["VITRINE_ROUTER_HEDGE_MS"] == "0"
    template = cm["VITRINE_SHARD_PEER_TEMPLATE"]
    assert template.count("{index}") == 1
    r = 3
    for pod in range(6):
        shard = pod // r
        peers = [template.replace("{index}", str(q)) for q in range(shard * r, shard * r + r) if q != pod]
        assert peers == [a for i, a in enumerate(addrs) if i // r == shard and i != pod]
    default = one(chartlib.render({}), "ConfigMap", f"{R}-config")["data"]
    assert default["VITRINE_ROUTER_REPLICAS"] == "1" and default["VITRINE_ROUTER_WRITE_CONSISTENCY"] == "quorum"


def test_autoscaling_off_sets_replicas():
    objs = chartlib.render({"router": {"autoscaling": {"enabled": False}, "replicas": 3}})
    assert router_deploy(objs)["spec"]["replicas"] == 3
    assert by_kind(objs, "HorizontalPodAutoscaler") == []


def test_pdbs_configurable():
    objs = chartlib.render({"router": {"podDisruptionBudget": {"minAvailable": None, "maxUnavailable": "25%"}},
                            "shard": {"podDisruptionBudget": {"enabled": False}}})
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    assert pdb["metadata"]["name"] == f"{R}-router"
    assert pdb["spec"]["maxUnavailable"] == "25%" and "minAvailable" not in pdb["spec"]


def test_service_monitor_needs_both_switches():
    objs = chartlib.render({"metrics": {"enabled": True, "serviceMonitor": {"enabled": False}}})
    assert by_kind(objs, "ServiceMonitor") == []
    objs = chartlib.render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    assert by_kind(objs, "ServiceMonitor") == []
    objs = chartlib.render({"metrics": {"enabled": True, "serviceMonitor": {
        "enabled": True, "labels": {"release": "prometheus"}, "interval": "15s"}}})
    sm = one(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["interval"] == "15s"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NS]}


def test_network_policy_rules():
    objs = chartlib.render({"metrics": {"enabled": True}, "networkPolicy": {
        "enabled": True, "metrics": {"namespaceSelector": {"matchLabels": {"team": "obs"}}}}})
    shard_np = one(objs, "NetworkPolicy", f"{R}-shard")
    router_labels = router_deploy(objs)["spec"]["template"]["metadata"]["labels"]
    shard_labels = shard_sts(objs)["spec"]["template"]["metadata"]["labels"]
    assert shard_np["spec"]["podSelector"]["matchLabels"].items() <= shard_labels.items()
    grpc_rule, metrics_rule = shard_np["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": 50061, "protocol": "TCP"}]
    (peer,) = grpc_rule["from"]
    assert set(peer) == {"podSelector"}, "shard gRPC must be open to router pods only"
    assert peer["podSelector"]["matchLabels"].items() <= router_labels.items()
    assert not peer["podSelector"]["matchLabels"].items() <= shard_labels.items()
    assert metrics_rule == {"from": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}],
                            "ports": [{"port": 9090, "protocol": "TCP"}]}
    router_np = one(objs, "NetworkPolicy", f"{R}-router")
    assert router_np["spec"]["ingress"][0] == {"ports": [{"port": 50051, "protocol": "TCP"}]}
    # By default: the namespaces named in networkPolicy.metrics.namespaces.
    objs = chartlib.render({"metrics": {"enabled": True}, "networkPolicy": {"enabled": True}})
    for np in by_kind(objs, "NetworkPolicy"):
        assert np["spec"]["ingress"][-1]["from"] == [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}]}}]
    # Without metrics, no metrics rule.
    objs = chartlib.render({"networkPolicy": {"enabled": True}})
    assert len(one(objs, "NetworkPolicy", f"{R}-shard")["spec"]["ingress"]) == 1


def test_mutual_tls():
    objs = chartlib.render({"tls": {"enabled": True, "existingSecret": "vitrine-tls", "mutual": True}})
    (router,) = containers(router_deploy(objs))
    (shard,) = containers(shard_sts(objs))
    router_env, shard_env = effective_env(objs, router), effective_env(objs, shard)
    assert router_env["VITRINE_ROUTER_SHARD_TLS_CERT"] == "/etc/vitrine/tls/tls.crt"
    assert router_env["VITRINE_ROUTER_SHARD_TLS_KEY"] == "/etc/vitrine/tls/tls.key"
    assert shard_env["VITRINE_SHARD_TLS_CLIENT_AUTH"] == "true"
    assert shard_env["VITRINE_TLS_CA"] == "/etc/vitrine/tls/ca.crt"


def test_auth_existing_secret_renders_no_secret():
    objs = chartlib.render({"auth": {"enabled": True, "existingSecret": "shop-keys", "secretKey": "keys.txt"}})
    assert by_kind(objs, "Secret") == []
    spec = router_deploy(objs)["spec"]["template"]["spec"]
    (auth,) = [v for v in spec["volumes"] if v["name"] == "auth"]
    assert auth["secret"]["secretName"] == "shop-keys"
    assert auth["secret"]["items"] == [{"key": "keys.txt", "path": "keys.txt"}]
    assert env_of(spec["containers"][0])["VITRINE_API_KEYS_FILE"]["value"] == "/etc/vitrine/auth/keys.txt"


@pytest.mark.parametrize("values, message", [
    ({"tls": {"enabled": True}}, "existingSecret"),
    ({"auth": {"enabled": True}}, "apiKeys"),
    ({"router": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}, "minReplicas"),
    ({"router": {"podDisruptionBudget": {"maxUnavailable": 1}}}, "only one"),
    ({"metrics": {"enabled": True, "port": 50061}}, "metrics.port"),
    ({"tls": {"enabled": True, "existingSecret": "t", "healthPort": 50051}}, "tls.healthPort"),
    ({"tls": {"enabled": True, "existingSecret": "t", "healthPort": 9090}, "metrics": {"enabled": True}},
     "tls.healthPort"),
])
def test_inconsistent_values_fail_to_render(values, message):
    import helm_python as helm

    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as exc:
        chartlib.render(values)
    assert message in str(exc.value)


def test_validator_is_not_a_no_op(default_objs):
    """The schema check above must be able to fail: a typo is caught."""
    sts = copy.deepcopy(shard_sts(default_objs))
    sts["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSIONS[-1], strict=True)
    sts = copy.deepcopy(shard_sts(default_objs))
    sts["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSIONS[-1], strict=True)
