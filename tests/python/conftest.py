"""Fixtures for the Python client tests: a real local Vitrine cluster.

Two `vitrine-shard` processes and one `vitrine-router`, each a separate
process on a free loopback port with its own temporary data directory, are
started from the built binaries (`target/debug/`, or `$VITRINE_BIN_DIR`).
The tests only talk to the router, through stubs generated from `proto/` by
`tests/python/run.sh` into `tests/python/gen/`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
GEN_DIR = HERE / "gen"

BUILD_HINT = "`bash scripts/test.sh` builds the binaries and fetches the model"
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.2
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 60
NUM_SHARDS = 2


def _ensure_stubs() -> None:
    """Puts gen/ on sys.path, generating the stubs if run.sh was bypassed."""
    if not (GEN_DIR / "vitrine" / "v1" / "vitrine_pb2_grpc.py").exists():
        try:
            from grpc_tools import protoc  # type: ignore
        except ImportError as e:  # pragma: no cover - only outside run.sh
            raise RuntimeError(
                f"generated stubs missing in {GEN_DIR} and grpc_tools is not installed; "
                "run `bash tests/python/run.sh`"
            ) from e
        GEN_DIR.mkdir(parents=True, exist_ok=True)
        proto = REPO_ROOT / "proto"
        rc = protoc.main(
            [
                "protoc",
                f"-I{proto}",
                f"--python_out={GEN_DIR}",
                f"--grpc_python_out={GEN_DIR}",
                str(proto / "vitrine" / "v1" / "vitrine.proto"),
                str(proto / "vitrine" / "v1" / "shard.proto"),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed with exit code {rc}")
    for pkg in (GEN_DIR / "vitrine", GEN_DIR / "vitrine" / "v1"):
        (pkg / "__init__.py").touch(exist_ok=True)
    if str(GEN_DIR) not in sys.path:
        sys.path.insert(0, str(GEN_DIR))


_ensure_stubs()

import grpc  # noqa: E402

from vitrine.v1 import vitrine_pb2 as pb  # noqa: E402
from vitrine.v1 import vitrine_pb2_grpc as pb_grpc  # noqa: E402


def _bin_dir() -> Path:
    env = os.environ.get("VITRINE_BIN_DIR")
    return Path(env).resolve() if env else REPO_ROOT / "target" / "debug"


def _model_dir() -> Path:
    return REPO_ROOT / ".cache" / "models" / "all-minilm-l6-v2"


def _ort_lib() -> Path:
    return REPO_ROOT / ".cache" / "models" / "libonnxruntime.so.1.31.1"


def _missing_prerequisites() -> list[str]:
    missing = []
    for name in ("vitrine-shard", "vitrine-router"):
        p = _bin_dir() / name
        if not (p.is_file() and os.access(p, os.X_OK)):
            missing.append(str(p))
    for p in (_model_dir() / "model.onnx", _model_dir() / "tokenizer.json", _ort_lib()):
        if not p.is_file():
            missing.append(str(p))
    return missing


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all sockets held open until all are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen | None = None


@dataclass
class Cluster:
    """A running cluster; tests use `stub` (the router's Vitrine service)."""

    router_addr: str
    shard_addrs: list[str]
    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    channel: grpc.Channel | None = None
    stub: pb_grpc.VitrineStub | None = None

    def log_tails(self) -> str:
        parts = []
        for p in self.procs:
            rc = p.popen.poll() if p.popen else None
            state = "running" if rc is None else f"exited with {rc}"
            parts.append(f"----- {p.name} ({state}) {p.log} -----\n{_tail(p.log)}")
        return "\n".join(parts)

    def dead(self) -> list[Proc]:
        return [p for p in self.procs if p.popen is not None and p.popen.poll() is not None]


_ACTIVE: list[Cluster] = []


def _start(proc: Proc, cwd: Path) -> None:
    # The binaries read VITRINE_SHARD_* / VITRINE_ROUTER_* settings from the
    # environment (clap `env`); drop them so only the flags above apply.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITRINE_")}
    env.setdefault("RUST_LOG", "info")
    env.setdefault("RUST_BACKTRACE", "1")
    with open(proc.log, "wb") as log:
        proc.popen = subprocess.Popen(
            proc.args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _stop(procs: list[Proc]) -> None:
    running = [p for p in procs if p.popen is not None and p.popen.poll() is None]
    for p in running:
        try:
            p.popen.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for p in running:
        try:
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


def _wait_ready(cluster: Cluster) -> pb.ClusterInfoResponse:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer yet"
    while True:
        dead = cluster.dead()
        if dead:
            names = ", ".join(f"{p.name} (exit {p.popen.returncode})" for p in dead)
            raise RuntimeError(f"process(es) exited during startup: {names}")
        try:
            info = cluster.stub.ClusterInfo(pb.ClusterInfoRequest(), timeout=2.0)
            if info.coverage.shards_answered == NUM_SHARDS:
                return info
            last = (
                f"ClusterInfo answered with coverage {info.coverage.shards_answered}/"
                f"{info.coverage.shards_asked}"
            )
        except grpc.RpcError as e:
            last = f"ClusterInfo failed: {e.code().name}: {e.details()}"
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"cluster not ready after {READY_TIMEOUT_S:.0f} s "
                f"(want shards_answered == {NUM_SHARDS}); last: {last}"
            )
        time.sleep(READY_POLL_S)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Starts 2 shards + 1 router and yields a `Cluster` once all shards answer."""
    missing = _missing_prerequisites()
    if missing and os.environ.get("VITRINE_REQUIRE_CLUSTER") == "1":
        # scripts/test.sh builds everything first, so a skip there would hide a bug.
        pytest.fail("Vitrine binaries or model files missing: " + ", ".join(missing))
    if missing:
        pytest.skip(
            "Vitrine binaries or model files missing: "
            + ", ".join(missing)
            + f"; {BUILD_HINT} (or set VITRINE_BIN_DIR)"
        )

    tmp = tmp_path_factory.mktemp("vitrine-cluster")
    ports = _free_ports(NUM_SHARDS + 1)
    shard_addrs = [f"127.0.0.1:{p}" for p in ports[:NUM_SHARDS]]
    router_addr = f"127.0.0.1:{ports[NUM_SHARDS]}"
    cluster = Cluster(router_addr=router_addr, shard_addrs=shard_addrs, tmp=tmp)

    for i, addr in enumerate(shard_addrs):
        data = tmp / f"shard{i}-data"
        data.mkdir()
        cluster.procs.append(
            Proc(
                name=f"shard{i}",
                args=[
                    str(_bin_dir() / "vitrine-shard"),
                    "--listen", addr,
                    "--data-dir", str(data),
                    "--model-dir", str(_model_dir()),
                    "--ort-lib", str(_ort_lib()),
                    "--shard-id", str(i),
                ],
                log=tmp / f"shard{i}.log",
            )
        )
    router_args = [str(_bin_dir() / "vitrine-router"), "--listen", router_addr]
    for addr in shard_addrs:
        router_args += ["--shard", addr]
    cluster.procs.append(Proc(name="router", args=router_args, log=tmp / "router.log"))

    _ACTIVE.append(cluster)
    try:
        for p in cluster.procs:
            _start(p, cwd=tmp)
        cluster.channel = grpc.insecure_channel(
            router_addr, options=[("grpc.enable_http_proxy", 0)]
        )
        cluster.stub = pb_grpc.VitrineStub(cluster.channel)
        failure = None
        try:
            _wait_ready(cluster)
        except RuntimeError as e:
            failure = f"{e}\n{cluster.log_tails()}"
        if failure is not None:
            pytest.fail(failure, pytrace=False)
        yield cluster
    finally:
        if cluster.channel is not None:
            cluster.channel.close()
        _stop(list(reversed(cluster.procs)))  # router first, then shards
        _ACTIVE.remove(cluster)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the cluster's log tails to every failing test's report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _ACTIVE:
        for c in _ACTIVE:
            rep.sections.append((f"vitrine cluster logs ({c.tmp})", c.log_tails()))
