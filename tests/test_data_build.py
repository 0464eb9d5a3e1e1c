"""The Ray Data build on real, messy files: nothing lost, nothing silent, same bytes however it runs."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tokenizers import Tokenizer

from data_pipeline.build import build_dataset
from data_pipeline.config import DataConfig
from data_pipeline.errors import DataError
from data_pipeline.shards import read_manifest, verify_dataset
from data_pipeline.sources import plan_fingerprint, plan_units
from data_pipeline.tokenizer import END_OF_TEXT, file_sha256

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def write_corpus(root: Path, documents: list[str]) -> dict[str, list[str]]:
    """Three sources in every layout, with bad records of every kind; returns the documents each must keep."""
    web, code, lines = root / "web", root / "code", root / "lines"
    for folder in (web, code, lines):
        folder.mkdir(parents=True)
    with open(web / "a.jsonl", "wb") as f:
        f.writelines(json.dumps({"text": text}).encode() + b"\n" for text in documents[:150])
        f.write(b'{"text": "malformed\n')  # invalid_json
        f.write(json.dumps({"body": "no text"}).encode() + b"\n")  # missing_field
        f.write(json.dumps({"text": ["not", "a", "string"]}).encode() + b"\n")  # not_a_string
        f.write(b'{"text": "invalid \xff utf-8 in an otherwise fine document"}\n')  # invalid_utf8
        f.write(json.dumps({"text": "   "}).encode() + b"\n")  # filtered: empty
        f.write(json.dumps({"text": "short"}).encode() + b"\n")  # filtered: too_short
        f.write(json.dumps({"text": "lone \ud800 surrogate " + documents[150]}).encode() + b"\n")
        f.write(json.dumps({"text": documents[0]}).encode() + b"\n")  # duplicate within the source
        f.write(json.dumps({"text": documents[2] + " Indeed so."}).encode() + b"\n")  # near-duplicate
        f.write(json.dumps({"text": "Lorem ipsum dolor sit amet, consectetur adipiscing elit."}).encode() + b"\n")
    with gzip.open(web / "huge.jsonl.gz", "wt") as f:  # one 50 MB document: filtered as too_long
        f.write(json.dumps({"text": "word " * 10_000_000}) + "\n")
    with pa.CompressedOutputStream(str(web / "b.jsonl.zst"), "zstd") as f:
        f.write("".join(json.dumps({"text": t}) + "\n" for t in documents[151:250]).encode())
    data = gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in documents[250:300]).encode())
    (web / "c.jsonl.gz").write_bytes(data[: len(data) // 2])  # truncated: a prefix survives
    meta = [{"body": t} for t in documents[300:400]] + [{"body": None}, {"body": documents[1]}]  # null, duplicate
    meta.append({"body": "So: " + documents[3]})  # a near-duplicate of a web document
    pq.write_table(pa.table({"meta": meta}), code / "part-0.parquet")
    (lines / "one-per-line.txt").write_text("\n".join(documents[400:450]) + "\n")
    return {
        "web": documents[:150] + ["lone ? surrogate " + documents[150]] + documents[151:250],
        "code": documents[300:400],
        "lines": documents[400:450],
    }


def data_config(root: Path, out_dir: Path) -> dict:
    return {
        "sources": [
            {"name": "web", "paths": [str(root / "web")]},
            {"name": "code", "paths": [str(root / "code" / "*.parquet")], "text_field": "meta.body"},
            {"name": "lines", "paths": [f"file://{root / 'lines'}"], "format": "text", "text_unit": "line"},
        ],
        "output_dir": str(out_dir),
        "val_fraction": 0.1,
        "shard_size_mb": 0.02,  # several units per source
        "tokenizer": {"vocab_size": 400},
        "cleaning": {
            "near_dedup": {"enabled": True},
            "dedup_partition_mb": 0.05,  # several partitions
            # C4's rules, all but its document-level lorem ipsum one switched off, keep every synthetic document.
            "filters": {
                "c4": {
                    "enabled": True,
                    "min_sentences": 0,
                    "min_words_per_line": 0,
                    "terminal_punctuation": False,
                    "curly_braces": False,
                }
            },
        },
    }


def run_cli(args: list[str], env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pretrain.cli", *args], cwd=ROOT, env={**os.environ, **(env or {})}, **popen
    )


def write_config_file(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def shard_bytes(out_dir: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(out_dir.glob("*.arrow"))} | {
        "tokenizer.json": file_sha256(out_dir / "tokenizer.json")
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, make_documents):
    root = tmp_path_factory.mktemp("messy")
    expected = write_corpus(root / "corpus", make_documents(450))
    config = data_config(root / "corpus", root / "out")
    manifest = build_dataset(DataConfig(**config), {"data": config})
    return root, expected, manifest


def decoded_documents(out_dir: Path, manifest: dict) -> dict[str, list[str]]:
    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    eot = tokenizer.token_to_id(END_OF_TEXT)
    found: dict[str, list[str]] = {}
    for shard in manifest["shards"]:
        column = pa.ipc.open_file(pa.memory_map(str(out_dir / shard["file"]))).get_batch(0).column("tokens")
        assert column.type == pa.list_(pa.uint16())
        for tokens in column.to_pylist():
            assert tokens[-1] == eot and eot not in tokens[:-1]
            found.setdefault(shard["source"], []).append(tokenizer.decode(tokens[:-1]))
    return found


def test_every_valid_document_is_written_once_in_its_source(built):
    root, expected, manifest = built
    found = decoded_documents(root / "out", manifest)
    assert sorted(found["code"]) == sorted(expected["code"])  # its copy of a web document is removed
    assert sorted(found["lines"]) == sorted(expected["lines"])
    # The truncated .gz file keeps a prefix of its documents.
    recovered = [t for t in found["web"] if t not in expected["web"]]
    assert sorted(found["web"]) == sorted(expected["web"] + recovered) and len(recovered) > 5
    assert all(shard["file"].split("-")[1] == shard["source"] for shard in manifest["shards"])


def test_counts_balance_and_every_reject_is_named(built):
    root, _, manifest = built
    web = manifest["sources"]["web"]
    assert web["rejected"] == {
        "invalid_json": 1,
        "invalid_utf8": 1,
        "missing_field": 1,
        "not_a_string": 1,
        "truncated_file": 1,
    }
    assert web["filtered"] == {"c4.lorem_ipsum": 1, "empty": 1, "too_long": 1, "too_short": 1}
    code = manifest["sources"]["code"]
    assert web["duplicates"] == 1 and code["duplicates"] == 1
    assert web["near_duplicates"] == 1 and code["near_duplicates"] == 1
    assert code["rejected"] == {"missing_field": 1}
    assert web["files"] == 4, "a.jsonl is cut into several units but is one file"
    for counts in manifest["sources"].values():
        removed = counts["duplicates"] + counts["near_duplicates"] + sum(counts["filtered"].values())
        assert counts["documents_in"] == counts["documents_written"] + removed
        assert counts["records"] == counts["documents_in"] + sum(counts["rejected"].values())
    rejects = [json.loads(line) for line in (root / "out" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == sum(manifest["rejected"].values()) == 6
    first = rejects[0]
    assert (Path(first["file"]).name, first["line"], first["reason"]) == ("a.jsonl", 151, "invalid_json")
    pairs = [json.loads(line) for line in (root / "out" / "near_duplicates.jsonl").read_text().splitlines()]
    assert {(p["source"], p["kept_source"], p["removed"][:12]) for p in pairs} == {
        ("web", "web", "Document 2. "),
        ("code", "web", "So: Document"),
    }
    assert all(p["similarity"] >= 0.8 and p["kept"][:100] in p["removed"] for p in pairs)
    assert {(Path(r["file"]).name, r["reason"]) for r in rejects} >= {
        ("c.jsonl.gz", "truncated_file"),
        ("part-0.parquet", "missing_field"),
    }


def test_manifest_describes_shards_tokenizer_and_versions(built):
    root, _, manifest = built
    out_dir = root / "out"
    assert read_manifest(out_dir) == manifest
    assert verify_dataset(out_dir)["fingerprint"] == manifest["fingerprint"]
    assert manifest["tokenizer"]["sha256"] == file_sha256(out_dir / "tokenizer.json")
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] <= 400
    assert set(manifest["versions"]) >= {"pyarrow", "tokenizers", "ray", "python"}
    assert manifest["config"]["data"]["sources"][1]["text_field"] == "meta.body"
    for shard in manifest["shards"]:
        assert shard["sha256"] == file_sha256(out_dir / shard["file"])
        assert shard["bytes"] == (out_dir / shard["file"]).stat().st_size
    assert len({s["file"].rsplit("-", 2)[0] for s in manifest["shards"]}) == 6, "train and val of 3 sources"
    assert not (out_dir / "_build").exists()


def test_a_build_killed_at_any_point_resumes_to_the_same_bytes(built, tmp_path):
    root, _, manifest = built
    config = write_config_file(tmp_path / "data.yaml", data_config(root / "corpus", tmp_path / "out"))
    markers = tmp_path / "out" / "_build"
    # Killed during the scan, during deduplication and during the write (each after its first marker).
    for marker_glob in ("scan-*.json", "partition-*.json", "unit-*.json"):
        job = run_cli(["data", "build", "--config", str(config)], start_new_session=True, stdout=subprocess.DEVNULL)
        deadline = time.time() + 240
        while not list(markers.glob(marker_glob)) and job.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert job.poll() is None, "the build finished before it could be killed"
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert not (tmp_path / "out" / "manifest.json").exists()
    finished = run_cli(["data", "build", "--config", str(config)], stdout=subprocess.PIPE, text=True)
    output, _ = finished.communicate(timeout=600)
    assert finished.returncode == 0
    assert "(resumed)" in output
    assert shard_bytes(tmp_path / "out") == shard_bytes(root / "out")
    assert read_manifest(tmp_path / "out")["fingerprint"] == manifest["fingerprint"]


def test_a_two_node_ray_cluster_writes_the_same_shards(built, tmp_path):
    """A cluster of two nodes on this machine (tests/ray_cluster.py, which stops only its own processes: a
    `ray stop` would also stop the Ray of a test running beside this one)."""
    from tests.ray_cluster import RayCluster

    root, _, _ = built
    with RayCluster(tmp_path / "ray", worker_nodes=1, cpus_per_node=1) as cluster:
        config = write_config_file(tmp_path / "data.yaml", data_config(root / "corpus", tmp_path / "out"))
        job = run_cli(
            ["data", "build", "--config", str(config), "--ray-address", cluster.gcs_address],
            env=cluster.auth_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output, _ = job.communicate(timeout=600)
        assert job.returncode == 0, output
        assert sum(node["Alive"] for node in cluster.nodes()) == 2
    cluster.remove_temp_dir()
    assert shard_bytes(tmp_path / "out") == shard_bytes(root / "out")


def test_a_finished_build_is_up_to_date_until_an_input_changes(built):
    root, _, manifest = built
    config = DataConfig(**data_config(root / "corpus", root / "out"))
    said = []
    again = build_dataset(config, {}, say=said.append)
    assert again["up_to_date"] and again["fingerprint"] == manifest["fingerprint"]
    plan = manifest["stats"]["plan"]
    assert said == [
        f"up to date: {root / 'out'} was built from these inputs and settings (plan {plan}); --force rebuilds"
    ]
    touched = root / "corpus" / "lines" / "one-per-line.txt"
    before = touched.stat()
    os.utime(touched, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    try:
        assert plan_fingerprint(plan_units(config), config) != manifest["stats"]["plan"]
    finally:
        os.utime(touched, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert plan_fingerprint(plan_units(config), config) == manifest["stats"]["plan"]


def test_inputs_compared_by_content_ignore_times_and_see_same_size_edits(built):
    root, _, _ = built
    by_content = DataConfig(**data_config(root / "corpus", root / "out"), inputs_changed_by="content")
    by_metadata = DataConfig(**data_config(root / "corpus", root / "out"))
    edited = root / "corpus" / "lines" / "one-per-line.txt"
    before, text = edited.stat(), edited.read_bytes()
    assert b"a" in text  # the byte the edit below changes
    content_plan = plan_fingerprint(plan_units(by_content), by_content)
    metadata_plan = plan_fingerprint(plan_units(by_metadata), by_metadata)
    try:
        os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # a copy: new time, same bytes
        assert plan_fingerprint(plan_units(by_content), by_content) == content_plan
        # The same size and time, another byte: only the content sees it.
        edited.write_bytes(text.replace(b"a", b"b", 1))
        os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert plan_fingerprint(plan_units(by_metadata), by_metadata) == metadata_plan
        assert plan_fingerprint(plan_units(by_content), by_content) != content_plan
    finally:
        edited.write_bytes(text)
        os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_given_tokenizer_is_used_and_every_layout_read(built, corpus_dir, tmp_path):
    root, _, _ = built
    config = DataConfig(
        sources=[{"name": "mixed", "paths": [str(corpus_dir)]}],
        output_dir=str(tmp_path / "out"),
        tokenizer={"path": str(root / "out" / "tokenizer.json")},
        val_fraction=0.1,
    )
    manifest = build_dataset(config, {})
    assert manifest["tokenizer"]["sha256"] == file_sha256(root / "out" / "tokenizer.json")
    counts = manifest["sources"]["mixed"]
    assert (counts["files"], counts["documents_in"], counts["duplicates"], counts["documents_written"]) == (
        12,
        402,
        2,
        400,
    )


def test_a_folder_that_is_not_a_dataset_is_never_replaced(built, tmp_path):
    root, _, _ = built
    out_dir = tmp_path / "project"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("precious")
    config = DataConfig(**data_config(root / "corpus", out_dir))
    with pytest.raises(DataError, match=r"project holds files that are not a dataset's \(notes.txt\)"):
        build_dataset(config, {})
    assert (out_dir / "notes.txt").read_text() == "precious"


def test_a_source_that_cannot_be_opened_fails_the_build_with_its_name(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 but not really")
    config = DataConfig(
        sources=[{"name": "bad", "paths": [str(tmp_path / "broken.parquet")]}], output_dir=str(tmp_path / "o")
    )
    with pytest.raises(DataError, match="broken.parquet: cannot be opened as Parquet"):
        build_dataset(config, {})


def test_inspect_and_verify_commands(built, capsys):
    from pretrain.cli import main

    root, _, manifest = built
    assert main(["data", "inspect", "--dir", str(root / "out")]) == 0
    report = capsys.readouterr().out
    assert f"fingerprint {manifest['fingerprint']}" in report
    assert "web: " in report and "duplicates" in report and "document length (tokens): min" in report
    assert "most frequent tokens:" in report and "sample from train-" in report
    assert main(["data", "verify", "--dir", str(root / "out")]) == 0
    assert f"{len(manifest['shards'])} shards and the tokenizer match" in capsys.readouterr().out


def test_a_ray_that_fails_to_start_leaves_the_process_able_to_join_a_cluster(monkeypatch):
    """The build's own Ray runs in single-machine mode (loopback only); a failed start must not leave it so."""
    from ray._private import ray_constants

    from data_pipeline import ray_session

    def refuse(**kwargs):
        raise RuntimeError("no GCS")

    monkeypatch.setattr(ray_session.ray, "init", refuse)
    with pytest.raises(RuntimeError, match="no GCS"):
        ray_session.start_ray(None)
    assert ray_session.RAY_CLUSTER_MODE not in os.environ
    assert ray_constants.ENABLE_RAY_CLUSTER
