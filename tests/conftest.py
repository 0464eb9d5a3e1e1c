"""Shared test data: every test makes its own, nothing is downloaded."""

import gzip
import json
import os
import random
import sysconfig
from pathlib import Path

import pytest
from filelock import FileLock

from tests.helpers import MlflowServer, free_port, unavailable

# Ray waits 5 s for its GCS server to answer by default; three test workers on two cores (`make test`),
# each starting Ray or ranks, can make it wait longer. Every Ray the tests start, in process or not, reads this.
os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", "60")

WORDS = [
    "the",
    "model",
    "reads",
    "a",
    "token",
    "and",
    "predicts",
    "the",
    "next",
    "one",
    "from",
    "all",
    "that",
    "came",
    "before",
    "it",
    "attention",
    "weighs",
    "every",
    "earlier",
    "position",
    "while",
    "the",
    "feed",
    "forward",
    "network",
    "mixes",
    "features",
    "residual",
    "connections",
    "carry",
    "the",
    "signal",
    "through",
    "deep",
    "stacks",
    "of",
    "identical",
    "blocks",
]


def synthetic_documents(count: int, seed: int = 0) -> list[str]:
    """Distinct documents of English-like sentences, long enough to pass the minimum length."""
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        sentences = [
            " ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "." for _ in range(rng.randint(3, 8))
        ]
        documents.append(f"Document {index}. " + " ".join(sentences))
    return documents


@pytest.fixture(scope="session")
def make_documents():
    return synthetic_documents


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    """A small corpus in every supported layout, with two exact duplicates across files."""
    documents = synthetic_documents(400)
    folder = tmp_path / "corpus"
    folder.mkdir()
    with open(folder / "part-a.jsonl", "w") as f:
        for text in documents[:200] + documents[:2]:  # two duplicates
            f.write(json.dumps({"text": text, "id": len(text)}) + "\n")
    with gzip.open(folder / "part-b.jsonl.gz", "wt") as f:
        for text in documents[200:390]:
            f.write(json.dumps({"text": text}) + "\n")
    for index, text in enumerate(documents[390:]):
        (folder / f"doc-{index}.txt").write_text(text)
    (folder / "notes.md").write_text("not a corpus file; ignored inside folders")
    return folder


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1, shared by the session (an idle one holds hundreds of MB)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server.uri
    server.stop()


@pytest.fixture
def restartable_mlflow_server(tmp_path):
    """A server of the test's own, to kill and start again (same port, same database)."""
    server = MlflowServer(tmp_path / "mlflow-server")
    server.root.mkdir()
    yield server.start()
    server.stop()


@pytest.fixture
def unreachable_mlflow_uri() -> str:
    """An address where no server listens: a request there is refused at once."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory):
    """A real `mlflow server --app-name basic-auth`: (URI, admin user name, admin password)."""
    user, password = "admin", "test-Admin-pw-6f2c91"
    root = tmp_path_factory.mktemp("mlflow-auth-server")
    # The auth app keeps its users in a database of its own: here, not in the working directory.
    (root / "basic_auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-csrf-key",  # the auth app's forms refuse to start without one
    }
    server = MlflowServer(root, app_name="basic-auth", env=env).start()
    yield server.uri, user, password
    server.stop()


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory, make_documents):
    """A Hugging Face folder (as `pretrain export` writes it) of a random 2-layer GPT and a small BPE tokenizer."""
    import torch

    from data_pipeline.tokenizer import train_tokenizer
    from model import GPT, GPTConfig
    from pretrain.weights.model_folder import write_model_folder

    root = tmp_path_factory.mktemp("model")
    tokenizer = train_tokenizer(make_documents(50), vocab_size=400)
    tokenizer.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.get_vocab_size(), max_seq_len=32, n_layer=2, n_head=2, n_embd=32)
    folder, _ = write_model_folder(GPT(config).state_dict(), config, root / "tokenizer.json", root / "model", {})
    return folder


# The embedded corpus's top-level modules (168 files of the standard library's 1,790): 420,000 training tokens,
# for tests that train on a few thousand sequences, in 0.43 of the CPU time of a build of the whole library.
TOP_LEVEL_STDLIB = (
    "data.sources=[{name: stdlib, format: python-docstrings, "
    f"paths: ['{Path(sysconfig.get_paths()['stdlib']) / '*.py'}']}}]"
)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, worker_id) -> Path:
    """The embedded corpus's top-level modules built into shards with the tiny config, once per run of the suite
    (for all workers)."""
    from tests.helpers import ROOT, pretrain

    def build(work: Path) -> str:
        data_dir = work / "data"
        config = str(ROOT / "configs" / "tiny.yaml")
        built = pretrain("data", "build", "--config", config, TOP_LEVEL_STDLIB, f"data.output_dir={data_dir}", cwd=work)
        (work / "build.out").write_text(built.stdout)  # what the command printed, for tests of its report
        (work / "build.err").write_text(built.stderr)
        # Cloze tasks from its held-out text (tiny_tasks): all it makes, and a few for runs that compare scores.
        from data_pipeline.cloze import write_cloze_task

        write_cloze_task(data_dir, work / "tasks" / "cloze.jsonl", examples=1000)
        write_cloze_task(data_dir, work / "tasks" / "small.jsonl", examples=12)
        return str(data_dir)

    return Path(once_for_all_workers(tmp_path_factory, worker_id, "tiny-data", build))


@pytest.fixture(scope="session")
def tiny_tasks(tiny_data) -> Path:
    """The folder of tiny_data's cloze tasks: cloze.jsonl (every held-out document it can use), small.jsonl (12)."""
    return tiny_data.parent / "tasks"


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_data) -> dict:
    """The tiny job's config (the session's shards; runs and MLflow store in a folder of the module's own)."""
    from tests.helpers import tiny_job_config

    work = tmp_path_factory.mktemp("job")
    return {"config": tiny_job_config(work, tiny_data), "work": work, "data_dir": tiny_data}


