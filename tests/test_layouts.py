"""One job, every parallel layout: the same seed, data and global batch give the single process's loss at every
step, whatever splits the work (data-parallel ranks, ZeRO stages, offload, tensor parallelism, accumulation,
recomputation, compilation, DeepSpeed's launcher), and a run saved on one layout continues on another, all
through the real CLI on gloo.
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pretrain.export.exporter import load_checkpoint_model
from pretrain.weights.checkpoint_files import load_torch_file
from pretrain.weights.checkpoint_folder import checkpoint_dir, latest_tag, tag_for
from tests.helpers import (
    LAYOUT_RUN,
    TWO_RANKS_ZERO1,
    pretrain,
    tiny_job_config,
    train_losses,
)

pytestmark = pytest.mark.slow

TP2 = ("launch.nproc_per_node=2", "parallel.zero_stage=1", "parallel.tensor_parallel_size=2")
DP2_TP2 = ("launch.nproc_per_node=4", "parallel.zero_stage=1", "parallel.tensor_parallel_size=2")


def train_layout(job, name: str, *layout: str) -> list[float]:
    return train_losses(job["work"], job["config"], name, *layout)


@pytest.fixture(scope="module")
def layout_losses(job):
    """Ten steps in a layout, saved at steps 5 and 10, each layout trained once for the module's tests."""
    trained = {}

    def losses(*layout: str) -> list[float]:
        if layout not in trained:
            name = "layout-" + "-".join(part.split("=")[1] for part in layout)
            trained[layout] = train_layout(job, name, *layout, "checkpoint.every_steps=5")
        return trained[layout]

    return losses


@pytest.fixture(scope="module")
def single_process_losses(job):
    return train_layout(job, "layout-single", "launch.nproc_per_node=1", "parallel.zero_stage=0")


def test_two_data_parallel_ranks_give_the_single_process_losses(single_process_losses, two_rank_losses):
    assert len(two_rank_losses) == len(single_process_losses) == 10
    assert two_rank_losses == pytest.approx(single_process_losses, rel=1e-5)
    assert two_rank_losses[-1] < two_rank_losses[0]  # they trained, not just agreed at initialization


# Each run checks several things at once: a layout, and where it fits, a loss path or a launcher. A
# difference in any of them breaks the equality of losses at every step, so none is checked less for sharing.
@pytest.mark.parametrize(
    "layout",
    [
        # The single process computes the loss in one chunk (train.loss_chunk_tokens=4096 > 8 x 64 tokens); this
        # layout from the whole logits (ZeRO-3 in uneven chunks of 100 tokens: the continuations below).
        (
            "launch.nproc_per_node=2",
            "parallel.zero_stage=2",
            "parallel.offload_optimizer=true",
            "train.loss_chunk_tokens=0",
        ),
        # 2 accumulation steps of 4 per rank, each block's activations recomputed in backward, started by
        # DeepSpeed's launcher instead of torchrun (and the --nproc shorthand)
        (
            "--nproc=2",
            "launch.launcher=deepspeed",
            "parallel.zero_stage=1",
            "train.micro_batch_size=4",
            "train.activation_checkpointing=true",
        ),
        # 2 data-parallel x 2 tensor-parallel ranks (1 x 2 with ZeRO-3: continued on it, below)
        DP2_TP2,
        # tensor parallelism without ZeRO: our AdamW steps the shards, DeepSpeed clips
        ("launch.nproc_per_node=2", "parallel.zero_stage=0", "parallel.tensor_parallel_size=2"),
    ],
    ids=[
        "zero2-offload-whole-logits",
        "deepspeed-launcher-zero1-micro4-accum2-recompute",
        "dp2-tp2-zero1",
        "tp2-zero0",
    ],
)
def test_parallel_layouts_give_the_single_process_losses(layout_losses, single_process_losses, layout):
    """The same seed, data and global batch: the same loss at every step, whatever the layout (fp32)."""
    losses = layout_losses(*layout)
    assert len(losses) == len(single_process_losses) == 10
    assert losses == pytest.approx(single_process_losses, rel=1e-5)


def test_a_compiled_model_trains_to_the_single_process_losses(job, single_process_losses):
    """train.compile=true: DeepSpeed's engine.compile() (torch.compile with inductor, here on the CPU), the loss
    in chunks included; generation with eval prompts and the final sample run eagerly on the same model."""
    layout = ("launch.nproc_per_node=1", "parallel.zero_stage=0", "train.compile=true", "eval.prompts=[The]")
    # A cache of TorchInductor's own: the kernels are compiled in this run, not read from an earlier one's.
    cache = {"TORCHINDUCTOR_CACHE_DIR": str(job["work"] / "inductor-cache")}
    losses = train_losses(job["work"], job["config"], "compiled", *layout, env=os.environ | cache)
    # Compiled kernels add in another order: equal to fp32 rounding, and not bit for bit (they did run).
    assert losses == pytest.approx(single_process_losses, rel=1e-4)
    assert losses != single_process_losses
    summary = json.loads((job["work"] / "runs" / "compiled" / "summary.json").read_text())
    assert summary["sample"].startswith("Return the")  # sample.prompt (configs/demo.yaml), continued


