"""The local Slurm cluster the Slurm tests run on: it starts, runs a batch job with an srun step, and stops."""

import subprocess
from pathlib import Path


def test_batch_job_runs_an_srun_step(slurm_cluster, tmp_path: Path):
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --job-name=hello\n"
        "#SBATCH --nodes=1\n"
        "#SBATCH --ntasks-per-node=1\n"
        f"#SBATCH --output={tmp_path}/out-%j.txt\n"
        "srun --ntasks-per-node=1 bash -c 'echo \"nodes=$SLURM_JOB_NODELIST node_id=$SLURM_NODEID\"'\n"
    )
    result = subprocess.run(
        ["sbatch", "--parsable", "--wait", str(script)],
        check=False,
        env=slurm_cluster.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr + slurm_cluster.log_tails()
    job_id = result.stdout.strip().split(";")[0]
    assert job_id.isdigit(), result.stdout
    output = (tmp_path / f"out-{job_id}.txt").read_text()
    assert output == f"nodes={slurm_cluster.node} node_id=0\n"

    shown = subprocess.run(
        ["scontrol", "show", "job", job_id],
        check=False,
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "JobState=COMPLETED" in shown.stdout and "ExitCode=0:0" in shown.stdout, shown.stdout
