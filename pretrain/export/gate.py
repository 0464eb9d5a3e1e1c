"""The registry's gate: `pretrain export --register NAME --require eval/<task>/acc>=X` registers only a checkpoint
whose scores pass.

Each requirement names a metric the training run logged at the exported
checkpoint's step (in the loop, every eval.interval; or by `pretrain eval`
on that checkpoint) and a bound. A score below its bound, or no score at that
step, refuses the registration before any version is made or alias moved.
"""

from __future__ import annotations

import argparse
import operator
import re
from dataclasses import dataclass

from pretrain.errors import ExportError

COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
REQUIREMENT = re.compile(r"^\s*(?P<metric>[\w./-]+)\s*(?P<op>>=|<=|>|<)\s*(?P<bound>[-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Requirement:
    metric: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def parse_requirement(text: str) -> Requirement:
    """An argparse type: METRIC>=X (or <=, >, <), e.g. eval/cloze/acc>=0.3 or eval/loss<=3.2."""
    match = REQUIREMENT.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not METRIC>=NUMBER (or <=, >, <), e.g. eval/cloze/acc>=0.3 or eval/loss<=3.2"
        )
    return Requirement(match["metric"], match["op"], float(match["bound"]))


def check_requirements(requirements: list[Requirement], score_at, step: int, run: str) -> list[str]:
    """Raise ExportError naming every unmet requirement; `score_at(metric)` is the run's value at `step` or None.
    Returns each requirement met, with its score, in words."""
    met, unmet = [], []
    for requirement in requirements:
        score = score_at(requirement.metric)
        if score is None:
            unmet.append(f"{requirement.metric}: no value logged at step {step} of {run}")
        elif not COMPARISONS[requirement.op](score, requirement.bound):
            unmet.append(f"{requirement.metric} = {score:.4f} at step {step}, required {requirement}")
        else:
            met.append(f"{requirement.metric} = {score:.4f} ({requirement})")
    if unmet:
        raise ExportError(
            "not registered, and no alias moved: " + "; ".join(unmet) + ". Scores are logged at each validation "
            "(eval.tasks) and by `pretrain eval --checkpoint RUN --tag TAG --task FILE` for any checkpoint"
        )
    return met