def test_bf16_autocast_trains_fp32_weights_with_bf16_matrix_products(job, two_rank_losses):
    """train.precision=bf16-autocast: the checkpoint's weights stay fp32, and the losses are the fp32 run's
    to bf16's accuracy, not bit for bit: the Linear layers did run in bf16. Four steps (bf16 products are slow
    on a CPU): the learning rates of the first three updates do not depend on train.max_steps (warm-up, then
    the peak), so the first four losses are the ten-step run's."""
    autocast = ("train.precision=bf16-autocast", "train.max_steps=4")
    losses = train_layout(job, "autocast", *TWO_RANKS_ZERO1, *autocast)
    assert len(losses) == 4
    assert losses == pytest.approx(two_rank_losses[:4], rel=2e-2)
    assert losses != pytest.approx(two_rank_losses[:4], rel=1e-5)
    run_dir = job["work"] / "runs" / "autocast"
    assert json.loads((run_dir / "deepspeed_config.json").read_text())["torch_autocast"]["enabled"]
    states = checkpoint_dir(run_dir) / latest_tag(run_dir) / "mp_rank_00_model_states.pt"
    module = load_torch_file(states)["module"]
    assert {tensor.dtype for tensor in module.values()} == {torch.float32}


def test_tensor_parallel_checkpoints_hold_one_shard_per_tensor_parallel_rank(job):
    """Tensor parallelism really splits the projections: each model shard holds half of every head's matrix."""
    folder = checkpoint_dir(job["work"] / "runs" / "layout-4-1-2") / "step_00000010"
    shards = [load_torch_file(folder / f"mp_rank_0{r}_model_states.pt")["module"] for r in (0, 1)]
    for name, column_parallel in [("self_attn.q_proj", True), ("mlp.up_proj", True), ("self_attn.o_proj", False)]:
        weights = [shard[f"layers.0.{name}.weight"] for shard in shards]
        full_shape = (64, 64) if "attn" in name else (256, 64)
        split = 0 if column_parallel else 1
        assert all(w.shape[split] == full_shape[split] // 2 for w in weights), (name, weights[0].shape)
        assert not torch.equal(weights[0], weights[1])
    assert torch.equal(shards[0]["embed_tokens.weight"], shards[1]["embed_tokens.weight"])  # kept whole


def continue_on(source: Path, run: str, job, *layout: str, same_layout: bool = False) -> list[float]:
    """Run `run` of the folder `source` as it was saved at step 5, continued to step 10 on `layout` (in a copy,
    resharded unless `same_layout`); the losses the continued run logged, steps 6 to 10."""
    work = job["work"] / ("from-" + run + "-on-" + "-".join(part.split("=")[1] for part in layout))
    run_dir = work / "runs" / run
    shutil.copytree(source / "runs" / run, run_dir)
    shutil.copy(source / "mlflow.db", work / "mlflow.db")
    # What the run held after step 5: its checkpoint of step 5, and no finish.
    shutil.rmtree(checkpoint_dir(run_dir) / tag_for(10))
    (checkpoint_dir(run_dir) / "latest").write_text(tag_for(5))
    (run_dir / "summary.json").unlink()
    started = int(time.time() * 1000)
    continued = pretrain(
        "train", *tiny_job_config(work, job["data_dir"]), f"tracking.run_name={run}", *LAYOUT_RUN, *layout, cwd=work
    )
    resharded = f"checkpoint {tag_for(5)} was saved on" in continued.stdout
    assert resharded != same_layout
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    (found,) = client.search_runs([experiment], filter_string=f"attributes.run_name = '{run}'")
    history = [m for m in client.get_metric_history(found.info.run_id, "train/loss") if m.timestamp >= started]
    assert sorted(m.step for m in history) == [6, 7, 8, 9, 10]  # in the same MLflow run, each step once
    return [m.value for m in sorted(history, key=lambda m: m.step)]


# A run saved at step 5 on one layout continues on another to the losses of the run that kept its layout
# (the tolerance of the parity tests above: sums taken in another order). Most runs make two changes at once,
# either of which breaks the equality if it fails.
@pytest.mark.parametrize(
    "layout",
    [
        ("launch.nproc_per_node=4", "parallel.zero_stage=1", "train.micro_batch_size=4"),
        # DP2 -> DP1 x TP2 and ZeRO 1 -> 3, the loss in uneven chunks of 100 tokens under ZeRO-3's gathered head
        (*TP2[:1], "parallel.zero_stage=3", *TP2[2:], "train.loss_chunk_tokens=100"),
    ],
    ids=["dp2-to-dp4", "tp1-zero1-to-tp2-zero3"],
)
def test_a_run_saved_on_two_data_parallel_ranks_continues_on_another_layout(job, two_rank_run, layout):
    continued = continue_on(Path(two_rank_run["work"]), "layout-2-1", job, *layout)
    assert continued == pytest.approx(two_rank_run["losses"][5:], rel=1e-5)


def test_a_data_and_tensor_parallel_run_continues_on_one_process(job, layout_losses):
    """DP2 x TP2 -> one process: AutoTP's halves of each projection are joined and the ZeRO-1 slices of
    Adam's moments gathered."""
    losses = layout_losses(*DP2_TP2)
    continued = continue_on(job["work"], "layout-4-1-2", job, "launch.nproc_per_node=1", "parallel.zero_stage=1")
    assert continued == pytest.approx(losses[5:], rel=1e-5)


def test_float8_trains_to_the_fp32_losses_within_its_accuracy_and_continues_exactly(
    job, layout_losses, single_process_losses
):
    """train.float8 (torchao's float8, emulated on the CPU) on every Linear of the blocks: the single process's
    losses to float8's accuracy, not bit for bit (the products did run in float8); the checkpoint holds the
    ordinary fp32 weights, continued from step 5 to the same losses, and exported as a plain model."""
    float8 = (
        "launch.nproc_per_node=1",
        "parallel.zero_stage=0",
        "train.float8.enabled=true",
        "train.float8.layers=all",
    )
    losses = layout_losses(*float8)
    assert losses == pytest.approx(single_process_losses, rel=2e-2)
    assert losses != pytest.approx(single_process_losses, rel=1e-5)
    assert continue_on(job["work"], "layout-1-0-true-all", job, *float8, same_layout=True) == losses[5:]
    run_dir = job["work"] / "runs" / "layout-1-0-true-all"
    model, found = load_checkpoint_model(run_dir)
    module = load_torch_file(found.folder / "mp_rank_00_model_states.pt")["module"]
    assert set(module) == set(model.state_dict()) and {tensor.dtype for tensor in module.values()} == {torch.float32}


# Ulysses sequence parallelism (pretrain/train/sequence_parallel.py) with RoPE, four heads (one per rank at
# sequence-parallel 4) and document masking: positions restart and attention stops where a document starts,
# inside a rank's slice or in another's.
LONG = ("model.pos_encoding=rope", "model.n_head=4", "train.document_masking=true")
SP2_DP2 = ("launch.nproc_per_node=4", "parallel.sequence_parallel_size=2", "parallel.zero_stage=3")


@pytest.fixture(scope="module")
def single_process_rope_losses(job):
    return train_layout(job, "layout-single-rope", "launch.nproc_per_node=1", "parallel.zero_stage=0", *LONG)


@pytest.mark.parametrize(
    "layout",
    [
        # 2 data-parallel x 2 sequence-parallel ranks, ZeRO-3 sharding over all 4
        SP2_DP2,
        # each sequence in 4 slices of 16 tokens, ZeRO-1, 2 accumulation steps of 8 sequences
        ("launch.nproc_per_node=4", "parallel.sequence_parallel_size=4", "parallel.zero_stage=1"),
    ],
    ids=["dp2-sp2-zero3", "sp4-zero1-accum2"],
)
def test_sequence_parallel_ranks_give_the_single_process_losses(layout_losses, single_process_rope_losses, layout):
    losses = layout_losses(*layout, *LONG)
    assert len(losses) == len(single_process_rope_losses) == 10
    assert losses == pytest.approx(single_process_rope_losses, rel=1e-5)
    assert losses[-1] < losses[0]


def test_a_sequence_parallel_run_continues_with_whole_sequences(job, layout_losses):
    """Saved at step 5 with sequence-parallel 2, continued with 1 (4 data-parallel ranks, the same ZeRO-3
    shards): the losses of the run that kept its split."""
    losses = layout_losses(*SP2_DP2, *LONG)
    whole = ("launch.nproc_per_node=4", "parallel.zero_stage=3", "train.micro_batch_size=4", *LONG)
    continued = continue_on(job["work"], "layout-4-2-3-rope-4-true", job, *whole, same_layout=True)
    assert continued == pytest.approx(losses[5:], rel=1e-5)
