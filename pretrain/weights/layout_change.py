"""Which parallel layout a checkpoint was saved on, and which layouts it can continue on.

Kept apart from the conversion (pretrain/weights/reshard.py), without torch, so
that preflight can refuse a change that cannot work before any rank starts.
Only ZeRO's optimizers (stages 1-3) write the sharded state the conversion
reads: without ZeRO the optimizer is our own, saved whole in another format,
so a layout change to or from stage 0 is refused, as is one from stage 3 to
stages 1-2 (DeepSpeed 0.19.8's conversion of a stage-3 checkpoint lacks the
version stages 1-2 check). Offload and precision stay fixed: they change how
the state is kept, and nothing here tests them across a change.
"""

from __future__ import annotations

from typing import NamedTuple


class Layout(NamedTuple):
    """How a job's state is split across its ranks."""

    world_size: int
    zero_stage: int
    tensor_parallel_size: int

    @classmethod
    def of(cls, config: dict) -> Layout:
        """The layout of a config as saved (a checkpoint marker's) or given now (`Config.to_dict()`)."""
        launch, parallel = config.get("launch", {}), config.get("parallel", {})
        return cls(
            launch.get("nnodes", 1) * launch.get("nproc_per_node", 1),
            parallel.get("zero_stage", 1),
            parallel.get("tensor_parallel_size", 1),
        )

    def describe(self) -> str:
        dp = self.world_size // self.tensor_parallel_size
        return f"{dp} data-parallel x {self.tensor_parallel_size} tensor-parallel ranks, ZeRO stage {self.zero_stage}"


def reshard_problem(saved: Layout, now: Layout) -> str | None:
    """Why a checkpoint of layout `saved` cannot continue on layout `now`; None when it can."""
    if saved == now:
        return None
    if saved.zero_stage == 0:
        reason = (
            "a checkpoint saved without ZeRO continues on its own layout only: its optimizer's state is not "
            "sharded in a form DeepSpeed converts. Keep the layout it was saved with"
        )
    elif now.zero_stage == 0:
        reason = (
            "a checkpoint continues on another layout only with ZeRO (stages 1-3); set parallel.zero_stage to "
            f"{saved.zero_stage}, as the checkpoint has it"
        )
    elif saved.zero_stage == 3 and now.zero_stage != 3:
        reason = (
            "a ZeRO-3 checkpoint continues on ZeRO-3 only (DeepSpeed's conversion of it lacks what stages 1-2 "
            "load); set parallel.zero_stage=3, with any number of ranks and tensor-parallel degree"
        )
    else:
        return None
    return f"the checkpoint was saved on {saved.describe()} and this config asks for {now.describe()}; {reason}"
