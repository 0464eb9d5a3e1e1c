"""The data build: raw corpora -> clean, deduplicated documents -> BPE tokenizer -> Arrow shards.

A Ray Data pipeline over work units (runs of input files, see `sources.py`).
On a laptop it runs on an in-process Ray; given `ray_address` (or
`RAY_ADDRESS`) the same code runs on a Ray cluster, whose workers must see
the output folder (a shared filesystem).

    plan    the units, from the config and the files alone
    scan    Ray tasks: read, clean, hash; count rejects and filters
    dedup   the driver keeps the first copy of each hash, corpus-wide
    sample  Ray tasks: the tokenizer's training texts (the smallest hashes)
    write   actor pool: read, clean, tokenize, write each unit's shards
    finish  rejects file, manifest (last)

Everything a pass finishes is recorded under `_build/` in the output folder:
a build that is killed resumes where it stopped, and writes the same bytes
as one that was not.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import ray
from ray._private import ray_constants

import data_pipeline
from data_pipeline.cleaning import HASH_BYTES
from data_pipeline.config import DataConfig
from data_pipeline.errors import DataError
from data_pipeline.layout import (
    DATASET_FILES,
    LOCK_NAME,
    PLAN_NAME,
    TOKENIZER_NAME,
    WORK_DIR,
    write_json_atomically,
)
from data_pipeline.locks import FolderLock
from data_pipeline.manifest import assemble_manifest, write_rejects
from data_pipeline.shards import write_manifest
from data_pipeline.sources import WorkUnit, plan_fingerprint, plan_units
from data_pipeline.tokenizer import load_tokenizer, train_tokenizer
from data_pipeline.work import (
    TokenizeUnits,
    dedup_keep_mask,
    sample_unit,
    scan_unit,
    unit_marker,
)

RAY_CLUSTER_MODE = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR  # "0": Ray's single-machine mode, on loopback


def build_dataset(
    config: DataConfig,
    resolved_config: dict,
    ray_address: str | None = None,
    say: Callable[[str], None] = lambda line: None,
    verbose: bool = False,
) -> dict:
    """Build (or finish building) shards and manifest in `config.output_dir`; return the manifest.

    `say` gets one line as each pass starts. Ray's own INFO lines are hidden unless `verbose`.
    """
    started = time.time()
    if config.tokenizer.path and not Path(config.tokenizer.path).is_file():
        raise DataError(f"data.tokenizer.path: {config.tokenizer.path} does not exist; give a tokenizer.json or null")
    units = plan_units(config)  # bad sources fail here, before any work
    out_dir = Path(config.output_dir)
    _refuse_foreign_files(out_dir)  # before the lock, which would add its file to a folder that is not ours
    with FolderLock(out_dir, "pretrain data build"):
        resumed = _prepare_output_dir(out_dir, units, config)
        _start_ray(ray_address, verbose)
        return _build_holding_the_folder(config, resolved_config, units, out_dir, resumed, started, say)


def _build_holding_the_folder(config, resolved_config: dict, units, out_dir: Path, resumed, started, say) -> dict:
    """The build once the folder is locked and Ray started; stops Ray when the work in Ray is done."""
    try:
        say(f"pass 1/4: reading, cleaning and hashing {len(units)} unit(s) of {len(config.sources)} source(s)")
        scans = _scan(units, config, out_dir)
        say("pass 2/4: deduplicating")
        keep = _split_by_unit(dedup_keep_mask(b"".join(s["hashes"] for s in scans), config.cleaning.deduplicate), scans)
        say(f"pass 3/4: {'loading' if config.tokenizer.path else 'training'} the tokenizer")
        tokenizer_path = _tokenizer(units, scans, keep, config, out_dir)
        say("pass 4/4: tokenizing and writing shards")
        _write_units(units, keep, config, tokenizer_path, out_dir)
    finally:
        _stop_ray()
    markers = [json.loads(unit_marker(out_dir, unit.index).read_text()) for unit in units]
    write_rejects(out_dir, [s["rejects"] for s in scans])
    stats = {"seconds": round(time.time() - started, 1), "resumed": resumed, "units": len(units)}
    manifest = assemble_manifest(units, scans, markers, load_tokenizer(tokenizer_path), tokenizer_path, stats)
    manifest["config"] = resolved_config
    write_manifest(out_dir, manifest)
    shutil.rmtree(out_dir / WORK_DIR)
    return manifest


def _prepare_output_dir(out_dir: Path, units: list[WorkUnit], config: DataConfig) -> bool:
    """Resume the unfinished build of the same plan, or start from an empty folder; True when resuming.

    A previous dataset is replaced; a folder holding anything else is left alone.
    """
    fingerprint = plan_fingerprint(units, config)
    plan_path = out_dir / WORK_DIR / PLAN_NAME
    if plan_path.is_file() and json.loads(plan_path.read_text()).get("fingerprint") == fingerprint:
        return True
    _refuse_foreign_files(out_dir)
    for path in out_dir.iterdir():
        if path.name == LOCK_NAME:  # held by this build
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    (out_dir / WORK_DIR).mkdir(parents=True)
    write_json_atomically(plan_path, {"fingerprint": fingerprint, "units": [u.to_dict() for u in units]})
    return False


def _refuse_foreign_files(out_dir: Path) -> None:
    if not out_dir.is_dir():
        return
    names = [p.name for p in out_dir.iterdir() if p.name != LOCK_NAME]
    foreign = [name for name in names if not any(fnmatch(name, pattern) for pattern in DATASET_FILES)]
    if foreign:
        raise DataError(
            f"data.output_dir: {out_dir} holds files that are not a dataset's ({', '.join(sorted(foreign)[:5])}); "
            f"choose an empty or new folder"
        )


def _start_ray(ray_address: str | None, verbose: bool = False) -> None:
    address = ray_address or os.environ.get("RAY_ADDRESS")
    # On a cluster the workers import this package from the driver's copy, installed or not.
    runtime_env = {"py_modules": [os.path.dirname(data_pipeline.__file__)]} if address else None
    if not address:
        _loopback_only(True)
    # Without an address, a Ray of our own: ray.init() would otherwise join whatever cluster
    # /tmp/ray/ray_current_cluster names, and wait forever on one that died without cleaning up.
    if not verbose:
        # Ray's own lines (its start, its executor's plans, its authentication notice) are for debugging Ray.
        logging.getLogger("ray").setLevel(logging.ERROR)
        # Ray Data sets its loggers up again as a dataset runs, at this level.
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    try:
        ray.init(
            address=address or "local",
            runtime_env=runtime_env,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.INFO if verbose else logging.ERROR,
        )
    except BaseException:
        _stop_ray()  # and out of single-machine mode: a later connection to a cluster from this process must work
        raise
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    # A DataError raised by a worker (a source that cannot be opened) reaches the caller as itself.
    context.raise_original_map_exception = True
    # Ray Data's bars on a terminal; elsewhere it would log its progress as INFO lines every few seconds.
    context.enable_progress_bars = verbose or sys.stderr.isatty()


def _loopback_only(on: bool) -> None:
    """A Ray of our own answers on this machine only: every server it starts binds 127.0.0.1.

    That is Ray's single-machine mode (its default on macOS and Windows):
    its processes read the variable when they start, and this process read
    it when it imported Ray, hence the constant too. Turned off again when
    the build ends, for a later connection to a cluster from this process.
    """
    if on:
        os.environ[RAY_CLUSTER_MODE] = "0"
    else:
        os.environ.pop(RAY_CLUSTER_MODE, None)
    ray_constants.ENABLE_RAY_CLUSTER = not on


def _stop_ray() -> None:
    ray.shutdown()
    if os.environ.get(RAY_CLUSTER_MODE) == "0":
        _loopback_only(False)


def _get(refs):
    """`ray.get`, with a worker's DataError (a file that cannot be opened) raised as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, DataError):
            raise err.cause from None
        raise


