"""Ray jobs: submitted to a Ray cluster through its Jobs API, followed and stopped there.

The job's working directory is this project, uploaded by Ray (it leaves out
what .gitignore does, and launch.ray.excludes); its entrypoint is a `pretrain`
command. Ray's own job state, logs and stop are used as they are.

A cluster started with token authentication (RAY_AUTH_MODE=token, the default
from Ray 2.59 for local clusters) needs its token here: it is read from
RAY_AUTH_TOKEN or the file RAY_AUTH_TOKEN_PATH names and sent with every request.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from launch.config import LaunchConfig
from launch.errors import LaunchError
from launch.jobs import JOB_ID_VARIABLE, JobRecord, JobState, tail_lines
from launch.targets import JobSpec

TOKEN_HINT = (
    "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, a file holding it) to the cluster's token; "
    "`ray get-auth-token` on the head node prints it"
)


def resolve_address(address: str | None) -> str:
    """The Jobs API address: launch.ray.address, else RAY_ADDRESS; the dashboard's http:// address."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise LaunchError(
            "no Ray cluster given: set launch.ray.address=http://HEAD:8265 (the Jobs API of the cluster's "
            "head node) or the RAY_ADDRESS environment variable"
        )
    if not address.startswith(("http://", "https://")):
        # Without a scheme, Ray takes it for the GCS address and waits 35 s before failing.
        raise LaunchError(
            f"Ray address {address!r}: jobs are submitted to the dashboard's Jobs API, http://HEAD:8265, "
            f"not to the GCS address (HEAD:6379); give launch.ray.address=http://HEAD:8265"
        )
    return address


def job_environment(env_vars: dict[str, str], pass_env: list[str], env_file: str | None, environ) -> dict[str, str]:
    """The variables a Ray job gets: env_vars, then env_file's lines, then pass_env's from this environment.

    Secrets travel this way, from the submitting shell or a file, into the
    job's runtime environment only: never into a file the project writes.
    """
    variables = dict(env_vars)
    if env_file:
        variables |= read_env_file(Path(env_file))
    for name in pass_env:
        if name not in environ:
            raise LaunchError(
                f"launch.ray.pass_env: {name} is not set in this shell; export it before submitting, or remove it"
            )
        variables[name] = environ[name]
    return variables


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments are skipped, `export ` and quotes around a value allowed."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise LaunchError(f"launch.ray.env_file: {path} cannot be read ({err.strerror})") from None
    variables = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not name.strip().isidentifier():
            raise LaunchError(f"{path}, line {number}: not a KEY=VALUE line; write it as NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        variables[name.strip()] = value
    return variables


def token_headers() -> dict[str, str]:
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and token_path:
        try:
            token = Path(token_path).read_text().strip()
        except OSError as err:
            raise LaunchError(f"RAY_AUTH_TOKEN_PATH={token_path}: cannot be read ({err.strerror})") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str):
    """A Jobs API client; what goes wrong on connecting is said in the user's terms."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=token_headers())
    except ConnectionError:
        raise LaunchError(
            f"no Ray cluster answers at {address}: start one (`ray start --head --dashboard-host=0.0.0.0`) "
            f"or fix launch.ray.address"
        ) from None
    except AuthenticationError as err:
        if "invalid" in str(err).lower():
            raise LaunchError(f"the Ray cluster at {address} refused the token given: {TOKEN_HINT}") from None
        raise LaunchError(f"the Ray cluster at {address} needs a token (token authentication): {TOKEN_HINT}") from None


def check(launch: LaunchConfig) -> None:
    """A cluster to send the job to: launch.ray.address or RAY_ADDRESS."""
    resolve_address(launch.ray.address)


def submit(job: JobSpec, dry_run: bool) -> JobRecord | dict:
    """A Ray job: the project as its working directory, `python -m ...` as its entrypoint.

    Training runs as a Ray Train TorchTrainer (job.ray_train_module); a data build is Ray Data on the cluster.
    A dry run returns what would be submitted, environment variables included: the caller redacts it.
    """
    settings = job.launch.ray
    address = resolve_address(settings.address)
    variables = job_environment(settings.env_vars, settings.pass_env, settings.env_file, os.environ)
    job_id = f"pretrain-{job.name}"
    module_args = [job.ray_train_module, *job.args[1:]] if job.train else [job.module, *job.args]
    entrypoint = shlex.join(["python", "-m", *module_args])
    runtime_env = {
        "working_dir": str(job.project_root),
        "excludes": settings.excludes,
        # Ray Train would copy every line a worker prints to stderr too: the job's log would hold each twice.
        "env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"} | variables | {JOB_ID_VARIABLE: f"ray:{job_id}"},
    }
    if dry_run:
        return {"address": address, "submission_id": job_id, "entrypoint": entrypoint, "runtime_env": runtime_env}
    submit_entrypoint(address, entrypoint, job_id, runtime_env)
    return job.record("ray", job_id, details={"address": address})


def submit_entrypoint(address: str, entrypoint: str, submission_id: str, runtime_env: dict) -> str:
    jobs = client(address)
    try:
        return jobs.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env)
    except (RuntimeError, ValueError) as err:
        raise LaunchError(f"the Ray cluster at {address} did not take the job: {err}") from None


def _ask(record: JobRecord, method: str):
    address = record.details["address"]
    try:
        return getattr(client(address), method)(record.job_id)
    except RuntimeError as err:
        if "does not exist" in str(err):
            raise LaunchError(f"the Ray cluster at {address} does not know job {record.job_id}") from None
        raise LaunchError(f"the Ray cluster at {address} answered: {err}") from None


def state(record: JobRecord) -> JobState:
    info = _ask(record, "get_job_info")
    detail = info.message.splitlines()[0] if info.message else ""
    return JobState(info.status.value, detail)


def logs(record: JobRecord, tail: int | None) -> str:
    return tail_lines(_ask(record, "get_job_logs"), tail)


def cancel(record: JobRecord) -> str:
    if not _ask(record, "stop_job"):
        return f"Ray job {record.job_id} had already ended ({state(record)})"
    return f"stopping Ray job {record.job_id}: Ray sends SIGTERM to its processes, and SIGKILL 3 s later"
