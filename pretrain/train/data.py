"""What a training job reads of the dataset: its shards verified first, then each rank's loader.

Before training reads a shard, the job checks it against the manifest
(`data_pipeline.shards.verify_shard`): its checksum, its structure and
counts, and that every token id is in the vocabulary. The ranks share the
work, each verifying every world-size-th shard, so each shard is read once
per job start and a job of W ranks spends 1/W of one pass over the dataset
(docs/benchmarks.md); a problem found by any rank stops every rank, with
each damaged file named.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from data_pipeline.errors import DataError
from data_pipeline.loader import BatchLoader
from data_pipeline.shards import verify_shard
from pretrain.config import Config
from pretrain.errors import on_every_rank


def verify_shards_together(data_dir: Path, manifest: dict) -> None:
    """Check every shard against the manifest, each rank a share (a collective call); raise naming the damaged ones."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    problems = []
    for shard in manifest["shards"][rank::world_size]:
        try:
            verify_shard(data_dir, shard, manifest["tokenizer"]["vocab_size"])
        except DataError as err:
            problems.append(str(err))
    everyone = [None] * world_size
    dist.all_gather_object(everyone, problems)
    found = sorted(problem for rank_problems in everyone for problem in rank_problems)
    if found:
        message = f"{data_dir}: the dataset is damaged, so training does not start:\n  " + "\n  ".join(found)
        raise on_every_rank(DataError(message))


def make_loader(config: Config, manifest: dict) -> BatchLoader:
    """This rank's training loader.

    DeepSpeed lays ranks out as a (data-parallel, tensor-parallel) mesh: the
    ranks of one tensor-parallel group are consecutive and read the same batch,
    as do those of one sequence-parallel group (each computes a slice of it).
    """
    train = config.train
    return BatchLoader(
        Path(config.data.output_dir),
        "train",
        train.seq_len,
        train.micro_batch_size,
        config.grad_accum_steps,
        config.dp_rank(dist.get_rank()),
        config.dp_size,
        train.seed,
        mixture=train.mixture,
        manifest=manifest,
        document_ids=train.document_masking,
    )
