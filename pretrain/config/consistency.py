"""Checks across a config's sections: values that are each valid but do not fit together.

Run by `load_config` after the schema has validated each value
(pretrain/config/loading.py), so every problem is reported at once, before
any process starts.
"""

from __future__ import annotations

from pretrain.config.schema import Config


def consistency_problems(config: Config) -> list[str]:
    """Values that are each valid but do not fit together."""
    problems = []
    train, tp = config.train, config.parallel.tensor_parallel_size
    if config.world_size % tp:
        problems.append(
            f"parallel.tensor_parallel_size = {tp}: must divide the world size "
            f"(launch.nnodes x launch.nproc_per_node = {config.world_size})"
        )
    elif tp > 1:
        problems += tensor_parallel_problems(config)
    elif config.world_size % config.parallel.sequence_parallel_size == 0 and train.global_batch_size % (
        train.micro_batch_size * config.dp_size
    ):
        problems.append(
            f"train.global_batch_size = {train.global_batch_size}: must be a multiple of "
            f"train.micro_batch_size ({train.micro_batch_size}) x data-parallel size ({config.dp_size})"
        )
    if config.parallel.sequence_parallel_size > 1:
        problems += sequence_parallel_problems(config)
    if train.float8.enabled and (tp > 1 or train.precision == "fp16"):
        problems.append(
            "train.float8.enabled = true: trains with train.precision fp32, bf16 or bf16-autocast and no tensor "
            "parallelism (AutoTP replaces the Linear layers that float8 converts); set parallel.tensor_parallel_size=1 "
            "and another precision, or train.float8.enabled=false"
        )
    if config.parallel.offload_optimizer and config.parallel.zero_stage == 0:
        problems.append("parallel.offload_optimizer = true: needs parallel.zero_stage 1, 2 or 3")
    if train.seq_len > config.model.max_seq_len:
        problems.append(
            f"train.seq_len = {train.seq_len}: must not exceed model.max_seq_len ({config.model.max_seq_len})"
        )
    every, export_every = config.checkpoint.every_steps, config.export.every
    if export_every and (not every or export_every % every):
        problems.append(
            f"export.every = {export_every}: must be a multiple of checkpoint.every_steps ({every}), "
            f"since each export is made from a checkpoint"
        )
    lr, schedule = config.optimizer.lr, config.lr_schedule
    if schedule.min_lr > lr:
        problems.append(f"lr_schedule.min_lr = {schedule.min_lr}: must not exceed optimizer.lr ({lr})")
    if schedule.warmup_steps > train.max_steps:
        problems.append(
            f"lr_schedule.warmup_steps = {schedule.warmup_steps}: must not exceed train.max_steps ({train.max_steps})"
        )
    if config.data.tokenizer.path is None and config.model.vocab_size < config.data.tokenizer.vocab_size:
        problems.append(
            f"model.vocab_size = {config.model.vocab_size}: must be at least "
            f"data.tokenizer.vocab_size ({config.data.tokenizer.vocab_size})"
        )
    return problems


def tensor_parallel_problems(config: Config) -> list[str]:
    """AutoTP splits heads and hidden units evenly across the tensor-parallel ranks.

    With DeepSpeed 0.19.8, AutoTP training combines with ZeRO stages 0, 1, 2
    and 3 (each tested against a single process in tests/test_end_to_end.py);
    optimizer offload with tensor parallelism is not tested there, so it is refused.
    """
    tp, model, problems = config.parallel.tensor_parallel_size, config.model, []
    for name, count in [
        ("model.n_head", model.n_head),
        ("model.n_kv_heads", model.kv_heads),
        ("the FFN width", model.ffn_hidden),
    ]:
        if count % tp:
            problems.append(f"parallel.tensor_parallel_size = {tp}: must divide {name} ({count})")
    if config.parallel.offload_optimizer:
        problems.append(
            "parallel.offload_optimizer = true: not supported with tensor parallelism; "
            "set parallel.tensor_parallel_size=1 or parallel.offload_optimizer=false"
        )
    return problems


def sequence_parallel_problems(config: Config) -> list[str]:
    """Ulysses splits each sequence into equal slices and, around attention, the heads into equal groups
    (pretrain/train/sequence_parallel.py)."""
    sp, model, problems = config.parallel.sequence_parallel_size, config.model, []
    if config.world_size % sp:
        problems.append(
            f"parallel.sequence_parallel_size = {sp}: must divide the world size "
            f"(launch.nnodes x launch.nproc_per_node = {config.world_size})"
        )
    if config.parallel.tensor_parallel_size > 1:
        problems.append(
            f"parallel.sequence_parallel_size = {sp}: does not combine with tensor parallelism (AutoTP's shards "
            "hold fewer heads than the all-to-all splits); set parallel.tensor_parallel_size=1"
        )
    for name, count in [
        ("train.seq_len", config.train.seq_len),
        ("model.n_head", model.n_head),
        ("model.n_kv_heads", model.kv_heads),
    ]:
        if count % sp:
            problems.append(f"parallel.sequence_parallel_size = {sp}: must divide {name} ({count})")
    if model.rope_scaling is not None and model.rope_scaling.type == "dynamic":
        problems.append(
            f"parallel.sequence_parallel_size = {sp}: dynamic RoPE scaling scales by the furthest position a forward "
            "pass sees, which differs between the slices; use model.rope_scaling.type linear, llama3 or yarn"
        )
    return problems
