"""A checkpoint continued on another parallel layout, through DeepSpeed's universal checkpoint.

ZeRO shards a checkpoint for the layout that saved it: each data-parallel
rank's file holds a flat slice of the fp32 weights and of Adam's moments, and
each tensor-parallel rank's file its split of the projections. DeepSpeed's
`ds_to_universal` gathers them into one file per parameter and state, whole;
an engine loading with `checkpoint.load_universal` takes its own share of
each, whatever its number of ranks, ZeRO stage or tensor-parallel degree. The
values are copied, not recomputed, so the continued run is the uninterrupted
one to the rounding of sums taken in another order (tests/test_layouts.py).

Which changes of layout can continue is decided, without torch, in
pretrain/weights/layout_change.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.errors import CheckpointError
from pretrain.weights.checkpoint_files import weights_only_loads

MODEL_STATES = re.compile(r"^(?:zero_pp_rank_0_)?mp_rank_(\d+)_model_states\.pt$")
UNIVERSAL_PREFIX = ".universal-"  # beside the checkpoint it was converted from; removed once loaded


def universal_folder(folder: Path) -> Path:
    return folder.with_name(UNIVERSAL_PREFIX + folder.name)


def convert(folder: Path) -> Path:
    """Write the universal form of a verified checkpoint beside it (rank 0, once), atomically; return its folder.

    What a conversion killed midway left is removed first; the result is
    renamed into place only once whole.
    """
    target = universal_folder(folder)
    partial = target.with_name(target.name + ".partial")
    for leftover in (target, partial):
        shutil.rmtree(leftover, ignore_errors=True)
    # DeepSpeed's converter reports each of its passes, kept to be shown only should
    # it fail; and it would unpickle the shards without restriction: made weights_only here.
    report = io.StringIO()
    with contextlib.redirect_stdout(report), contextlib.redirect_stderr(report), weights_only_loads():
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        try:
            ds_to_universal(
                argparse.Namespace(
                    input_folder=str(folder),
                    output_folder=str(partial),
                    # In this process: the shards of a checkpoint a job can load fit in one host's memory.
                    num_extract_workers=1,
                    num_merge_workers=1,
                    keep_temp_folder=False,
                    strict=True,
                    # DeepSpeed records how tensor parallelism split each parameter (AutoTP does);
                    # without it, every parameter is whole on each rank, which is what this says.
                    inject_missing_state=True,
                )
            )
        except Exception as err:  # DeepSpeed's converter asserts and raises what it meets: named with the folder
            raise CheckpointError(
                f"{folder}: could not be converted for another layout ({type(err).__name__}: {err}); DeepSpeed "
                f"reported:\n{report.getvalue()[-3000:]}"
            ) from err
        give_optimizer_state_the_stage_3_form(partial)
    # The converter points a `latest_universal` beside its output; loads here name the folder instead.
    (partial.parent / "latest_universal").unlink(missing_ok=True)
    name_model_states_for_every_stage(partial)
    partial.rename(target)
    return target


def name_model_states_for_every_stage(folder: Path) -> None:
    """Give each tensor-parallel rank's model states both names DeepSpeed looks for.

    A universal load reads from these files only what is not weights (the
    client state, the step), but finds them by the name its ZeRO stage saves:
    `mp_rank_NN_model_states.pt` for stages 1-2, `zero_pp_rank_0_mp_rank_NN_...`
    for stage 3. Linked, not copied.
    """
    for path in folder.glob("*mp_rank_*_model_states.pt"):
        rank = MODEL_STATES.search(path.name)
        if rank is None:
            continue
        for name in (
            f"mp_rank_{rank.group(1)}_model_states.pt",
            f"zero_pp_rank_0_mp_rank_{rank.group(1)}_model_states.pt",
        ):
            if not (folder / name).exists():
                (folder / name).hardlink_to(path)


def give_optimizer_state_the_stage_3_form(folder: Path) -> None:
    """Let ZeRO-3 load the optimizer's common state that a stage 1-2 checkpoint's conversion wrote.

    Stage 3 reads Adam's step count and hyperparameters from a nested
    `optimizer_state_dict`, which the conversion writes only for stage-3
    checkpoints; stages 1-2 keep the step with each parameter. The
    hyperparameters are then set again from the config (pretrain/train/optim.py).
    """
    path = folder / "zero" / "optimizer_state.pt"
    state = torch.load(path, weights_only=True)
    if "optimizer_state_dict" in state:
        return
    step = torch.load(next((folder / "zero").glob("*/step.pt")), weights_only=True)
    state["optimizer_state_dict"] = {"state": {0: {"step": step}}, "param_groups": state["param_groups"]}
    torch.save(state, path)


def unshare_step_counts(optimizer: torch.optim.Optimizer) -> None:
    """Give each parameter's Adam state a step count of its own.

    ZeRO-3's universal load hands every parameter group the same step
    tensor, which PyTorch's Adam then advances in place once per group per
    step: with two groups (with and without weight decay), the bias
    correction of every step after the first would be off.
    """
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()


def load_resharded(engine, folder: Path) -> dict | None:
    """Load a checkpoint saved on another layout into this engine (a collective call); its client state.

    Rank 0 converts it while the others wait; every rank then loads its share
    and the converted copy is removed, since the next save is in this layout.
    """
    if dist.get_rank() == 0:
        convert(folder)
    dist.barrier()
    universal = universal_folder(folder)
    # DeepSpeed reads whether to load the universal form from its config, at load time only.
    engine._config.load_universal_checkpoint = True
    try:
        with weights_only_loads():
            _, client_state = engine.load_checkpoint(str(universal.parent), tag=universal.name)
    finally:
        engine._config.load_universal_checkpoint = False
    unshare_step_counts(engine.optimizer.optimizer)
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(universal, ignore_errors=True)
    return client_state