@pytest.fixture(scope="session")
def two_rank_run(tmp_path_factory, worker_id, tiny_data) -> dict:
    """The reference of the resume and launch-target tests: ten steps of the tiny job on 2 ranks, ZeRO-1, saved
    at steps 5 and 10 (run `layout-2-1` in the folder `work`, which tests copy and never change)."""
    from tests.helpers import TWO_RANKS_ZERO1, tiny_job_config, train_losses

    def train(work: Path) -> dict:
        config = tiny_job_config(work, tiny_data)
        losses = train_losses(work, config, "layout-2-1", *TWO_RANKS_ZERO1, "checkpoint.every_steps=5")
        return {"work": str(work), "losses": losses}

    return once_for_all_workers(tmp_path_factory, worker_id, "two-ranks", train)


@pytest.fixture(scope="session")
def two_rank_losses(two_rank_run) -> list[float]:
    return two_rank_run["losses"]


def once_for_all_workers(tmp_path_factory, worker_id: str, name: str, make):
    """`make(folder)` once for the whole run, whatever the number of pytest-xdist workers: the first worker to
    get here makes it, in a folder they all share; the others wait for it and read its (JSON) result."""
    if worker_id == "master":  # no xdist: a session is the whole run
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's own
    result = shared / f"{name}.json"
    with FileLock(shared / f"{name}.lock"):
        if not result.is_file():
            folder = shared / name
            folder.mkdir()
            result.write_text(json.dumps(make(folder)))
    return json.loads(result.read_text())


# Several pytest-xdist workers share the machine (`make test` runs three on two cores: a test often waits on a
# process it started, and a third worker keeps the cores busy meanwhile). A test module runs whole on one
# worker, so its module-scoped fixtures (a trained run, a built dataset) are made once, and the modules that
# use the session's Slurm or Ray cluster run on one worker together, so each cluster is started once.
CLUSTER_MODULES = {"test_targets", "test_slurm_cluster", "test_ray_cluster"}


# The order the workers take modules in. First the clusters' tests: every test of the Ray cluster, then
# of the Slurm cluster, each cluster stopped after its last (idle, Ray's daemons alone keep 7% of a core busy,
# which the tests after them need), then the other launch targets; then every module that needs no dataset,
# which the other workers run meanwhile instead of waiting for the one being built; then the modules that
# train, longest first, so that the last one running is a short one.
LONGEST_FIRST = ["test_layouts", "test_trust", "test_export", "test_interruptions", "test_end_to_end", "test_stability"]
CLUSTER_FIXTURES = ("ray_cluster", "slurm_cluster")  # in the order their tests run


def module(item) -> str:
    return item.module.__name__.rpartition(".")[2]


def pytest_collection_modifyitems(items):
    trains = {module(item) for item in items if "tiny_data" in item.fixturenames}

    def order(item) -> tuple[int, int]:
        name = module(item)
        if name in CLUSTER_MODULES:
            uses = [fixture in item.fixturenames for fixture in CLUSTER_FIXTURES]
            return 0, uses.index(True) if True in uses else len(uses)
        if name not in trains:
            return 1, 0
        return 2, LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=order)  # stable: a module's tests keep their order


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "clusters" if Path(module).stem in CLUSTER_MODULES else module

    config.option.loadscopereorder = False  # the order above, not xdist's (the module with most tests first)
    return ByModule(config, log)


# The session's clusters by fixture name, each stopped as soon as the last test that uses it is done rather
# than at the end of the session.
STARTED_CLUSTERS = {}
LAST_USER = {}


def pytest_collection_finish(session):
    for item in session.items:  # as selected and ordered
        LAST_USER.update({fixture: item.nodeid for fixture in CLUSTER_FIXTURES if fixture in item.fixturenames})


def pytest_runtest_teardown(item, nextitem):
    for fixture, cluster in STARTED_CLUSTERS.items():
        if LAST_USER.get(fixture) == item.nodeid:
            cluster.stop()  # idempotent: the fixture's own stop at the end of the session does nothing more


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node Slurm cluster on 127.0.0.1 (munged, slurmctld, slurmd), stopped at the end."""
    from tests.slurm_cluster import SlurmCluster

    reason = SlurmCluster.unavailable_reason()
    if reason:
        unavailable(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        STARTED_CLUSTERS["slurm_cluster"] = cluster
        yield cluster


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real Ray cluster on this machine, head plus one worker node, with token authentication."""
    from tests.ray_cluster import RayCluster

    reason = RayCluster.unavailable_reason()
    if reason:
        unavailable(reason)
    cluster = RayCluster(tmp_path_factory.mktemp("ray"), worker_nodes=1)
    with cluster:
        STARTED_CLUSTERS["ray_cluster"] = cluster
        yield cluster
    cluster.remove_temp_dir()
