"""`pretrain export` proven exact: checkpoints of both families, trained with ZeRO 1, ZeRO 3 and tensor
parallelism, become Hugging Face folders that `transformers` loads offline and that give our logits, the
trainer's own validation loss, our greedy tokens and our task scores (lm-evaluation-harness's own too);
registered in a real MLflow server (behind a gate of scores) and fetched back; and started from again with
`--init-from`.
"""

import contextlib
import dataclasses
import io
import json
import shutil
import stat

import mlflow.pyfunc
import numpy as np
import pandas
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from safetensors import safe_open

from data_pipeline.tokenizer import END_OF_TEXT, load_tokenizer
from model import GPTConfig, generate
from pretrain.cli import main
from pretrain.config import load_config
from pretrain.errors import CheckpointError, ConfigError, ExportError
from pretrain.evaluation.tasks import load_task
from pretrain.export.exporter import export, load_checkpoint_model
from pretrain.train.preflight import check_job
from pretrain.weights.checkpoint_files import load_torch_file
from pretrain.weights.model_folder import load_model_folder
from tests.helpers import pretrain, tiny_job_config, validation_batches
from tests.test_evaluation import transformers_loglikelihoods

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")

FAMILIES = {
    "gpt2": [],  # the tiny config's model: learned positions, LayerNorm, GELU, tied head
    "llama": [
        "model.pos_encoding=rope",
        "model.norm=rmsnorm",
        "model.mlp=swiglu",
        "model.bias=false",
        "model.tie_embeddings=false",
        "model.n_head=4",
        "model.n_kv_heads=2",  # grouped-query attention, split over tensor-parallel ranks too
    ],
}
HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
LAYOUTS = {
    "zero1": ["launch.nproc_per_node=2", "parallel.zero_stage=1"],
    "zero3": ["launch.nproc_per_node=2", "parallel.zero_stage=3"],
    "tp2": ["launch.nproc_per_node=2", "parallel.zero_stage=1", "parallel.tensor_parallel_size=2"],
}
SHORT_RUN = ["train.max_steps=3", "lr_schedule.warmup_steps=1", "train.log_interval=3", "eval.interval=3"]
TEXT = "def main():\n    return the value"
TOLERANCE = 1e-4


class Runs:
    """Short training runs of each family and layout, trained and exported on first use, tracked in MLflow."""

    def __init__(self, work, data_dir, tracking_uri, task):
        self.work, self.data_dir, self.uri, self.task = work, data_dir, tracking_uri, task
        self.config = [
            *tiny_job_config(work, data_dir),
            f"tracking.uri={tracking_uri}",
            "tracking.experiment=export",
            "sample.tokens=4",
            f"eval.tasks=[{task}]",  # scored in the loop at steps 0 and 3
        ]
        self.done = {}

    def options(self, family: str, layout: str) -> list[str]:
        return [*self.config, *FAMILIES[family], *LAYOUTS[layout], *SHORT_RUN, f"tracking.run_name={family}-{layout}"]

    def run_dir(self, family: str, layout: str):
        """The run folder, trained and exported (`pretrain export`, defaults: <run folder>/export) once."""
        if (family, layout) not in self.done:
            pretrain("train", *self.options(family, layout), cwd=self.work)
            # In this process (the CLI's main, as `pretrain export` runs it): a new one would spend 6 s on imports.
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert main(["export", *self.options(family, layout)]) == 0
            self.done[family, layout] = printed.getvalue()
        return self.work / "runs" / f"{family}-{layout}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data, tiny_tasks, mlflow_server):
    return Runs(tmp_path_factory.mktemp("export"), tiny_data, mlflow_server, tiny_tasks / "small.jsonl")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Loading must need nothing from the Hub: any attempt to reach it fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def hf_validation_loss(hf, run_dir, data_dir) -> float:
    losses = []
    with torch.no_grad():
        for inputs, targets in validation_batches(run_dir, data_dir):
            logits = hf(torch.from_numpy(inputs)).logits
            losses.append(F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(targets).flatten().long()))
    return torch.stack(losses).mean().item()


