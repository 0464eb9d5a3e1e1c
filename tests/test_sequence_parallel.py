"""Ulysses sequence parallelism (pretrain/train/sequence_parallel.py) on real gloo processes, at the model's level:
the slices' losses and gradients are the whole sequence's. The training runs through the CLI, on 2 and 4 ranks
and resumed without the split, are in tests/test_layouts.py."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model import GPT, GPTConfig
from pretrain.train.sequence_parallel import sequence_groups, split_sequences, whole_sequences

WORLD = 2
CASES = {
    # RoPE, grouped-query attention (4 query heads, 2 key/value heads: one of each per rank) and packed
    # documents, whose boundaries fall inside both slices and across the cut between them
    "rope-gqa-documents": ({"pos_encoding": "rope", "n_head": 4, "n_kv_heads": 2}, [[0] * 5 + [1] * 7 + [2] * 4] * 2),
    "learned-causal": ({"pos_encoding": "learned", "n_head": 2}, None),
}


def _model(overrides: dict) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, max_seq_len=16, n_layer=2, n_embd=32, **overrides)
    return GPT(config).float()


def _check_slices_against_the_whole(rank: int, store_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD)
    group = sequence_groups(WORLD)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 17), generator=generator)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    for name, (overrides, documents) in CASES.items():
        document_ids = torch.tensor(documents) if documents else None
        whole = _model(overrides)
        _, whole_loss = whole(inputs, targets, document_ids)
        whole_loss.backward()

        model = _model(overrides)
        split_sequences(model, group)
        model.loss_chunk_tokens = 5  # the loss in chunks, the slice's 16 tokens in uneven ones
        _, loss = model(inputs, targets, document_ids)
        loss.backward()
        # Every rank's mean loss over its slice, averaged as DeepSpeed averages the gradients.
        losses = [torch.zeros(()) for _ in range(WORLD)]
        dist.all_gather(losses, loss.detach())
        assert not torch.allclose(losses[0], losses[1]), name  # each rank computed its own slice
        assert torch.stack(losses).mean().item() == pytest.approx(whole_loss.item(), rel=1e-6), name
        for (param_name, param), reference in zip(model.named_parameters(), whole.parameters(), strict=True):
            grad = param.grad.clone()
            dist.all_reduce(grad)
            torch.testing.assert_close(grad / WORLD, reference.grad, rtol=1e-5, atol=1e-7, msg=f"{name}: {param_name}")

        with whole_sequences(model), torch.no_grad():  # generation and task scoring: the whole, on each rank
            torch.testing.assert_close(model(inputs, None, document_ids)[0], whole(inputs, None, document_ids)[0])
        assert model.sequence_shard == (rank, WORLD)  # and split again after
    dist.destroy_process_group()


def test_two_ranks_slices_give_the_whole_sequence_loss_and_gradients(tmp_path: Path):
    mp.spawn(_check_slices_against_the_whole, args=(str(tmp_path / "store"),), nprocs=WORLD)


def test_a_split_model_refuses_what_needs_whole_sequences():
    model = _model({"n_head": 2})
    model.sequence_shard = (0, 2)
    with pytest.raises(ValueError, match="does not split into 2 equal slices"):
        model(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="neither caches nor explains attention"):
        model.attention_weights(torch.zeros(1, 16, dtype=torch.long))
