"""A real local Ray cluster, with token authentication, that tests can start and stop.

    with RayCluster(tmp_path, worker_nodes=1) as cluster:
        client = JobSubmissionClient(cluster.address, headers=cluster.auth_headers)
        ...

`start()` runs `ray start --head --block` and then `ray start --address=127.0.0.1:GCS_PORT --block` once per
worker node, all with `RAY_AUTH_MODE=token` and a token made for this cluster, every port picked free (GCS,
dashboard, agents, client server, metrics, node and object managers; worker ports are left to the OS), each
node with its own temp dir (so its own session, logs and log monitor) under a short folder in /tmp (Ray's Unix
socket paths must stay under 108 bytes, so a pytest tmp_path is too long), and waits until GCS reports every
node alive and the Jobs API answers. The dashboard (Jobs API) listens on 127.0.0.1 only; Ray itself replaces
127.0.0.1 by the machine's address as the node IP (`--node-ip-address=127.0.0.1` is resolved the same way),
so GCS and the raylets listen on all interfaces, behind the token.

`stop()` kills only what this cluster started, never `ray stop` (which stops every Ray process on the
machine, other people's included). Each `ray start ... --block` runs in its own process group; `stop()`
sends SIGTERM to those groups, and then to every process that still carries this cluster's marker in its
environment (job drivers and the processes they start run in new sessions, outside those groups, but
inherit the environment), and SIGKILL to whatever is left after a grace period.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Self

from tests.helpers import free_ports

# Every process this cluster starts inherits this variable, set to the cluster's id; stop() finds them by it.
MARKER_VAR = "PRETRAIN_TEST_RAY_CLUSTER"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<cannot read {path}: {error}>"
    return "\n".join(text.splitlines()[-lines:])


def _pids_with_marker(marker: str) -> list[int]:
    """Processes whose environment holds MARKER_VAR=marker (needs permission to read /proc/PID/environ)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited already


class RayClusterError(RuntimeError):
    pass