# Both families with tensor parallelism (each splits its own projections), and each with one of ZeRO's two
# checkpoint layouts (ZeRO 1 keeps whole weights in the model states, ZeRO 3 a partition per rank).
EXPORTED = [("gpt2", "zero1"), ("gpt2", "tp2"), ("llama", "zero3"), ("llama", "tp2")]


@pytest.mark.parametrize(("family", "layout"), EXPORTED, ids=["-".join(run) for run in EXPORTED])
def test_hugging_face_export_gives_our_logits_loss_and_tokens(runs, family, layout):
    run_dir = runs.run_dir(family, layout)
    folder = run_dir / "export"
    assert f"exported model folder: {folder}" in runs.done[family, layout]
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert type(hf).__name__ == HF_CLASSES[family]
    assert hf.dtype == torch.float32
    ids = load_tokenizer(run_dir / "tokenizer.json").encode(TEXT).ids
    assert tokenizer.encode(TEXT) == ids
    assert tokenizer.decode(ids) == TEXT

    ours, found = load_checkpoint_model(run_dir)
    with torch.no_grad():
        difference = (hf(torch.tensor([ids])).logits - ours.eval()(torch.tensor([ids]))[0]).abs().max().item()
    assert difference <= TOLERANCE
    # The trainer's own number, computed on the sharded engine: the export carries exactly its weights.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert found.step == summary["steps"] == 3
    assert hf_validation_loss(hf, run_dir, runs.data_dir) == pytest.approx(summary["val_loss"], abs=TOLERANCE)

    end = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    theirs = hf.generate(torch.tensor([ids[:4]]), max_new_tokens=12, do_sample=False)[0, 4:].tolist()
    theirs = theirs[: theirs.index(end)] if end in theirs else theirs
    assert generate(ours, [ids[:4]], 12, temperature=0, stop_tokens=[end]) == [theirs]


@pytest.mark.parametrize("family", FAMILIES)
def test_text_generation_pipeline_loads_the_folder(runs, family):
    folder = runs.run_dir(family, "tp2") / "export"
    generator = transformers.pipeline("text-generation", model=str(folder))
    text = generator("def main", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("def main") and len(text) > len("def main")


def test_sharded_bf16_export_loads_in_both_libraries(runs, tmp_path):
    run_dir = runs.run_dir("llama", "zero3")
    folder, _, info = export(run_dir, tmp_path / "sharded", dtype="bf16", max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((folder / shard).is_file() for shard in shards)
    with safe_open(folder / shards[0], framework="pt") as weights:
        assert weights.metadata() == {"format": "pt"}
        assert all(weights.get_tensor(name).dtype == torch.bfloat16 for name in weights.keys())  # noqa: SIM118
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert info["dtype"] == "bf16" and info["step"] == 3

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    assert hf.dtype == torch.bfloat16
    ours, _ = load_model_folder(folder)  # read back in fp32, from the shards
    reference, _ = load_checkpoint_model(run_dir)
    ids = torch.tensor([load_tokenizer(run_dir / "tokenizer.json").encode(TEXT).ids])
    with torch.no_grad():
        exact = reference.eval()(ids)[0]
        assert (ours(ids)[0] - exact).abs().max().item() < 0.05  # bf16 rounding of the weights only
        assert (hf(ids).logits.float() - exact).abs().max().item() < 0.1


def test_torch_format_holds_our_parameters_exactly(runs, tmp_path):
    run_dir = runs.run_dir("gpt2", "tp2")
    folder, _, _ = export(run_dir, tmp_path / "torch", export_format="torch")
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors",
        "model_config.json",
        "tokenizer.json",
        "export_info.json",
    }
    reference, _ = load_checkpoint_model(run_dir)
    loaded, _ = load_model_folder(folder)
    expected = reference.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())


def spelled_out(config: GPTConfig) -> GPTConfig:
    """The config with the defaults that stand for a number written as that number."""
    return dataclasses.replace(config, n_kv_heads=config.kv_heads, ffn_hidden_size=config.ffn_hidden)


