"""The container image's layout, run with the Helm chart's settings.

No image can be built here, so this lays out in a temporary directory the
files that the Dockerfile's runtime stage copies (read from the Dockerfile
itself: the binaries into usr/local/bin, the model and ONNX Runtime into
opt/vitrine/models), renders charts/vitrine with one shard, and starts one
shard and one router with exactly the environment and arguments the chart
gives the containers. Only what a pod gets from Kubernetes is substituted:
absolute paths are re-rooted into the layout, listen addresses become free
loopback ports, the shard's pod-index label is 0, and the router's shard
address (<release>-shard-0.<release>-shard.<ns>.svc.cluster.local) becomes
localhost:<port>, still a name to resolve. Then: gRPC health checks as the
kubelet's probes make them, an Upsert and a Search round trip through the
router, a clean exit on SIGTERM, and no file written outside the data
volume and /tmp (readOnlyRootFilesystem).

Needs the chart-test virtualenv (`bash tests/chart/run.sh` creates it;
scripts/test.sh runs that first) to render the chart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from conftest import READY_POLL_S, READY_TIMEOUT_S, REPO_ROOT, _bin_dir, _free_ports, _tail
from vitrine.v1 import vitrine_pb2 as pb
from vitrine.v1 import vitrine_pb2_grpc as pb_grpc

sys.path.insert(0, str(REPO_ROOT / "tests" / "chart"))
import dockerfile_layout  # noqa: E402  (standard library only)

CHART_PYTHON = REPO_ROOT / ".cache" / "chart-venv" / "bin" / "python"
CHARTLIB = REPO_ROOT / "tests" / "chart" / "chartlib.py"
RPC_TIMEOUT_S = 30.0
UPSERT_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0

ITEMS = [
    ("img-001", "Espresso Machine with Steam Wand",
     "Semi-automatic espresso machine with a steam wand for frothing milk."),
    ("img-002", "Waterproof Hiking Boots",
     "Mid-cut leather hiking boots with a waterproof membrane and ankle support."),
    ("img-003", "Noise Cancelling Wireless Headphones",
     "Over-ear Bluetooth headphones with active noise cancellation."),
]


def _missing() -> list[str]:
    missing = []
    for name in ("vitrine-router", "vitrine-shard", "vitrine"):
        if not (_bin_dir() / name).is_file():
            missing.append(str(_bin_dir() / name))
    models = REPO_ROOT / ".cache" / "models"
    for p in (models / "all-minilm-l6-v2" / "model.onnx", models / "all-minilm-l6-v2" / "tokenizer.json"):
        if not p.is_file():
            missing.append(str(p))
    if not CHART_PYTHON.is_file():
        missing.append(f"{CHART_PYTHON} (run `bash tests/chart/run.sh`)")
    return missing


def health_status(channel: grpc.Channel, service: str = "") -> int:
    """grpc.health.v1.Health/Check, as the kubelet's gRPC probe calls it
    (service ""), with the two one-field messages encoded by hand."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    name = service.encode()
    request = (b"\x0a" + bytes([len(name)]) + name) if name else b""
    reply = check(request, timeout=2.0)
    # HealthCheckResponse{status = 1}: field 1, varint -> b"\x08\x01" (SERVING)
    if not reply:
        return 0  # UNKNOWN is the default and encodes as nothing
    assert reply[0] == 0x08 and len(reply) == 2, reply
    return reply[1]


SERVING = 1


def render_chart(values: dict) -> list[dict]:
    out = subprocess.run([str(CHART_PYTHON), str(CHARTLIB), json.dumps(values)],
                         check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def container_of(objs: list[dict], kind: str, name: str) -> dict:
    (w,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name)]
    (c,) = w["spec"]["template"]["spec"]["containers"]
    return c


