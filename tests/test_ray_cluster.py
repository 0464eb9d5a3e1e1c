"""The local Ray cluster the Ray tests run on: it starts with token auth, runs a job, refuses clients without the token."""

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest


def wait_for_job(client, submission_id: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        status = client.get_job_status(submission_id)
        if status.is_terminal() or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_cluster_has_two_alive_nodes(ray_cluster):
    nodes = ray_cluster.nodes()
    assert len(nodes) == 2 and all(node["Alive"] for node in nodes), nodes
    assert sum(node["Resources"].get("CPU", 0) for node in nodes) >= 2, nodes


def test_job_runs_and_its_logs_come_back(ray_cluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_cluster.address, headers=ray_cluster.auth_headers)
    submission_id = f"hello-{uuid.uuid4().hex[:8]}"
    returned = client.submit_job(
        entrypoint="python -c \"import os; print('hello from', os.environ['GREETING'])\"",
        submission_id=submission_id,
        runtime_env={"env_vars": {"GREETING": "a ray job"}},
    )
    assert returned == submission_id

    status = wait_for_job(client, submission_id)
    logs = client.get_job_logs(submission_id)
    assert status == JobStatus.SUCCEEDED, f"{status}: {client.get_job_info(submission_id).message}\n{logs}"
    assert "hello from a ray job" in logs
    assert submission_id in [job.submission_id for job in client.list_jobs()]


# A client runs in a subprocess of its own: Ray reads RAY_AUTH_MODE / RAY_AUTH_TOKEN once per process.
CLIENT = """
import sys
from ray.job_submission import JobSubmissionClient
try:
    JobSubmissionClient(sys.argv[1]).list_jobs()
except Exception as error:
    print(f"{type(error).__module__}.{type(error).__name__}: {error}")
else:
    print("connected")
"""


def run_client(address: str, env: dict, tmp_path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, address],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    return result.stdout.strip() + result.stderr[-2000:]


def bare_env(tmp_path: Path) -> dict:
    """No Ray variables, and a HOME without ~/.ray/auth_token."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(home)}


def test_client_with_the_token_in_its_environment_connects(ray_cluster, tmp_path):
    output = run_client(ray_cluster.address, {**bare_env(tmp_path), **ray_cluster.auth_env}, tmp_path)
    assert output.startswith("connected"), output


def test_client_without_the_token_is_refused(ray_cluster, tmp_path):
    output = run_client(ray_cluster.address, bare_env(tmp_path), tmp_path)
    assert output.startswith(
        "ray.exceptions.AuthenticationError: Authentication required: Unauthorized: Missing authentication token"
    ), output


def test_client_with_a_wrong_token_is_refused(ray_cluster, tmp_path):
    env = {**bare_env(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}
    output = run_client(ray_cluster.address, env, tmp_path)
    assert output.startswith(
        "ray.exceptions.AuthenticationError: Authentication failed: Forbidden: Invalid authentication token"
    ), output


def test_wrong_token_in_headers_is_refused_in_process(ray_cluster):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    with pytest.raises(AuthenticationError, match="Forbidden: Invalid authentication token"):
        JobSubmissionClient(ray_cluster.address, headers={"Authorization": "Bearer not-the-token"})


def test_nothing_listening_is_a_connection_error(tmp_path):
    output = run_client("http://127.0.0.1:1", bare_env(tmp_path), tmp_path)  # nothing listens on port 1
    assert output.startswith("builtins.ConnectionError: Failed to connect to Ray at address: http://127.0.0.1:1."), (
        output
    )