def test_init_from_a_hugging_face_folder_starts_from_its_weights(runs):
    """Round trip: the new run's untrained validation loss is the exported run's final one."""
    source = runs.run_dir("llama", "zero3")  # two data-parallel ranks, as the new run: the same validation batches
    folder = source / "export"
    # The gpt2 tiny model on the command line: the folder's Llama architecture replaces it.
    options = [*runs.config, *LAYOUTS["zero1"], *SHORT_RUN, "train.max_steps=1", "tracking.run_name=continued"]
    trained = pretrain("train", *options, "--init-from", str(folder), cwd=runs.work)
    assert "step      1/1" in trained.stdout
    run_dir = runs.work / "runs" / "continued"
    config = load_config(run_dir / "config.yaml")
    assert spelled_out(config.model) == spelled_out(load_config(source / "config.yaml").model)
    assert config.train.init_from == str(folder)
    summary = json.loads((source / "summary.json").read_text())
    client = MlflowClient(runs.uri)
    continued = json.loads((run_dir / "summary.json").read_text())["mlflow_run_id"]
    (start,) = [m.value for m in client.get_metric_history(continued, "eval/loss") if m.step == 0]
    assert start == pytest.approx(summary["val_loss"], abs=TOLERANCE)


def export_command(capsys, *args: str) -> tuple[int, str, str]:
    """`pretrain export ARGS` in this process (the training runs are the subprocesses): exit code, stdout, stderr."""
    code = main(["export", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_register_fetch_and_find_versions(runs, tmp_path, capsys, monkeypatch):
    run_dir = runs.run_dir("gpt2", "zero1")
    options = [*runs.config, "--checkpoint", str(run_dir)]
    name = "tiny-gpt2"
    register = ["--out", str(tmp_path / "v1"), "--register", name, "--alias", "candidate", "--alias", "latest"]
    code, out, _ = export_command(capsys, *options, *register)
    assert code == 0 and f"registered {name} version 1 (" in out
    client = MlflowClient(runs.uri)
    version = client.get_model_version_by_alias(name, "candidate")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert version.version == "1" and version.run_id == summary["mlflow_run_id"]
    # A logged model of the training run (MLflow's Logged models), at the checkpoint's step, that generates text.
    ((model_id, step),) = [(o.model_id, o.step) for o in client.get_run(version.run_id).outputs.model_outputs]
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == version.run_id and logged.name == "step_00000003-hf" and step == 3
    assert version.source == logged.artifact_location
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs.uri)
    generator = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    texts = generator.predict(pandas.DataFrame({"prompt": ["def", "The"]}), params={"max_new_tokens": 4})
    assert len(texts) == 2 and texts[0].startswith("def") and texts[1].startswith("The")
    assert version.tags["step"] == "3" and version.tags["checkpoint"] == "step_00000003"
    assert version.tags["tokens_seen"] == str(3 * 16 * 64)
    assert float(version.tags["val_loss"]) == pytest.approx(summary["val_loss"], abs=1e-6)
    assert version.tags["format"] == "hf" and version.tags["dtype"] == "fp32"

    code, out, _ = export_command(
        capsys, *options, "--from-registry", f"{name}@candidate", "--out", str(tmp_path / "got")
    )
    assert code == 0 and f"fetched {name} version 1" in out
    for file in (tmp_path / "v1").iterdir():
        assert (tmp_path / "got" / file.name).read_bytes() == file.read_bytes()
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "got", local_files_only=True)

    # A second version takes the alias; NAME and NAME@latest are the newest, NAME/1 the first.
    second = ["--format", "torch", "--out", str(tmp_path / "v2"), "--register", name, "--alias", "candidate"]
    assert export_command(capsys, *options, *second)[0] == 0
    assert client.get_model_version_by_alias(name, "candidate").version == "2"
    for reference, config_file in (
        (name, "model_config.json"),
        (f"{name}@latest", "model_config.json"),
        (f"{name}/1", "config.json"),
    ):
        out_dir = tmp_path / reference.replace("@", "-").replace("/", "-")
        assert export_command(capsys, *options, "--from-registry", reference, "--out", str(out_dir))[0] == 0
        assert (out_dir / config_file).is_file()

    code, _, err = export_command(capsys, *options, "--from-registry", f"{name}@nonesuch")
    assert code == 1
    assert f"--from-registry {name}@nonesuch: " in err and "alias nonesuch" in err


