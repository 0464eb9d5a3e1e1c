"""The engine's process group on CPU ranks: DeepSpeed's shared-memory collective, built once, found by every rank."""

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent

JOIN_ALONE = """
import torch.distributed as dist
from deepspeed import comm
from pretrain.train.engine import init_distributed
init_distributed()
print("joined", dist.get_world_size(), comm.is_initialized())
"""


def test_a_rank_builds_the_cpu_collective_with_the_ninja_installed_beside_it(tmp_path):
    """DeepSpeed compiles its CPU collective with whichever `ninja` comes first on PATH and caches it; ninja
    judges the cache by a hash of the build command, and Debian's ninja (1.11) and pip's (1.13, which DeepSpeed
    installs) hash differently, so a rank that found the other one first (an activated venv or not, a Ray
    worker) rebuilt it: 50 CPU-s. Here another `ninja` comes first on the rank's PATH; the rank must not run it."""
    other = tmp_path / "bin"
    other.mkdir()
    called = tmp_path / "other-ninja-ran"
    (other / "ninja").write_text(f'#!/bin/sh\necho "$@" >> {called}\nexit 1\n')
    (other / "ninja").chmod(0o755)
    env = os.environ | {
        "PATH": f"{other}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    command = [sys.executable, "-c", JOIN_ALONE]
    joined = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "joined 1 True" in joined.stdout
    assert not called.exists(), called.read_text()


def test_each_python_environment_builds_deepspeeds_ops_in_a_folder_of_its_own(monkeypatch, tmp_path):
    """torch caches the ops it builds in one folder per user (~/.cache/torch_extensions/py311_cpu), and ninja
    rebuilds an op built from another Python environment (its torch's paths are in the build command): two
    venvs of one user, two clones of the project say, rebuilt DeepSpeed's CPU collective in turn, 50 CPU-s and
    every rank waiting each time. Each environment now has a folder of its own; a TORCH_EXTENSIONS_DIR the user
    set is kept."""
    from torch.utils.cpp_extension import _get_build_directory

    from pretrain.train.engine import use_a_build_folder_of_this_environment

    def build_folder(prefix: str) -> str:
        monkeypatch.setattr(sys, "prefix", prefix)
        monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
        use_a_build_folder_of_this_environment()
        return _get_build_directory("deepspeed_shm_comm", verbose=False)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where torch's own default folder would be
    # Recorded as it is now and put back after the test: the function sets it in this process's environment,
    # which every later test's processes inherit (and then build DeepSpeed's ops in a folder of this test).
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR", ""))
    first, second, first_again = build_folder("/envs/a"), build_folder("/envs/b"), build_folder("/envs/a")
    assert first == first_again != second
    assert Path(first).is_relative_to(tmp_path / "cache" / "torch_extensions") and Path(first).is_dir()

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    use_a_build_folder_of_this_environment()
    assert _get_build_directory("deepspeed_shm_comm", verbose=False) == str(tmp_path / "mine" / "deepspeed_shm_comm")


ZERO1_ENGINE_ALONE = """
import sys
from model import GPT
from pretrain.config import load_config
from pretrain.train.engine import build_engine, init_distributed

config = load_config("configs/tiny.yaml", ["launch.nproc_per_node=1", "train.global_batch_size=8"])
init_distributed()
engine = build_engine(config, GPT(config.model))
compiler_imported = "torch._inductor.compile_fx" in sys.modules
from deepspeed.runtime.zero.muon import original_muon  # imported by the engine (here, already)
print(type(engine.optimizer).__name__, compiler_imported,
      original_muon.muon_update.__wrapped__.__name__, original_muon.muon_update.__module__)
"""


def test_a_rank_builds_its_zero_engine_without_importing_torchinductors_compiler():
    """DeepSpeed's ZeRO optimizer imports its Muon optimizer's module to ask whether ours is one, and that module
    wraps its kernels in torch.compile as it is imported, which imports TorchInductor's compiler: 1.1 to 1.9
    CPU-s of each rank's start-up. A rank that does not compile must not import it; Muon's kernels still compile, on
    first call."""
    alone = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env = os.environ | alone | {"MASTER_PORT": str(free_port())}
    command = [sys.executable, "-c", ZERO1_ENGINE_ALONE]
    built = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    # Muon's kernels are the functions it defines, wrapped to compile on their first call.
    kernel = ["muon_update", "deepspeed.runtime.zero.muon.original_muon"]
    assert built.stdout.splitlines()[-1].split() == ["DeepSpeedZeroOptimizer", "False", *kernel]
