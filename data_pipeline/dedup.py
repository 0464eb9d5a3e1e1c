"""Corpus-wide deduplication in Ray tasks, partitioned by hash: no process holds the whole corpus's index.

    scan (per unit)     writes its documents' keys to _build/, grouped by partition:
                          exact-U.npy   16-byte content hash and position, per document (20 B)
                          bands-U.npy   one 8-byte key and position per LSH band and document (12 B each)
                          signatures-U.npy   the MinHash signature (4 B per hash; near_dedup)
                          offsets-U.npy where each partition starts in the two key files
    partition (P tasks) reads its slice of every unit's keys, sorted by (key, unit, position):
                          a repeated hash is an exact duplicate of the first (in plan order);
                          documents sharing a band key are candidate near-duplicate pairs
    cluster (1 task)    checks each candidate pair on its signatures, joins the pairs into
                          connected components and keeps each component's first document
    write (per unit)    reads which of its documents were removed (`removed_in_unit`)

A partition holds the keys of 1/P of the documents (P from
`data.cleaning.dedup_partition_mb`) while it sorts them: about 50 bytes per
document for exact duplicates (key, unit, order, sort index) and 36 per band
for near ones. The cluster task holds only candidate pairs (16 bytes each),
and the signatures of a million pairs at a time while it checks them. "First in plan order" makes the result the
same for any P, any number of nodes and any resumption.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from data_pipeline.cleaning import HASH_BYTES
from data_pipeline.config import DataConfig
from data_pipeline.layout import WORK_DIR, write_atomically, write_json_atomically
from data_pipeline.minhash import MinHasher, choose_bands, similarity

EXACT = np.dtype([("hash", f"V{HASH_BYTES}"), ("position", "<u4")])
BANDS = np.dtype([("key", "<u8"), ("position", "<u4")])
CHECK_CHUNK = 1_000_000  # candidate pairs whose signatures are read at once (1 GB of 128-hash signatures)
# A document's place in the plan: its unit in the high 32 bits, its position among the unit's documents below.
NEAR = np.dtype([("order", "<u8"), ("kept", "<u8"), ("similarity", "<f4")])


def order_of(unit: int | np.ndarray, position: np.ndarray) -> np.ndarray:
    return (np.asarray(unit, dtype=np.uint64) << np.uint64(32)) | position.astype(np.uint64)


def partitions(total_bytes: int, config: DataConfig) -> int:
    return max(1, math.ceil(total_bytes / (config.cleaning.dedup_partition_mb * 1e6)))


def minhasher(config: DataConfig) -> MinHasher:
    near = config.cleaning.near_dedup
    bands, rows = (near.bands, near.rows) if near.bands else choose_bands(near.threshold, near.num_hashes)
    return MinHasher(near.ngram, near.num_hashes, bands, rows, near.seed)


def _path(out_dir: Path, name: str, index: int) -> Path:
    return out_dir / WORK_DIR / f"{name}-{index:05d}.npy"


def save_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomically(path, buffer.getvalue())


def load_array(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)  # only the pages a slice touches are read


def save_unit_keys(out_dir: Path, unit: int, hashes: bytes, signatures: np.ndarray | None, config, parts: int):
    """The scan's output for one unit: its keys grouped by partition, and the offsets of each partition."""
    exact = np.zeros(len(hashes) // HASH_BYTES, dtype=EXACT)
    exact["hash"] = np.frombuffer(hashes, dtype=EXACT["hash"])
    exact["position"] = np.arange(len(exact))
    home = np.frombuffer(hashes, dtype=">u8")[::2] % np.uint64(parts)
    exact = exact[np.argsort(home, kind="stable")]
    offsets = [np.searchsorted(np.sort(home), np.arange(parts + 1))]
    if signatures is not None:
        keys = minhasher(config).band_keys(signatures)
        bands = np.zeros(keys.size, dtype=BANDS)
        bands["key"] = keys.ravel()
        bands["position"] = np.repeat(np.arange(len(keys)), keys.shape[1])
        home = bands["key"] % np.uint64(parts)
        bands = bands[np.argsort(home, kind="stable")]
        offsets.append(np.searchsorted(np.sort(home), np.arange(parts + 1)))
        save_array(_path(out_dir, "bands", unit), bands)
        save_array(_path(out_dir, "signatures", unit), signatures)
    save_array(_path(out_dir, "exact", unit), exact)
    save_array(_path(out_dir, "offsets", unit), np.stack(offsets))


def hash_keys(out_dir: Path, unit: int, valid: int) -> np.ndarray:
    """The first 8 bytes of each of the unit's content hashes, as integers, in document order."""
    exact = np.array(load_array(_path(out_dir, "exact", unit)))
    keys = np.zeros(valid, dtype=np.uint64)
    keys[exact["position"]] = np.frombuffer(exact["hash"].tobytes(), dtype=">u8")[::2]
    return keys


def _slices(out_dir: Path, units: int, part: int, name: str, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Partition `part` of every unit's `name` keys, and the unit each row came from."""
    pieces, owners = [], []
    for unit in range(units):
        start, end = load_array(_path(out_dir, "offsets", unit))[row, part : part + 2]
        pieces.append(np.array(load_array(_path(out_dir, name, unit))[start:end]))
        owners.append(np.full(end - start, unit, dtype=np.uint64))
    return np.concatenate(pieces), np.concatenate(owners)


def _starts(sorted_keys: np.ndarray) -> np.ndarray:
    """True where a run of equal keys starts."""
    starts = np.ones(len(sorted_keys), dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return starts


def dedup_partition(out_dir: Path, units: int, part: int, config: DataConfig) -> dict:
    """Exact duplicates and candidate near-duplicate pairs among the keys of one partition."""
    duplicates = np.zeros(0, dtype=np.uint64)
    if config.cleaning.deduplicate:
        rows, owners = _slices(out_dir, units, part, "exact", 0)
        orders = order_of(owners, rows["position"])
        hashes = rows["hash"].view(f"S{HASH_BYTES}")  # byte strings sort, void does not
        by_key = np.lexsort((orders, hashes))
        duplicates = np.sort(orders[by_key][~_starts(hashes[by_key])])
    save_array(_path(out_dir, "duplicates", part), duplicates)
    edges = np.zeros((0, 2), dtype=np.uint64)
    if config.cleaning.near_dedup.enabled:
        rows, owners = _slices(out_dir, units, part, "bands", 1)
        orders = order_of(owners, rows["position"])
        by_key = np.lexsort((orders, rows["key"]))
        keys, orders = rows["key"][by_key], orders[by_key]
        starts = _starts(keys)
        first = orders[starts][np.cumsum(starts) - 1]  # each bucket's first document, for every member
        edges = np.unique(np.stack([orders[~starts], first[~starts]], axis=1), axis=0)
    save_array(_path(out_dir, "edges", part), edges)
    marker = {"partition": part, "duplicates": len(duplicates), "candidate_pairs": len(edges)}
    write_json_atomically(out_dir / WORK_DIR / f"partition-{part:05d}.json", marker)
    return marker


def _signatures_of(out_dir: Path, orders: np.ndarray) -> np.ndarray:
    units, positions = orders >> np.uint64(32), orders & np.uint64(0xFFFFFFFF)
    found = None
    for unit in np.unique(units):
        mine = units == unit
        rows = np.array(load_array(_path(out_dir, "signatures", int(unit)))[positions[mine].astype(np.int64)])
        if found is None:
            found = np.zeros((len(orders), rows.shape[1]), dtype=rows.dtype)
        found[mine] = rows
    return found


def _similarities(out_dir: Path, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The estimated similarity of each pair of documents, a chunk of pairs at a time (bounded memory)."""
    found = np.zeros(len(left), dtype=np.float32)
    for start in range(0, len(left), CHECK_CHUNK):
        chunk = slice(start, start + CHECK_CHUNK)
        found[chunk] = similarity(_signatures_of(out_dir, left[chunk]), _signatures_of(out_dir, right[chunk]))
    return found


def _components(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every document of a pair, and the first document of its connected component (label propagation)."""
    nodes, index = np.unique(edges, return_inverse=True)
    index = index.reshape(edges.shape)
    label = np.arange(len(nodes))
    while True:  # each round moves the smallest label one edge further; rounds = the widest component's span
        low = np.minimum(label[index[:, 0]], label[index[:, 1]])
        before = label.copy()
        np.minimum.at(label, index[:, 0], low)
        np.minimum.at(label, index[:, 1], low)
        label = label[label]  # jump along the labels found so far
        if np.array_equal(label, before):
            return nodes, nodes[label]


def cluster_near_duplicates(out_dir: Path, parts: int, config: DataConfig) -> dict:
    """Check the candidate pairs, cluster them, and write the removed documents with the one each is kept for."""
    edges = np.concatenate([np.array(load_array(_path(out_dir, "edges", p))) for p in range(parts)])
    edges = np.unique(edges, axis=0) if len(edges) else edges.reshape(0, 2)
    if len(edges):
        edges = edges[_similarities(out_dir, edges[:, 0], edges[:, 1]) >= config.cleaning.near_dedup.threshold]
    removed = np.zeros(0, dtype=NEAR)
    if len(edges):
        nodes, kept = _components(edges)
        gone = nodes != kept
        removed = np.zeros(int(gone.sum()), dtype=NEAR)
        removed["order"], removed["kept"] = nodes[gone], kept[gone]
        removed["similarity"] = _similarities(out_dir, removed["order"], removed["kept"])
    save_array(out_dir / WORK_DIR / "near-removed.npy", removed)
    marker = {"pairs_checked": len(edges), "removed": len(removed)}
    write_json_atomically(out_dir / WORK_DIR / "near.json", marker)
    return marker


def removed_in_unit(out_dir: Path, unit: int, valid: int, parts: int, config: DataConfig):
    """(exact duplicates, near-duplicates) of one unit as boolean masks over its documents, and the near rows."""
    low, high = (np.uint64(u) << np.uint64(32) for u in (unit, unit + 1))  # the unit's range of orders
    exact = np.zeros(valid, dtype=bool)
    if config.cleaning.deduplicate:
        for part in range(parts):
            found = load_array(_path(out_dir, "duplicates", part))
            mine = np.array(found[np.searchsorted(found, low) : np.searchsorted(found, high)])
            exact[(mine - low).astype(np.int64)] = True
    near = np.zeros(valid, dtype=bool)
    rows = np.zeros(0, dtype=NEAR)
    if config.cleaning.near_dedup.enabled:
        found = load_array(out_dir / WORK_DIR / "near-removed.npy")
        rows = np.array(found[np.searchsorted(found["order"], low) : np.searchsorted(found["order"], high)])
        near[(rows["order"] - low).astype(np.int64)] = True
        near &= ~exact  # an exact copy is counted as a duplicate
    return exact, near, rows