def test_register_goes_to_the_tracking_uri_of_an_override_not_the_runs_own(runs, tmp_path, capsys):
    """A run folder whose store has moved (its config names a server that is gone) registers where the user says."""
    moved = tmp_path / "moved"
    shutil.copytree(runs.run_dir("gpt2", "zero1"), moved, ignore=shutil.ignore_patterns(".lock", "export"))
    gone = "http://127.0.0.1:9"  # the discard port: nothing answers there
    for path in [moved / "config.yaml", *moved.glob("checkpoints/step_*/complete")]:
        path.write_text(path.read_text().replace(runs.uri, gone))
    options = ["--checkpoint", str(moved), "--out", str(tmp_path / "out"), "--register", "moved-run"]
    code, _, err = export_command(capsys, *options)
    assert code == 1 and gone in err  # without an override: the run's own store
    code, out, _ = export_command(capsys, *options, f"tracking.uri={runs.uri}")
    assert code == 0 and "registered moved-run version 1 (" in out and f"at {runs.uri}" in out
    assert MlflowClient(runs.uri).get_model_version("moved-run", "1").status == "READY"


def loop_scores(runs, run_dir, step: int) -> list[list[float]]:
    """The per-example log-likelihoods the training loop logged to MLflow at `step`."""
    run_id = json.loads((run_dir / "summary.json").read_text())["mlflow_run_id"]
    path = MlflowClient(runs.uri).download_artifacts(run_id, f"evaluations/step_{step:08d}.json", str(run_dir.parent))
    return json.loads(open(path).read())["small"]["loglikelihoods"]


