"""The data build: raw corpora -> clean, deduplicated documents -> BPE tokenizer -> Arrow shards.

A Ray Data pipeline over work units (runs of input files, see `sources.py`).
On a laptop it runs on an in-process Ray; given `ray_address` (or
`RAY_ADDRESS`) the same code runs on a Ray cluster, whose workers must see
the output folder (a shared filesystem).

    plan    the units, from the config and the files alone
    scan    Ray tasks: read, clean, filter, hash (and MinHash); count rejects and filters
    dedup   Ray tasks, one per hash partition: the first copy of each hash, corpus-wide,
            and candidate near-duplicates; then one task clusters them (dedup.py)
    sample  Ray tasks: the tokenizer's training texts (the smallest hashes)
    write   actor pool: read, clean, tokenize, write each unit's shards
    finish  rejects and near-duplicate samples, manifest (last)

The driver holds no per-document state: keys travel between tasks as files
in `_build/`.

Everything a pass finishes is recorded under `_build/` in the output folder:
a build that is killed resumes where it stopped, and writes the same bytes
as one that was not.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import ray

from data_pipeline.cleaning import HASH_BYTES
from data_pipeline.config import DataConfig
from data_pipeline.dedup import cluster_near_duplicates, dedup_partition, partitions
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
from data_pipeline.manifest import assemble_manifest, write_near_duplicates, write_rejects
from data_pipeline.ray_session import get, start_ray, stop_ray
from data_pipeline.shards import read_manifest, write_manifest
from data_pipeline.sources import WorkUnit, plan_fingerprint, plan_units
from data_pipeline.tokenizer import load_tokenizer, train_tokenizer
from data_pipeline.work import (
    EXAMPLE_CHARS,
    TokenizeUnits,
    sample_unit,
    scan_unit,
    smallest_kept_keys,
    texts_at,
    unit_marker,
)

NEAR_SAMPLE = 100  # removed near-duplicates written to near_duplicates.jsonl, with the documents kept for them


def build_dataset(
    config: DataConfig,
    resolved_config: dict,
    ray_address: str | None = None,
    say: Callable[[str], None] = lambda line: None,
    verbose: bool = False,
    force: bool = False,
) -> dict:
    """Build (or finish building) shards and manifest in `config.output_dir`; return the manifest.

    A dataset already built from the same plan (settings, tokenizer, and the
    inputs' sizes and modification times) is left as it is, unless `force`.
    `say` gets one line as each pass starts. Ray's own INFO lines are hidden unless `verbose`.
    """
    started = time.time()
    if config.tokenizer.path and not Path(config.tokenizer.path).is_file():
        raise DataError(f"data.tokenizer.path: {config.tokenizer.path} does not exist; give a tokenizer.json or null")
    units = plan_units(config)  # bad sources fail here, before any work
    out_dir = Path(config.output_dir)
    _refuse_foreign_files(out_dir)  # before the lock, which would add its file to a folder that is not ours
    with FolderLock(out_dir, "pretrain data build"):
        fingerprint = plan_fingerprint(units, config)
        finished = None if force else _finished_build(out_dir, fingerprint)
        if finished is not None:
            say(
                f"up to date: {out_dir} was built from these inputs and settings (plan {fingerprint}); --force rebuilds"
            )
            return finished
        resumed = _prepare_output_dir(out_dir, units, fingerprint, resume=not force)
        passes = Passes(say)
        passes.start("ray_start")
        start_ray(ray_address, verbose)
        return _build_holding_the_folder(config, resolved_config, units, out_dir, resumed, started, passes)


class Passes:
    """Says each pass as it starts, and times it for the manifest's stats."""

    def __init__(self, say: Callable[[str], None]):
        self.say, self.seconds = say, {}
        self.current, self.since = None, 0.0

    def start(self, name: str, line: str | None = None) -> None:
        self.stop()
        if line:
            self.say(line)
        self.current, self.since = name, time.perf_counter()

    def stop(self) -> None:
        if self.current:
            self.seconds[self.current] = round(time.perf_counter() - self.since, 2)
            self.current = None


def _build_holding_the_folder(config, resolved_config: dict, units, out_dir: Path, resumed, started, passes) -> dict:
    """The build once the folder is locked and Ray started; stops Ray when the work in Ray is done."""
    parts = partitions(sum(f.size for u in units for f in u.files), config)
    near = config.cleaning.near_dedup.enabled
    try:
        passes.start(
            "scan", f"pass 1/4: reading, cleaning and hashing {len(units)} unit(s) of {len(config.sources)} source(s)"
        )
        scans = _scan(units, config, out_dir, parts)
        _refuse_an_empty_corpus(scans)
        passes.start("dedup", f"pass 2/4: deduplicating{' and removing near-duplicates' if near else ''}")
        _deduplicate(len(units), parts, config, out_dir)
        passes.start("tokenizer", f"pass 3/4: {'loading' if config.tokenizer.path else 'training'} the tokenizer")
        tokenizer_path = _tokenizer(units, scans, parts, config, out_dir)
        passes.start("write", "pass 4/4: tokenizing and writing shards")
        _write_units(units, scans, parts, config, tokenizer_path, out_dir)
        markers = [json.loads(unit_marker(out_dir, unit.index).read_text()) for unit in units]
        passes.start("finish")
        if near:
            write_near_duplicates(out_dir, _near_pairs(units, markers, config, out_dir))
    finally:
        stop_ray()
    write_rejects(out_dir, [s["rejects"] for s in scans])
    plan = json.loads((out_dir / WORK_DIR / PLAN_NAME).read_text())["fingerprint"]
    passes.stop()
    stats = {
        "seconds": round(time.time() - started, 1),
        "resumed": resumed,
        "units": len(units),
        "plan": plan,
        "pass_seconds": passes.seconds,
    }
    manifest = assemble_manifest(
        units, scans, markers, load_tokenizer(tokenizer_path), tokenizer_path, stats, config.val_fraction
    )
    manifest["config"] = resolved_config
    write_manifest(out_dir, manifest)
    shutil.rmtree(out_dir / WORK_DIR)
    return manifest


def _finished_build(out_dir: Path, fingerprint: str) -> dict | None:
    """The manifest of a finished build of this plan whose shards are all there (read_manifest checks), else None."""
    try:
        manifest = read_manifest(out_dir)
    except DataError:  # no dataset, a half-written one, or a shard missing
        return None
    return {**manifest, "up_to_date": True} if manifest["stats"].get("plan") == fingerprint else None


def _prepare_output_dir(out_dir: Path, units: list[WorkUnit], fingerprint: str, resume: bool) -> bool:
    """Resume the unfinished build of the same plan, or start from an empty folder; True when resuming.

    A previous dataset is replaced; a folder holding anything else is left alone.
    """
    plan_path = out_dir / WORK_DIR / PLAN_NAME
    if resume and plan_path.is_file() and json.loads(plan_path.read_text()).get("fingerprint") == fingerprint:
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


def _scan(units: list[WorkUnit], config: DataConfig, out_dir: Path, parts: int) -> list[dict]:
    """Every unit's scan result, from `_build/` where an earlier attempt saved it, else computed and saved.

    The task saves the unit's keys itself (dedup.py); its counts and rejects come back here.
    """
    work = out_dir / WORK_DIR
    todo = [u for u in units if not (work / f"scan-{u.index:05d}.json").is_file()]
    # Plain Ray tasks: small results, and none of a Ray Data execution's start-up cost.
    pending = [ray.remote(scan_unit).remote(unit, config, out_dir, parts) for unit in todo]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        scan = get(done[0])
        write_json_atomically(work / f"scan-{scan['index']:05d}.json", scan)  # last: marks the scan done
    return [json.loads((work / f"scan-{unit.index:05d}.json").read_text()) for unit in units]


def _refuse_an_empty_corpus(scans: list[dict]) -> None:
    """Nothing valid left: name what removed the most, with an example, rather than fail later on an empty split."""
    if sum(s["counts"]["valid"] for s in scans):
        return
    removed: Counter = Counter()
    examples: dict[str, str] = {}
    for scan in scans:
        removed.update({f"filtered by {k}": v for k, v in scan["counts"]["filtered"].items()})
        removed.update({f"rejected as {k}": v for k, v in scan["counts"]["rejected"].items()})
        for reason, text in scan.get("filter_examples", {}).items():
            examples.setdefault(f"filtered by {reason}", repr(text[:120]))
        for reject in scan["rejects"]:
            examples.setdefault(f"rejected as {reject['reason']}", f"{reject['file']}, line {reject['line']}")
    if not removed:
        raise DataError("data.sources: the sources hold no documents; check their paths, format and text_field")
    reason, count = removed.most_common(1)[0]
    raise DataError(
        f"data.sources: no document is left after cleaning; most were {reason} ({count} of {removed.total()}), "
        f"for example {examples.get(reason, '(none kept)')}; relax that rule in data.cleaning or check the sources"
    )


def _deduplicate(units: int, parts: int, config: DataConfig, out_dir: Path) -> None:
    """Exact and near duplicates, partition by partition, then the near-duplicate clusters (dedup.py)."""
    work = out_dir / WORK_DIR
    task = ray.remote(dedup_partition)
    get(
        [
            task.remote(out_dir, units, p, config)
            for p in range(parts)
            if not (work / f"partition-{p:05d}.json").is_file()
        ]
    )
    if config.cleaning.near_dedup.enabled and not (work / "near.json").is_file():
        get(ray.remote(cluster_near_duplicates).remote(out_dir, parts, config))


def _tokenizer(units: list[WorkUnit], scans: list[dict], parts: int, config: DataConfig, out_dir: Path):
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
        limit, first_key = _sample_limit(units, scans, parts, config, out_dir)
        sample = ray.remote(sample_unit)
        texts, hashes = [], []
        for unit_texts, unit_hashes in get(
            [
                sample.remote(u, s["counts"]["valid"], out_dir, parts, config, limit)
                for u, s in zip(units, scans)
                if first_key.get(u.index, limit + 1) <= limit
            ]
        ):
            texts += unit_texts
            hashes.append(unit_hashes)
        order = np.argsort(np.frombuffer(b"".join(hashes), dtype=f"V{HASH_BYTES}"), kind="stable")
        train_tokenizer((texts[i] for i in order), config.tokenizer.vocab_size).save(str(temporary))
    os.replace(temporary, path)
    return path


def _sample_limit(units, scans: list[dict], parts: int, config: DataConfig, out_dir: Path) -> tuple[int, dict]:
    """The largest key of the tokenizer's sample, and each unit's smallest kept key; the driver holds N keys."""
    wanted = config.tokenizer.sample_documents
    smallest = ray.remote(smallest_kept_keys)
    pending = {
        smallest.remote(u, s["counts"]["valid"], out_dir, parts, config, wanted): u for u, s in zip(units, scans)
    }
    keys, first_key = np.zeros(0, dtype=np.uint64), {}
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        unit_keys = get(ref)
        if len(unit_keys):
            first_key[pending[ref].index] = int(unit_keys[0])
            keys = np.sort(np.concatenate([keys, unit_keys]))[:wanted]
        del pending[ref]
    return int(keys[-1]), first_key


def _write_units(units, scans: list[dict], parts: int, config: DataConfig, tokenizer_path: Path, out_dir: Path):
    """Tokenize and write every unit without a completion marker."""
    todo = [(u, s) for u, s in zip(units, scans) if not unit_marker(out_dir, u.index).is_file()]
    if not todo:
        return
    rows = ray.data.from_items(
        [{"unit": json.dumps(u.to_dict()), "valid": s["counts"]["valid"]} for u, s in todo],
        override_num_blocks=len(todo),
    )
    node_cpus = [int(n["Resources"]["CPU"]) for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
    written = rows.map_batches(
        TokenizeUnits,
        fn_constructor_kwargs={
            "config": config.model_dump(),
            "tokenizer_path": str(tokenizer_path.resolve()),
            "out_dir": str(out_dir.resolve()),
            "parts": parts,
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


def _near_pairs(units: list[WorkUnit], markers: list[dict], config: DataConfig, out_dir: Path) -> list[dict]:
    """A sample of removed near-duplicates, each beside the document kept for it (read again by Ray tasks)."""
    examples = [(unit, e) for unit, m in zip(units, markers) for e in m.get("near_examples", [])][:NEAR_SAMPLE]
    wanted: dict[int, set[int]] = {}
    for _, example in examples:
        wanted.setdefault(example["kept"] >> 32, set()).add(example["kept"] & 0xFFFFFFFF)
    found = get([ray.remote(texts_at).remote(units[u], config, out_dir, sorted(p)) for u, p in wanted.items()])
    kept = {(u << 32) | p: text for u, texts in zip(wanted, found) for p, text in texts.items()}
    return [
        {
            "source": unit.source,
            "similarity": example["similarity"],
            "removed": example["text"],
            "kept": kept[example["kept"]][:EXAMPLE_CHARS],
            "kept_source": units[example["kept"] >> 32].source,
        }
        for unit, example in examples
    ]