def _scan(units: list[WorkUnit], config: DataConfig, out_dir: Path) -> list[dict]:
    """Every unit's scan result, from `_build/` where an earlier attempt saved it, else computed and saved."""
    work = out_dir / WORK_DIR
    todo = [u for u in units if not (work / f"scan-{u.index:05d}.json").is_file()]
    # Plain Ray tasks: small results, and none of a Ray Data execution's start-up cost.
    pending = [ray.remote(scan_unit).remote(unit, config) for unit in todo]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        scan = _get(done[0])
        (work / f"scan-{scan['index']:05d}.hashes").write_bytes(scan.pop("hashes"))
        write_json_atomically(work / f"scan-{scan['index']:05d}.json", scan)  # last: marks the scan done
    scans = []
    for unit in units:
        scan = json.loads((work / f"scan-{unit.index:05d}.json").read_text())
        scan["hashes"] = (work / f"scan-{unit.index:05d}.hashes").read_bytes()
        scans.append(scan)
    return scans


def _split_by_unit(mask: np.ndarray, scans: list[dict]) -> list[np.ndarray]:
    bounds = np.cumsum([0] + [len(s["hashes"]) // HASH_BYTES for s in scans])
    return [mask[bounds[i] : bounds[i + 1]] for i in range(len(scans))]


def _tokenizer(units: list[WorkUnit], scans: list[dict], keep: list[np.ndarray], config: DataConfig, out_dir: Path):
    """Load the configured tokenizer, or train one on the kept documents with the smallest hashes."""
    path = out_dir / TOKENIZER_NAME
    if path.is_file():  # saved by an earlier attempt of this build
        return path
    temporary = path.with_name(TOKENIZER_NAME + ".tmp")
    if config.tokenizer.path:
        load_tokenizer(config.tokenizer.path)
        shutil.copyfile(config.tokenizer.path, temporary)
    else:
        # Hashes are uniform: the smallest N are a deterministic, unbiased sample.
        keys = [np.frombuffer(s["hashes"], dtype=">u8")[::2] for s in scans]
        kept = np.concatenate([k[m] for k, m in zip(keys, keep)]) if keys else np.array([], dtype=np.uint64)
        if len(kept) == 0:
            raise DataError("data.sources: no document is left after cleaning; check the sources and data.cleaning")
        limit = np.sort(kept)[min(len(kept), config.tokenizer.sample_documents) - 1]
        wanted = [(k <= limit) & m for k, m in zip(keys, keep)]
        sample = ray.remote(sample_unit)
        texts, hashes = [], []
        for unit_texts, unit_hashes in _get([sample.remote(u, config, w) for u, w in zip(units, wanted) if w.any()]):
            texts += unit_texts
            hashes.append(unit_hashes)
        order = np.argsort(np.frombuffer(b"".join(hashes), dtype=f"V{HASH_BYTES}"), kind="stable")
        train_tokenizer((texts[i] for i in order), config.tokenizer.vocab_size).save(str(temporary))
    os.replace(temporary, path)
    return path


def _write_units(units, keep: list[np.ndarray], config: DataConfig, tokenizer_path: Path, out_dir: Path) -> None:
    """Tokenize and write every unit without a completion marker."""
    todo = [u for u in units if not unit_marker(out_dir, u.index).is_file()]
    if not todo:
        return
    rows = ray.data.from_items(
        [{"unit": json.dumps(u.to_dict()), "keep": np.packbits(keep[u.index]).tobytes()} for u in todo],
        override_num_blocks=len(todo),
    )
    node_cpus = [int(n["Resources"]["CPU"]) for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
    written = rows.map_batches(
        TokenizeUnits,
        fn_constructor_kwargs={
            "config": config.model_dump(),
            "tokenizer_path": str(tokenizer_path.resolve()),
            "out_dir": str(out_dir.resolve()),
        },
        batch_size=1,
        # One actor per node: its tokenizer already encodes on every core of the node (and
        # measured faster than one single-threaded actor per core). It reserves all but one
        # CPU, which stays free for Ray's own work, and Ray Data's default scheduling for actors (SPREAD)
        # puts each on a node of its own.
        compute=ray.data.ActorPoolStrategy(size=max(1, min(len(todo), len(node_cpus)))),
        num_cpus=max(1, min(node_cpus) - 1),
    )
    for _ in written.iter_rows():
        pass  # each actor writes its unit's marker itself, so progress survives a driver that dies