class RayCluster:
    """A head node plus `worker_nodes` worker nodes on this machine, with token authentication.

    After start(): `address` is the dashboard / Jobs API address (http://127.0.0.1:PORT), `gcs_address` the GCS
    address for `ray.init(address=...)` / `ray start --address=...`, `token` the auth token, `token_path` a file
    holding it, `env` a whole environment for a client subprocess, `auth_env` just the two auth variables, and
    `auth_headers` the HTTP header that JobSubmissionClient(headers=...) takes whatever the environment says.
    """

    def __init__(
        self,
        workdir: Path,
        worker_nodes: int = 1,
        cpus_per_node: int = 1,
        object_store_bytes: int = 256 * 1024**2,
        start_timeout: float = 120.0,
        ray_bin: str | None = None,
    ):
        self.workdir = Path(workdir)
        self.worker_nodes = worker_nodes
        self.cpus_per_node = cpus_per_node
        self.object_store_bytes = object_store_bytes
        self.start_timeout = start_timeout
        self.ray_bin = ray_bin or str(Path(sys.executable).with_name("ray"))
        self.cluster_id = secrets.token_hex(6)
        self.token = secrets.token_hex(32)
        self.token_path = self.workdir / "ray_auth_token"
        self.temp_root: Path | None = None
        self.address: str | None = None
        self.gcs_address: str | None = None
        self.dashboard_port: int | None = None
        self._processes: list[tuple[str, subprocess.Popen, Path]] = []

    # -- what a client needs ------------------------------------------------------------------------------

    @property
    def auth_env(self) -> dict[str, str]:
        """The two variables that make a Ray client send this cluster's token: token mode and the token.

        Ray reads them once per process (they are cached in C++), so set them before the process first
        uses Ray, or pass `auth_headers` to JobSubmissionClient instead.
        """
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus what a client subprocess needs to reach this cluster (for subprocess.run(env=...)).

        RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (JobSubmissionClient, `ray job ...`, ray.init() all read them),
        RAY_API_SERVER_ADDRESS (the Jobs API, for `ray job ...` and the state API) and RAY_ADDRESS (the GCS,
        for ray.init()); a RAY_AUTH_TOKEN_PATH from outside is dropped (RAY_AUTH_TOKEN wins anyway).
        """
        env = dict(os.environ)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        env.update(self.auth_env)
        if self.address:
            env["RAY_API_SERVER_ADDRESS"] = self.address
            env["RAY_ADDRESS"] = self.gcs_address
        return env

    @property
    def auth_headers(self) -> dict[str, str]:
        """JobSubmissionClient(address, headers=cluster.auth_headers) authenticates whatever the environment says."""
        return {"Authorization": f"Bearer {self.token}"}

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why a cluster cannot be started here (a pytest skip reason), or None when it can."""
        if sys.platform != "linux":
            return "the local Ray cluster fixture needs Linux (/proc, process groups)"
        ray_bin = Path(sys.executable).with_name("ray")
        if not ray_bin.exists():
            return f"no `ray` command next to {sys.executable} (install ray[default])"
        try:
            import ray.dashboard  # noqa: F401
            from ray.job_submission import JobSubmissionClient  # noqa: F401
        except ImportError as error:
            return f"Ray with the dashboard and Jobs API is not importable ({error}); install ray[default]"
        if importlib.util.find_spec("aiohttp") is None:  # the dashboard (so the Jobs API) needs ray[default]
            return "ray[default] is not installed (no aiohttp), so the dashboard and the Jobs API cannot start"
        if not os.access("/tmp", os.W_OK):
            return "/tmp is not writable (Ray's socket folders go there)"
        return None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _node_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
            env.pop(name, None)
        env.update(self.auth_env)
        env[MARKER_VAR] = self.cluster_id
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Ray processes that look the cluster up with no address (Ray Train V2's PlacementGroupCleaner calls the
        # state API that way) scan for GCS processes and fail with "Found multiple active Ray instances" when any
        # other Ray cluster runs on this machine; RAY_ADDRESS points them at this one.
        env["RAY_ADDRESS"] = self.gcs_address
        # SIGTERM to `ray start --block` would otherwise mark the node draining and wait up to 30 s for it.
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        # The nodes must run the interpreter of this venv (job entrypoints run `python` from PATH of the raylet).
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _launch(self, name: str, args: list[str]) -> None:
        log = self.workdir / f"ray_start_{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [self.ray_bin, "start", *args, "--block", "--disable-usage-stats", "--log-style=record"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._node_env(),
                cwd=self.workdir,
                start_new_session=True,  # its own process group: stop() signals the whole group
            )
        self._processes.append((name, process, log))

    def _node_args(self, name: str, ports: list[int]) -> list[str]:
        temp_dir = self.temp_root / name
        temp_dir.mkdir()
        agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager = ports
        return [
            f"--num-cpus={self.cpus_per_node}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--metrics-export-port={metrics}",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            "--min-worker-port=0",  # workers take ports the OS picks, never Ray's 10002-19999 defaults
            "--max-worker-port=0",
        ]

    def start(self) -> Self:
        reason = self.unavailable_reason()
        if reason:
            raise RayClusterError(reason)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        self.temp_root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        ports = free_ports(3 + 6 * (1 + self.worker_nodes))
        gcs_port, self.dashboard_port, client_port = ports[:3]
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        started = time.monotonic()
        try:
            self._launch(
                "head",
                [
                    "--head",
                    f"--port={gcs_port}",
                    "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}",
                    f"--ray-client-server-port={client_port}",
                    *self._node_args("head", ports[3:9]),
                ],
            )
            self._wait(lambda: self._gcs_nodes_alive() >= 1, "the head node to come up", started)
            for index in range(self.worker_nodes):
                node_ports = ports[9 + 6 * index : 15 + 6 * index]
                self._launch(
                    f"worker{index + 1}",
                    [f"--address={self.gcs_address}", *self._node_args(f"w{index + 1}", node_ports)],
                )
            self._wait(
                lambda: self._gcs_nodes_alive() >= 1 + self.worker_nodes,
                f"{1 + self.worker_nodes} alive nodes",
                started,
            )
            self._wait(self._jobs_api_ready, "the Jobs API", started)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _wait(self, ready, what: str, started: float) -> None:
        while True:
            for name, process, _ in self._processes:
                if process.poll() is not None:
                    raise RayClusterError(
                        f"`ray start` for {name} exited with {process.returncode} while waiting for {what}.\n"
                        + self.log_tails()
                    )
            if ready():
                return
            if time.monotonic() - started > self.start_timeout:
                raise RayClusterError(
                    f"Ray cluster not ready after {self.start_timeout:.0f}s: waited for {what}.\n" + self.log_tails()
                )
            time.sleep(0.5)

    def _get(self, endpoint: str, timeout: float = 5.0):
        request = urllib.request.Request(self.address + endpoint, headers=self.auth_headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def _gcs_nodes_alive(self) -> int:
        """Alive nodes as GCS reports them through the dashboard (0 while the dashboard is not up)."""
        try:
            reply = self._get("/nodes?view=summary")
        except (OSError, ValueError):
            return 0
        summary = reply.get("data", {}).get("summary", [])
        return sum(1 for node in summary if node.get("raylet", {}).get("state") == "ALIVE")

    def _jobs_api_ready(self) -> bool:
        try:
            self._get("/api/jobs/")
            return True
        except (OSError, ValueError):
            return False

    def nodes(self) -> list[dict]:
        """GCS's node table (NodeID, NodeManagerAddress, Alive, Resources, ...), read over the dashboard's HTTP API."""
        summary = self._get("/nodes?view=summary").get("data", {}).get("summary", [])
        return [
            {
                "NodeID": node["raylet"]["nodeId"],
                "Alive": node["raylet"]["state"] == "ALIVE",
                "NodeManagerAddress": node["raylet"].get("nodeManagerAddress"),
                "Resources": node["raylet"].get("resourcesTotal", {}),
                "IsHead": node["raylet"].get("isHeadNode"),
            }
            for node in summary
        ]

    def log_tails(self, lines: int = 30) -> str:
        """The end of each `ray start` output and of the main Ray logs of each node, for error messages."""
        parts = []
        for name, _, log in self._processes:
            parts.append(f"--- {log} ---\n{_tail(log, lines)}")
        if self.temp_root is not None:
            for node_dir in sorted(self.temp_root.iterdir()):
                logs = node_dir / "session_latest" / "logs"
                for log_name in ("gcs_server.err", "raylet.err", "raylet.out", "dashboard.err", "dashboard.log"):
                    path = logs / log_name
                    if path.exists() and path.stat().st_size:
                        parts.append(f"--- {path} ---\n{_tail(path, lines)}")
        return "\n".join(parts)

    def session_logs_dir(self, node: str = "head") -> Path:
        """The logs folder of a node's current session ("head", "w1", "w2", ...)."""
        return self.temp_root / node / "session_latest" / "logs"

    def stop(self, grace: float = 10.0) -> None:
        """Terminate every process of this cluster (SIGTERM, then SIGKILL after `grace` seconds); idempotent."""
        for _, process, _ in reversed(self._processes):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, process, _ in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        # Job drivers run in sessions of their own, so they outlive the groups; the marker finds them.
        stragglers = _pids_with_marker(self.cluster_id)
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        while stragglers and time.monotonic() < deadline:
            stragglers = [pid for pid in stragglers if _alive(pid)]
            time.sleep(0.2)
        for _, process, _ in self._processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        for pid in _pids_with_marker(self.cluster_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for _, process, _ in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self._processes.clear()

    def remove_temp_dir(self) -> None:
        """Delete the /tmp folder of the nodes (their logs too); call after stop()."""
        if self.temp_root is not None:
            shutil.rmtree(self.temp_root, ignore_errors=True)