def pretrain_eval(runs, tmp_path, *source: str) -> dict:
    """`pretrain eval` in this process (logging to the runs' MLflow server); its results file."""
    out = tmp_path / f"eval-{len(list(tmp_path.iterdir()))}.json"
    assert main(["eval", *runs.config, *source, "--task", str(runs.task), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_task_scores_agree_in_the_loop_under_zero3_and_tp2_pretrain_eval_and_transformers(runs, tmp_path):
    """Per-example log-likelihoods: the loop's on 2 ranks (ZeRO-3; tensor-parallel 2), `pretrain eval` in one
    process on the checkpoint, and transformers on the export, all to 1e-4; and the same weights at step 0."""
    zero3, tp2 = runs.run_dir("llama", "zero3"), runs.run_dir("llama", "tp2")
    assert np.allclose(loop_scores(runs, zero3, 0), loop_scores(runs, tp2, 0), atol=1e-5)  # the initial weights
    for run_dir in (zero3, tp2):
        in_loop = loop_scores(runs, run_dir, 3)
        single = pretrain_eval(runs, tmp_path, "--checkpoint", str(run_dir))
        assert single["step"] == 3
        assert np.allclose(single["tasks"]["small"]["loglikelihoods"], in_loop, atol=TOLERANCE)
        theirs = transformers_loglikelihoods(run_dir / "export", load_task(runs.task))
        assert np.allclose(theirs, in_loop, atol=TOLERANCE)
        # `pretrain eval` joined the training run at the checkpoint's step.
        run_id = json.loads((run_dir / "summary.json").read_text())["mlflow_run_id"]
        logged = MlflowClient(runs.uri).get_metric_history(run_id, "eval/small/acc")
        assert [m.value for m in logged if m.step == 3][-1] == single["tasks"]["small"]["acc"]


def test_lm_evaluation_harness_scores_an_export_as_pretrain_eval_does(runs, tmp_path, monkeypatch):
    """lm-eval's own `hf` model on the export, reading the task as `pretrain eval --lm-eval-tasks` writes it."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = runs.run_dir("gpt2", "zero1") / "export"
    ours = pretrain_eval(runs, tmp_path, "--model", str(folder))["tasks"]["small"]
    assert main(["eval", "--model", str(folder), "--task", str(runs.task), "--lm-eval-tasks", str(tmp_path / "t")]) == 0
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype=float32",
        tasks=["small"],
        # Only our folder's tasks: indexing lm-eval's own thousands of task files would take 15 s.
        task_manager=TaskManager(include_path=str(tmp_path / "t"), include_defaults=False),
        batch_size=8,
        device="cpu",
        log_samples=True,
    )
    assert results["results"]["small"]["acc,none"] == ours["acc"]
    assert results["results"]["small"]["acc_norm,none"] == ours["acc_norm"]
    for sample in results["samples"]["small"]:
        theirs = [float(response[0]) for response in sample["filtered_resps"]]
        assert np.allclose(theirs, ours["loglikelihoods"][sample["doc_id"]], atol=TOLERANCE)


def test_register_requires_the_scores_it_is_given(runs, tmp_path, capsys):
    """--require: a score below its bound, or none at the checkpoint's step, registers nothing (and exports
    nothing)."""
    options = [*runs.config, "--checkpoint", str(runs.run_dir("gpt2", "tp2")), "--out", str(tmp_path / "out")]
    name = "tiny-gated"
    for requirement, refusal in (
        ("eval/small/acc>=1.01", "eval/small/acc = "),
        ("eval/other/acc>=0", "eval/other/acc: no value logged at step 3 of MLflow run "),
    ):
        code, _, err = export_command(capsys, *options, "--register", name, "--alias", "prod", "--require", requirement)
        assert code == 1 and "not registered, and no alias moved: " in err and refusal in err
        assert f"required {requirement}" in err or "no value logged" in err
    assert MlflowClient(runs.uri).search_model_versions(f"name = '{name}'") == []
    assert not (tmp_path / "out").exists()  # refused before the weights were gathered and written
    passing = ["--require", "eval/small/acc>=0", "--require", "eval/loss<=100"]
    code, out, _ = export_command(capsys, *options, "--register", name, *passing)
    assert code == 0 and "required score met: eval/small/acc = " in out and f"registered {name} version 1" in out


def test_an_exported_folder_is_readable_by_whoever_may_read_the_rest_of_it(runs):
    """The weights are written through private temporary files; the folder must not keep their mode 0600."""
    folder = runs.run_dir("gpt2", "zero1") / "export"
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes
    assert len(set(modes.values())) == 1, modes


def test_export_without_a_complete_checkpoint_names_the_complete_ones(runs, tmp_path):
    run_dir = runs.run_dir("gpt2", "zero1")
    with pytest.raises(CheckpointError, match=r"no complete checkpoint step_00000009 \(complete ones: step_00000003\)"):
        export(run_dir, tmp_path / "out", tag="step_00000009")


def test_export_does_not_overwrite_a_folder_of_something_else(runs, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ExportError, match="exists and is not an exported model folder; choose another --out"):
        export(runs.run_dir("gpt2", "zero1"), tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_init_from_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ConfigError, match=f"train.init_from = '{tmp_path}': .*not an exported model folder"):
        load_config(None, [f"train.init_from={tmp_path}"])


def test_init_from_a_model_of_another_tokenizer_is_refused(tiny_model_folder, tiny_data, tmp_path):
    tokenizer = tiny_model_folder / "tokenizer.json"
    overrides = [f"train.init_from={tiny_model_folder}", f"data.output_dir={tiny_data}", "train.seq_len=16"]
    config = load_config(None, [*overrides, f"data.tokenizer.path={tokenizer}"])
    assert config.model.n_embd == 32  # the folder's model, not the default one
    config = config.model_copy(update={"checkpoint": config.checkpoint.model_copy(update={"root": str(tmp_path)})})
    with pytest.raises(ConfigError, match=f"its tokenizer is not the one the dataset was built with .*{tokenizer}"):
        check_job(config, require_checkpoint=False)


def test_export_every_exports_and_registers_while_training(runs):
    name = "tiny-llama-periodic"
    options = [*runs.config, *FAMILIES["llama"], *LAYOUTS["zero1"], *SHORT_RUN, "tracking.run_name=periodic"]
    periodic = ["train.max_steps=4", "checkpoint.every_steps=2", "export.every=2", "eval.interval=2"]
    registry = [f"export.registered_model={name}", "export.aliases=[candidate]"]
    trained = pretrain("train", *options, *periodic, *registry, cwd=runs.work)
    exports = runs.work / "runs" / "periodic" / "exports"
    for version, step in ((1, 2), (2, 4)):
        assert f"exported step {step}: {exports / f'step_0000000{step}'}, registered as {name} version {version}" in (
            trained.stdout
        )
    assert sorted(p.name for p in exports.iterdir()) == ["step_00000002", "step_00000004"]
    client = MlflowClient(runs.uri)
    newest = client.get_model_version_by_alias(name, "candidate")
    assert newest.version == "2" and newest.tags["step"] == "4"
    summary = json.loads((runs.work / "runs" / "periodic" / "summary.json").read_text())
    assert float(newest.tags["val_loss"]) == pytest.approx(summary["val_loss"], abs=1e-6)
    first = client.get_model_version(name, "1")
    assert first.tags["step"] == "2" and "val_loss" in first.tags  # evaluated at step 2 too
    hf = transformers.AutoModelForCausalLM.from_pretrained(exports / "step_00000002", local_files_only=True)
    assert type(hf).__name__ == "LlamaForCausalLM"


def test_export_every_must_fall_on_checkpoints():
    with pytest.raises(ConfigError, match=r"export.every = 3: must be a multiple of checkpoint.every_steps \(2\)"):
        load_config(None, ["export.every=3", "checkpoint.every_steps=2"])


def test_a_bf16_run_exports_its_fp32_master_weights(runs):
    """Mixed precision: the export holds the optimizer's fp32 masters, of which the engine's weights are the
    bf16 rounding; not the bf16 weights themselves."""
    options = [*runs.config, *LAYOUTS["zero1"], *SHORT_RUN, "train.max_steps=1", "train.precision=bf16"]
    pretrain("train", *options, "tracking.run_name=bf16", cwd=runs.work)
    run_dir = runs.work / "runs" / "bf16"
    model, found = load_checkpoint_model(run_dir)
    module = load_torch_file(found.folder / "mp_rank_00_model_states.pt")["module"]
    exported = model.state_dict()
    assert all(bf16.dtype == torch.bfloat16 for bf16 in module.values())
    assert all(torch.equal(exported[name].to(torch.bfloat16), bf16) for name, bf16 in module.items())
    assert all(not torch.equal(exported[name], bf16.float()) for name, bf16 in module.items())
    folder, _, _ = export(run_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    ids = torch.tensor([load_tokenizer(run_dir / "tokenizer.json").encode(TEXT).ids])
    with torch.no_grad():
        assert (hf(ids).logits - model.eval()(ids)[0]).abs().max().item() <= TOLERANCE


def test_a_short_context_export_trains_on_at_twice_its_context_and_transformers_reads_it_there(runs):
    """Context extension end to end: the Llama run's export, trained at 64 tokens, continued at 128 with Llama
    3's rope scaling (the config's own GPT-2 model section is not it), then exported: transformers reads the
    scaling back and gives our logits at 128 tokens."""
    folder = runs.run_dir("llama", "zero3") / "export"
    extension = ["model.rope_scaling.type=llama3", "model.rope_scaling.factor=2", "train.seq_len=128"]
    one_process = [
        "launch.nproc_per_node=1",
        "parallel.zero_stage=0",
        "train.micro_batch_size=8",
        "train.global_batch_size=8",
    ]
    options = [*runs.config, *SHORT_RUN, *one_process, *extension, "train.max_steps=2", "tracking.run_name=extended"]
    trained = pretrain("train", *options, "--init-from", str(folder), cwd=runs.work)
    assert "step      2/2" in trained.stdout
    run_dir = runs.work / "runs" / "extended"
    model, _ = load_checkpoint_model(run_dir)
    assert model.config.max_seq_len == 128 and model.config.rope_scaling.original_max_seq_len == 64

    exported, _, _ = export(run_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported, local_files_only=True).eval()
    assert hf.config.rope_parameters["rope_type"] == "llama3" and hf.config.max_position_embeddings == 128
    written = json.loads((exported / "config.json").read_text())
    assert written["rope_scaling"] == {  # what transformers 4.x reads
        "rope_type": "llama3",
        "factor": 2.0,
        "original_max_position_embeddings": 64,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    }
    ids = torch.randint(0, model.config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(ids).logits - model.eval()(ids)[0]).abs().max().item() <= TOLERANCE
