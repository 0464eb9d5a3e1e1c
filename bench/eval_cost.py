"""What one in-loop evaluation costs against a training step, on the engine `pretrain train` builds.

    pretrain data build --config configs/demo.yaml          # once: the demo's dataset (the task comes from it)
    python bench/eval_cost.py --config configs/demo.yaml    # CPU, 1 process: the demo model and batch

The evaluation is the loop's own (pretrain/train/validate.py): the validation
loss on `eval.batches` micro-batches and a cloze task of `--examples`
examples made from the dataset's held-out documents (data_pipeline/cloze.py,
several seeds where the split holds fewer documents), scored on the live
engine. The training step is the engine's forward, backward and optimizer
step over the config's batch of random token ids (bench/train_speed.py).
Rounds alternate the two; each figure is the median round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from train_speed import engine_step, single_process_environment  # bench/ is the script's folder

from data_pipeline.cloze import cloze_examples, held_out_documents
from data_pipeline.shards import read_manifest
from data_pipeline.tokenizer import load_tokenizer
from model import GPT
from pretrain.config import load_config
from pretrain.train.engine import build_engine, init_distributed
from pretrain.train.validate import LoopEvaluation


def cloze_task(data_dir: Path, examples: int, out: Path) -> Path:
    """`examples` cloze examples from the held-out documents, seed after seed until there are enough."""
    tokenizer = load_tokenizer(data_dir / "tokenizer.json")
    documents = held_out_documents(data_dir)

    def decode(ids):
        return tokenizer.decode([int(i) for i in ids])

    made, seed = [], 0
    while len(made) < examples:
        made += cloze_examples(documents, decode, examples - len(made), seed=seed)
        seed += 1
    out.write_text("".join(json.dumps(example) + "\n" for example in made))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--examples", type=int, default=1000, help="examples of the task (1000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed per round")
    args, overrides = parser.parse_known_args()
    config = load_config(args.config, [*overrides, "launch.nproc_per_node=1", "parallel.zero_stage=0"])
    data_dir = Path(config.data.output_dir)
    if not (data_dir / "manifest.json").is_file():
        raise SystemExit(f"no dataset in {data_dir}: run `pretrain data build --config {args.config}` first")
    single_process_environment()
    init_distributed()
    torch.manual_seed(0)
    engine = build_engine(config, GPT(config.model))
    train = config.train
    shape = (train.micro_batch_size, train.seq_len)
    micro_batches = [
        (torch.randint(0, config.model.vocab_size, shape), torch.randint(0, config.model.vocab_size, shape))
        for _ in range(config.grad_accum_steps)
    ]
    with tempfile.TemporaryDirectory() as folder:
        task = cloze_task(data_dir, args.examples, Path(folder) / "cloze.jsonl")
        config = config.model_copy(update={"eval": config.eval.model_copy(update={"tasks": [str(task)]})})
        evaluation = LoopEvaluation(config, read_manifest(data_dir))
        engine_step(engine, micro_batches)  # the first step builds the optimizer's state
        steps, validations, scorings = [], [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(args.steps):
                engine_step(engine, micro_batches).item()
            steps.append((time.perf_counter() - started) / args.steps)
            started = time.perf_counter()
            evaluation.validation_loss(engine)
            validations.append(time.perf_counter() - started)
            started = time.perf_counter()
            engine.eval()
            evaluation.scorer.score(engine, engine.device, evaluation.dp)
            engine.train()
            scorings.append(time.perf_counter() - started)
    step, validation, scoring = (statistics.median(times) for times in (steps, validations, scorings))
    requests = sum(len(batch) for batch in evaluation.scorer.batches)
    interval = config.eval.interval
    print(
        f"model: {config.model.n_layer} layers x {config.model.n_embd}, {train.micro_batch_size} x {train.seq_len} "
        f"tokens a micro-batch, {config.grad_accum_steps} per step, 1 process, {engine.device}"
    )
    print(f"task: {args.examples} examples, {requests} requests in {len(evaluation.scorer.batches)} batches")
    print("| what | seconds | x a training step |")
    print("| --- | --- | --- |")
    print(f"| training step | {step:.3f} | 1.00 |")
    print(f"| validation loss ({config.eval.batches} micro-batches) | {validation:.3f} | {validation / step:.2f} |")
    print(f"| task of {args.examples} examples | {scoring:.3f} | {scoring / step:.2f} |")
    total = validation + scoring
    print(f"| one evaluation | {total:.3f} | {total / step:.2f} |")
    print(f"every eval.interval = {interval} steps, evaluation adds {total / (interval * step):.1%} to training time")


if __name__ == "__main__":
    main()
