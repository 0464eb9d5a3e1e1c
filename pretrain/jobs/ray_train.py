"""Training on a Ray cluster: `python -m pretrain.jobs.ray_train --config RESOLVED.yaml [--resume]`.

`pretrain submit --target ray` makes this the entrypoint of a Ray job. It
checks the job as `pretrain train` does, then runs a Ray Train `TorchTrainer`
with one worker per rank (`launch.nnodes x launch.nproc_per_node`). Ray Train
sets up the process group and each worker runs the ordinary training loop:
the same DeepSpeed engine, checkpoints and MLflow run as under torchrun. The
data folder and `checkpoint.root` must be on storage every node sees.
"""

from __future__ import annotations

import argparse
import os
import sys

from pretrain.config import load_config


def train_worker(loop_config: dict) -> None:
    # Any torch.load in a rank, DeepSpeed's own included, rebuilds data only (pretrain/weights/checkpoint_files.py).
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    from pretrain.train.loop import train

    train(load_config(loop_config["config"]), require_checkpoint=loop_config["resume"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.jobs.ray_train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the resolved config `pretrain submit` wrote")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pretrain.train.preflight import check_job

    config = load_config(args.config)
    check_job(config, args.resume)
    ray_settings = config.launch.ray
    use_gpu = ray_settings.gpus_per_worker > 0
    resources = {"CPU": ray_settings.cpus_per_worker} | ({"GPU": ray_settings.gpus_per_worker} if use_gpu else {})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": args.config, "resume": args.resume},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.world_size, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=config.tracking.run_name,
            storage_path=str(config.run_dir.resolve() / "ray"),
            # A failed worker: every worker is started again, each continuing from the last complete checkpoint.
            failure_config=FailureConfig(max_failures=config.launch.max_restarts),
        ),
    )
    trainer.fit()
    print(f"training finished; run folder {config.run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
