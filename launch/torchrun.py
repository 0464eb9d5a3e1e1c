"""torchrun, with its rendezvous listening on one address: `python -m launch.torchrun TORCHRUN_ARGS...`.

The arguments are torchrun's own. On the host of the rendezvous
(`--rdzv-conf=is_host=true`) this first binds the rendezvous store to the
endpoint's host (launch/stores.py): 127.0.0.1 for a job on one machine, the
address the user named for a job over several hosts; an endpoint port of 0
becomes a free port. torchrun's c10d rendezvous then finds that store
already serving its port and uses it rather than listening on every
interface. The store torchrun would share with the ranks is turned off: each
job's ranks make their own, bound the same way (pretrain/train/engine.py).

When a rank fails, torchrun logs the failure and raises an error whose
traceback says nothing the rank's own message did not; this says it in one
line and exits with the rank's exit code instead.
"""

from __future__ import annotations

import gc
import logging
import os
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

from launch.stores import bound_store

ENDPOINT = "--rdzv-endpoint="
IS_HOST = "--rdzv-conf=is_host=true"


def bind_rendezvous(args: list[str]) -> tuple[list[str], object]:
    """The arguments with the endpoint's real port, and the bound store (kept alive while torchrun runs)."""
    endpoint = next((arg for arg in args if arg.startswith(ENDPOINT)), None)
    if endpoint is None or IS_HOST not in args:
        return args, None
    host, _, port = endpoint.removeprefix(ENDPOINT).rpartition(":")
    store = bound_store(host.strip("[]"), int(port))
    return [f"{ENDPOINT}{host}:{store.port}" if arg == endpoint else arg for arg in args], store


def main(args: list[str]) -> int:
    # The ranks build their process group from a store of their own (see the docstring).
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    args, _store = bind_rendezvous(args)
    try:
        torchrun_main(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        print(f"torchrun: rank {rank} exited with code {failure.exitcode}", file=sys.stderr, flush=True)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    gc.freeze()  # torch is loaded: exit without walking its objects once more (pretrain/cli/__init__.py)
    sys.exit(code)