def chart_env(objs: list[dict], container: dict, pod_index: int) -> dict[str, str]:
    """The environment the kubelet would give the container."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        (cm,) = [o for o in objs if o["kind"] == "ConfigMap"
                 and o["metadata"]["name"] == src["configMapRef"]["name"]]
        env.update(cm["data"])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            assert path == "metadata.labels['apps.kubernetes.io/pod-index']", e
            env[e["name"]] = str(pod_index)
    return env


def reroot(env: dict[str, str], root: Path, listen_key: str, listen: str) -> dict[str, str]:
    out = {}
    for k, v in env.items():
        if k == listen_key:
            assert v.startswith("0.0.0.0:"), (k, v)
            v = listen
        elif v.startswith("/"):
            v = str(root / v.lstrip("/"))
        out[k] = v
    return out


def tree(root: Path, skip: set[Path]) -> dict[str, tuple[int, float]]:
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for f in filenames:
            p = Path(dirpath, f)
            st = p.stat()
            files[str(p.relative_to(root))] = (st.st_size, st.st_mtime)
    return files


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    missing = _missing()
    if missing:
        msg = "image layout test prerequisites missing: " + ", ".join(missing)
        if os.environ.get("VITRINE_REQUIRE_CLUSTER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    root = tmp_path_factory.mktemp("image-root")
    runtime = dockerfile_layout.runtime_stage()
    for local, dest in dockerfile_layout.image_files(runtime, _bin_dir()):
        target = root / dest.lstrip("/")
        if local.is_dir():
            shutil.copytree(local, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("wheels"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, target)
    return root, runtime


def test_image_layout_serves_with_chart_settings(layout):
    root, runtime = layout
    objs = render_chart({"shard": {"count": 1}})
    shard_c = container_of(objs, "StatefulSet", "-shard")
    router_c = container_of(objs, "Deployment", "-router")

    # Volumes the pod mounts over the read-only image: the data PVC and /tmp.
    mounts = {m["mountPath"] for m in shard_c["volumeMounts"]}
    data_dir = chart_env(objs, shard_c, 0)["VITRINE_SHARD_DATA_DIR"]
    assert data_dir in mounts and "/tmp" in mounts
    for d in (data_dir, "/tmp"):
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    writable = {root / data_dir.lstrip("/"), root / "tmp"}
    before = tree(root, writable)

    shard_port, router_port = _free_ports(2)
    shard_env = reroot(chart_env(objs, shard_c, 0), root, "VITRINE_SHARD_LISTEN", f"127.0.0.1:{shard_port}")
    router_env = reroot(chart_env(objs, router_c, 0), root, "VITRINE_ROUTER_LISTEN", f"127.0.0.1:{router_port}")
    # The chart's model paths must exist in the image, with no fallback.
    assert Path(shard_env["VITRINE_SHARD_MODEL_DIR"], "model.onnx").is_file()
    assert Path(shard_env["VITRINE_SHARD_ORT_LIB"]).is_file()

    shard_addrs = [a.removeprefix("--shard=") for a in router_c["args"]]
    assert len(shard_addrs) == 1 and shard_addrs[0].endswith(".svc.cluster.local:50061"), router_c["args"]
    router_args = [f"--shard=localhost:{shard_port}"]

    base = {"PATH": f"{root}/usr/local/bin:/usr/bin:/bin", "HOME": str(root / "tmp"),
            "TMPDIR": str(root / "tmp"), "RUST_BACKTRACE": "1"}
    # The image's WORKDIR.
    (workdir,) = runtime.all("WORKDIR")
    cwd = root / workdir.lstrip("/")
    logs = root.parent / (root.name + "-logs")
    logs.mkdir()
    procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(name: str, argv: list[str], env: dict[str, str]) -> None:
        exe = shutil.which(argv[0], path=base["PATH"])
        assert exe and exe.startswith(str(root)), f"{argv[0]} not found in the image layout"
        log = logs / f"{name}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen([exe, *argv[1:]], env={**base, **env}, cwd=cwd,
                                 stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        procs.append((name, p, log))

    def logs_text() -> str:
        return "\n".join(f"----- {n} (rc={p.poll()}) -----\n{_tail(log)}" for n, p, log in procs)

    try:
        start("shard", shard_c["command"] + shard_c.get("args", []), shard_env)
        start("router", router_c["command"] + router_args, router_env)

        shard_ch = grpc.insecure_channel(f"127.0.0.1:{shard_port}", options=[("grpc.enable_http_proxy", 0)])
        router_ch = grpc.insecure_channel(f"127.0.0.1:{router_port}", options=[("grpc.enable_http_proxy", 0)])
        stub = pb_grpc.VitrineStub(router_ch)
        deadline = time.monotonic() + READY_TIMEOUT_S
        state = "not started"
        while True:
            dead = [(n, p.returncode) for n, p, _ in procs if p.poll() is not None]
            assert not dead, f"exited during startup: {dead}\n{logs_text()}"
            try:
                if health_status(shard_ch) == SERVING and health_status(router_ch) == SERVING:
                    info = stub.ClusterInfo(pb.ClusterInfoRequest(), timeout=2.0)
                    if info.coverage.shards_answered == 1:
                        break
                    state = f"coverage {info.coverage}"
            except grpc.RpcError as e:
                state = f"{e.code().name}: {e.details()}"
            assert time.monotonic() < deadline, f"not ready after {READY_TIMEOUT_S}s: {state}\n{logs_text()}"
            time.sleep(READY_POLL_S)

        assert [s.address for s in info.shards] == [f"localhost:{shard_port}"]
        up = stub.UpsertItems(pb.UpsertItemsRequest(items=[
            pb.Item(id=i, title=t, description=d) for i, t, d in ITEMS]), timeout=UPSERT_TIMEOUT_S)
        assert (up.upserted, up.embedded) == (len(ITEMS), len(ITEMS)), up
        for id_, title, _ in ITEMS:
            resp = stub.Search(pb.SearchRequest(text=title, k=len(ITEMS)), timeout=RPC_TIMEOUT_S)
            assert resp.coverage.shards_answered == 1 and not resp.coverage.degraded, resp.coverage
            assert [h.id for h in resp.hits][0] == id_, [(h.id, h.score) for h in resp.hits]
        shard_ch.close()
        router_ch.close()

        # The pod's termination: SIGTERM, then a clean exit.
        for name, p, _ in reversed(procs):
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=STOP_TIMEOUT_S) == 0, f"{name} exit code {p.returncode}\n{logs_text()}"
    finally:
        for _, p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    # The WAL went to the data volume; nothing else in the image changed.
    assert any((root / data_dir.lstrip("/")).rglob("*")), "no WAL in the data directory"
    assert tree(root, writable) == before, "files written outside the data volume and /tmp"
