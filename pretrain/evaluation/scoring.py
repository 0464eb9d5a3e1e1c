"""Scoring multiple-choice tasks by log-likelihood, as lm-evaluation-harness scores them, on one rank or many.

Each choice of an example is one request: the log-likelihood of the choice's
tokens given the context's, summed. The tokens are lm-eval's (`HFLM._encode_pair`):
spaces at the end of the context move to the start of the choice, the context
and choice are encoded together and the choice's tokens are what follows the
context's own encoding, and a request longer than the model's context keeps
its last `max_seq_len + 1` tokens. Then, per example:

- acc: the choice of highest log-likelihood is the gold one;
- acc_norm: the same after dividing each log-likelihood by its choice's length
  in characters (lm-eval's `acc_norm`), which stops short choices winning for
  being short.

Ties go to the first choice, as numpy's argmax (lm-eval's) gives them.

Batches. Requests are sorted longest first and packed into batches of at most
`budget_tokens` tokens (rows x the longest row), right-padded: in a causal
model a token never sees those after it, so padding changes no score and needs
no mask. Every rank builds the same list of batches; data-parallel rank r
scores batches r, r + dp, ... and every rank runs the same number of forward
passes (a rank short of one repeats a batch and drops its result), because
under ZeRO-3 and tensor parallelism each forward pass is a collective.
The ranks then share their scores, so each returns every task's results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pretrain.evaluation.tasks import Task


@dataclass(frozen=True)
class Request:
    task: int
    example: int
    choice: int
    tokens: tuple[int, ...]  # context and choice, at most max_seq_len + 1 tokens
    scored: int  # how many of the last tokens are the choice's (the ones whose log-likelihood is summed)


@dataclass
class TaskScore:
    name: str
    acc: float
    acc_norm: float
    loglikelihoods: list[list[float]]  # per example, per choice

    @property
    def n(self) -> int:
        return len(self.loglikelihoods)

    def metrics(self) -> dict[str, float]:
        return {f"eval/{self.name}/acc": self.acc, f"eval/{self.name}/acc_norm": self.acc_norm}

    def to_dict(self) -> dict:
        return {"acc": self.acc, "acc_norm": self.acc_norm, "n": self.n, "loglikelihoods": self.loglikelihoods}


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of a request into context and continuation tokens (a `tokenizers.Tokenizer`)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False).ids
    context_ids = tokenizer.encode(context, add_special_tokens=False).ids
    return context_ids, whole[len(context_ids) :]


def make_requests(tasks: list[Task], tokenizer, max_seq_len: int) -> list[Request]:
    requests = []
    for t, task in enumerate(tasks):
        for e, example in enumerate(task.examples):
            for c, choice in enumerate(example.choices):
                context_ids, choice_ids = encode_pair(tokenizer, example.context, task.delimiter + choice)
                tokens = (context_ids + choice_ids)[-(max_seq_len + 1) :]
                requests.append(Request(t, e, c, tuple(tokens), min(len(choice_ids), len(tokens) - 1)))
    return requests


def make_batches(requests: list[Request], budget_tokens: int) -> list[list[Request]]:
    """Longest first, each batch as many rows as fit in `budget_tokens` (always at least one)."""
    ordered = sorted(requests, key=lambda r: (-len(r.tokens), r.task, r.example, r.choice))
    batches, current = [], []
    for request in ordered:
        width = len(current[0].tokens) - 1 if current else len(request.tokens) - 1
        if current and (len(current) + 1) * width > budget_tokens:
            batches.append(current)
            current = []
        current.append(request)
    return batches + ([current] if current else [])


@torch.no_grad()
def batch_loglikelihoods(model, batch: list[Request], device: torch.device) -> list[float]:
    """Each request's summed log-likelihood of its choice; `model(ids)` returns (logits, _) as GPT does."""
    width = len(batch[0].tokens) - 1
    inputs = torch.zeros(len(batch), width, dtype=torch.long)
    targets = torch.zeros(len(batch), width, dtype=torch.long)
    scored = torch.zeros(len(batch), width, dtype=torch.bool)
    for row, request in enumerate(batch):
        length = len(request.tokens) - 1
        inputs[row, :length] = torch.tensor(request.tokens[:-1])
        targets[row, :length] = torch.tensor(request.tokens[1:])
        scored[row, length - request.scored : length] = True
    logits = model(inputs.to(device))[0].float()
    targets, scored = targets.to(logits.device), scored.to(logits.device)
    token_lls = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    return torch.where(scored, token_lls, 0.0).sum(dim=-1).tolist()  # one copy to the host per batch


class TaskScorer:
    """Tasks tokenized and batched once, scored as often as asked (every validation of a run)."""

    def __init__(self, tasks: list[Task], tokenizer, max_seq_len: int, budget_tokens: int):
        self.tasks = tasks
        self.batches = make_batches(make_requests(tasks, tokenizer, max_seq_len), budget_tokens)

    def score(self, model, device: torch.device, dp: tuple[int, int] = (0, 1)) -> list[TaskScore]:
        """Every task's scores. With `dp = (data-parallel rank, size)` in a job, a collective call of every rank."""
        dp_rank, dp_size = dp
        mine = self.batches[dp_rank::dp_size]
        found: dict[tuple[int, int, int], float] = {}
        # A compiled model would compile again for every batch shape: evaluation runs eagerly.
        with torch.compiler.set_stance("force_eager"):
            for index in range(math.ceil(len(self.batches) / dp_size)):
                # The same number of passes on every rank: one short of a batch repeats the first, unused.
                batch = mine[index] if index < len(mine) else self.batches[0]
                scores = batch_loglikelihoods(model, batch, device)
                if index < len(mine):
                    found.update({(r.task, r.example, r.choice): s for r, s in zip(batch, scores, strict=True)})
        if dist.is_initialized() and dp_size > 1:
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, found)
            found = {key: value for rank_found in everyone for key, value in rank_found.items()}
        return [task_score(task, t, found) for t, task in enumerate(self.tasks)]


def task_score(task: Task, t: int, found: dict[tuple[int, int, int], float]) -> TaskScore:
    lls = [[found[(t, e, c)] for c in range(len(ex.choices))] for e, ex in enumerate(task.examples)]
    right = [int(np.argmax(ll)) == ex.gold for ll, ex in zip(lls, task.examples, strict=True)]
    right_norm = [
        int(np.argmax(np.array(ll) / np.array([len(choice) for choice in ex.choices], dtype=float))) == ex.gold
        for ll, ex in zip(lls, task.examples, strict=True)
    ]
    return TaskScore(task.name, float(np.mean(right)), float(np.mean(right_norm)), lls)
