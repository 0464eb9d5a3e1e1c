"""A real one-node Slurm cluster on 127.0.0.1 for tests: its own munged, slurmctld and slurmd, all under one folder.

    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wait", "job.sh"], env=cluster.env, check=True)

Everything it makes (slurm.conf, the munge key and socket, state and spool folders, pid and log files) lies
under `workdir`, and the daemons listen on free ports, so it clashes neither with a system Slurm/munge nor
with another test run. It needs Debian's slurm-wlm and munge (`make slurm`) and root: slurmd has to be root
to start jobs. `SlurmCluster.unavailable_reason()` says why a machine can't run it, for `pytest.skip`.

The settings suit a container without systemd or cgroups: proctrack/linuxproc, task/none, no accounting
database. Finished jobs stay visible to `scontrol show job` for an hour (MinJobAge), and a job requeued with
`scontrol requeue` is eligible again after about 6 s (AuthInfo cred_expire=5; Slurm's default is 120 s) and is
picked up by a scheduler that runs every second.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from tests.helpers import free_port

CLIENTS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")
DAEMONS = ("slurmctld", "slurmd", "munged")
INSTALL_HINT = "run `make slurm` (apt-get install slurm-wlm munge)"
PARTITION = "debug"
# A Unix socket path must fit in 108 bytes; slurmd puts `<node>_<job>.<step>` sockets in its spool folder.
MAX_SOCKET_DIR = 70
# Marks every process this cluster starts (and, through the daemons, every slurmstepd), so stop() finds strays.
MARKER = "PRETRAIN_TEST_SLURM_CLUSTER"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"  ({exc})"
    return "\n".join("  " + line for line in text[-lines:]) or "  (empty)"


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class SlurmCluster:
    """One node (named after `hostname -s`, at 127.0.0.1) in one default partition, `debug`."""

    def __init__(self, workdir: Path, gpus: int = 0, start_timeout: float = 60.0):
        """`gpus` > 0 gives the node that many fake GPUs (gres/gpu whose device files are links to /dev/null),
        so jobs may ask for --gpus-per-node up to it and get CUDA_VISIBLE_DEVICES set, with no real GPU."""
        self.workdir = Path(workdir).resolve()
        self.gpus = gpus
        self.start_timeout = start_timeout
        self.node = socket.gethostname().split(".")[0] or "localhost"
        self.partition = PARTITION
        self.hardware = _hardware()
        self.cpus = int(self.hardware.get("CPUs") or os.cpu_count() or 1)
        # A bit below the real memory, so slurmd never finds less than configured and drains the node.
        self.real_memory_mb = max(1, int(int(self.hardware.get("RealMemory") or _memory_mb()) * 0.9))
        self.conf = self.workdir / "slurm.conf"
        self.log_dir = self.workdir / "log"
        self._procs: dict[str, subprocess.Popen] = {}
        self._short_dir: Path | None = None
        self.ctld_port = self.slurmd_port = 0
        self.munge_socket = self.workdir / "munge" / "munge.socket"
        self.start_seconds: float | None = None  # how long the last start() took

    # ---- availability ----------------------------------------------------------------------------------

    @staticmethod
    def unavailable_reason() -> str | None:
        """None when this machine can run the cluster, otherwise why not (for pytest.skip)."""
        if not sys.platform.startswith("linux"):
            return f"a local Slurm cluster needs Linux, not {sys.platform}"
        missing = [name for name in CLIENTS + DAEMONS if shutil.which(name, path=_search_path()) is None]
        if missing:
            return f"Slurm is not installed here (no {', '.join(missing)}): {INSTALL_HINT}"
        if os.geteuid() != 0:
            return "a local Slurm cluster needs root (slurmd must be root to start jobs)"
        return None

    # ---- environment for clients --------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus what sbatch/squeue/scancel/scontrol/sinfo need to talk to this cluster."""
        env = dict(os.environ)
        env["PATH"] = _search_path()
        env["SLURM_CONF"] = str(self.conf)
        # Site or user settings must not leak into the tests' jobs.
        for key in list(env):
            if key.startswith(("SBATCH_", "SALLOC_", "SQUEUE_", "SINFO_", "SCONTROL_")) or (
                key.startswith("SLURM_") and key != "SLURM_CONF"
            ):
                del env[key]
        return env

    # ---- start / stop -----------------------------------------------------------------------------

    def start(self) -> Self:
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        if self._procs:
            raise RuntimeError("this SlurmCluster is already started")
        began = time.monotonic()
        # Even a test run that dies on an exception leaves no daemons (one killed outright: see _start).
        atexit.register(self.stop)
        self._lay_out()
        try:
            self._start_munged()
            self._start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._wait_for(self._ctld_answers, "slurmctld to answer `scontrol ping`")
            self._start("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
            self._wait_for(self._node_idle, f"node {self.node} to be idle in `sinfo`")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Cancel what is left of the jobs, then end every process this cluster started, and wait for them."""
        if not self._procs:
            return
        ctld = self._procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            self._run(["scancel", "--full", "--signal=KILL", f"--partition={self.partition}"], timeout=10)
            self._run(["scancel", f"--partition={self.partition}"], timeout=10)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                out = self._run(["squeue", "-h", "-o", "%i", "--states=PENDING,RUNNING,COMPLETING"], timeout=10)
                if out is not None and out.returncode == 0 and not out.stdout.strip():
                    break
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
        self._kill_strays()
        for proc in self._procs.values():
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- helpers --------------------------------------------------------------------------------------

    def log_tails(self, lines: int = 25) -> str:
        parts = []
        for name in DAEMONS:
            path = self.log_dir / f"{name}.log"
            if not path.exists():  # munged in the foreground logs to stderr only
                path = self.log_dir / f"{name}.out"
            proc = self._procs.get(name)
            state = (
                "not started" if proc is None else ("running" if proc.poll() is None else f"exited {proc.returncode}")
            )
            parts.append(f"--- {path} ({state}):\n{_tail(path, lines)}")
        return "\n".join(parts)

    def _lay_out(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # munged insists its folders are not writable by others.
        os.chmod(self.workdir, 0o755)
        sockets = self.workdir
        if len(str(sockets)) > MAX_SOCKET_DIR:
            self._short_dir = Path(tempfile.mkdtemp(prefix="slurm-"))
            os.chmod(self._short_dir, 0o755)
            sockets = self._short_dir
        state, spool = self.workdir / "state", sockets / "spool"
        munge = sockets / "munge"
        # Each start is a fresh cluster: no jobs or node state from an earlier one in the same folder.
        for old in (state, spool):
            shutil.rmtree(old, ignore_errors=True)
        for d in (state, spool, self.log_dir, munge, self.workdir / "munge"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(munge, 0o755)
        self.munge_socket = munge / "munge.socket"
        self.munge_key = self.workdir / "munge" / "munge.key"
        self.munge_key.write_bytes(secrets.token_bytes(1024))
        os.chmod(self.munge_key, 0o600)
        self.ctld_port, self.slurmd_port = free_port(), free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = free_port()
        w = self.workdir
        topology = " ".join(
            f"{key}={self.hardware[key]}"
            for key in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
            if key in self.hardware
        )
        if "CPUs=" not in topology:
            topology = f"CPUs={self.cpus}"
        gres_conf = w / "gres.conf"
        if self.gpus > 0:
            # Slurm drops GPUs without device files and wants character devices: /dev/null stands in for each.
            dev = w / "dev"
            dev.mkdir(exist_ok=True)
            for i in range(self.gpus):
                fake = dev / f"nvidia{i}"
                if fake.is_symlink() or fake.exists():
                    fake.unlink()
                fake.symlink_to("/dev/null")
            files = f"{dev}/nvidia0" if self.gpus == 1 else f"{dev}/nvidia[0-{self.gpus - 1}]"
            topology += f" Gres=gpu:{self.gpus}"
            gres_conf.write_text(f"NodeName={self.node} Name=gpu File={files}\n")
        elif gres_conf.exists():
            gres_conf.unlink()
        self.conf.write_text(
            f"""# Written by tests/slurm_cluster.py for a one-node test cluster; every path lies under {w}.
ClusterName=pretraintest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s; minimum 5).
AuthInfo=socket={self.munge_socket},cred_expire=5
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={w}/slurmctld.pid
SlurmdPidFile={w}/slurmd.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
{"GresTypes=gpu" if self.gpus > 0 else ""}
PlugStackConfig={w}/plugstack.conf
# No systemd or cgroups in a container: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobContainerType=job_container/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
# Finished jobs stay visible to `scontrol show job` for an hour.
MinJobAge=3600
JobRequeue=1
# Reject at submission what the partition can never run (too many nodes/CPUs), as most sites do.
EnforcePartLimits=ALL
ReturnToService=2
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={self.node} {topology} RealMemory={self.real_memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (w / "plugstack.conf").write_text("")

    def _daemon_env(self) -> dict[str, str]:
        env = self.env
        env[MARKER] = str(self.workdir)
        return env

    def _start(self, name: str, argv: list[str]) -> None:
        setpriv = shutil.which("setpriv", path=_search_path())
        if setpriv:
            # SIGTERM to the daemon when the process that started it dies, even if killed outright.
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        with open(self.log_dir / f"{name}.out", "ab") as log:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._daemon_env(),
                cwd=self.workdir,
                start_new_session=True,
            )

    def _start_munged(self) -> None:
        self._start(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={self.munge_key}",
                f"--pid-file={self.workdir / 'munge' / 'munged.pid'}",
                f"--seed-file={self.workdir / 'munge' / 'munged.seed'}",
                f"--log-file={self.log_dir / 'munged.log'}",
            ],
        )
        self._wait_for(lambda: self.munge_socket.exists(), f"munged to create {self.munge_socket}")

    def _run(self, argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(argv, check=False, env=self.env, capture_output=True, text=True, timeout=timeout)
        except (subprocess.TimeoutExpired, OSError):
            return None

    def _ctld_answers(self) -> bool:
        out = self._run(["scontrol", "ping"], timeout=10)
        return out is not None and out.returncode == 0 and "UP" in out.stdout

    def _node_idle(self) -> bool:
        out = self._run(["sinfo", "-h", "-n", self.node, "-o", "%T"], timeout=10)
        return out is not None and out.returncode == 0 and out.stdout.strip() == "idle"

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode} while waiting for {what}\n{self.log_tails()}"
                        f"\n--- {name} stdout/stderr:\n{_tail(self.log_dir / f'{name}.out')}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                sinfo = self._run(["sinfo", "-N", "-l"], timeout=10)
                shown = "" if sinfo is None else sinfo.stdout + sinfo.stderr
                raise RuntimeError(
                    f"timed out after {self.start_timeout:.0f} s waiting for {what}\n"
                    f"sinfo -N -l:\n{shown}\n{self.log_tails()}"
                )
            time.sleep(0.2)

    def _kill_strays(self) -> None:
        """Kill slurmstepd and job processes left behind: those with our marker, or jobs with our SLURM_CONF."""
        marker, conf = f"{MARKER}={self.workdir}".encode(), f"SLURM_CONF={self.conf}".encode()
        me = os.getpid()
        for _ in range(3):
            found = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) == me:
                    continue
                try:
                    environ = (entry / "environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if marker in environ or (conf in environ and any(e.startswith(b"SLURM_JOB_ID=") for e in environ)):
                    found.append(int(entry.name))
            if not found:
                return
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.3)


def _hardware() -> dict[str, str]:
    """What `slurmd -C` finds (CPUs, Boards, SocketsPerBoard, CoresPerSocket, ThreadsPerCore, RealMemory)."""
    slurmd = shutil.which("slurmd", path=_search_path())
    if slurmd is None:
        return {}
    try:
        out = subprocess.run([slurmd, "-C"], check=False, capture_output=True, text=True, timeout=30).stdout
    except (subprocess.TimeoutExpired, OSError):
        return {}
    first = out.splitlines()[0] if out else ""
    return dict(field.split("=", 1) for field in first.split() if "=" in field)


def _search_path() -> str:
    """PATH with the sbin folders, where Debian puts slurmctld, slurmd and munged."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin"):
        if extra not in parts:
            parts.append(extra)
    return os.pathsep.join(p for p in parts if p)
