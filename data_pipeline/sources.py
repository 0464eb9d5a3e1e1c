"""Finding the input files of each source, and cutting the work into units.

Files are found through pyarrow filesystems, so a path may be local or a URI
(`file://`, `s3://`, `gs://`, ...). A work unit is a run of consecutive files
of one source, about `shard_size_mb` of input: one worker reads, cleans,
tokenizes and writes a unit in a single call, so its output gets a name that
depends only on the input (`train-web-00003-00.arrow`) and a build that is
killed resumes unit by unit. The plan depends on the config and the files
alone, never on the number of workers, so every cluster writes the same shards.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import sysconfig
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path

import pyarrow.fs as pafs
import xxhash

from data_pipeline.config import EMBEDDED_FORMAT, DataConfig, SourceConfig
from data_pipeline.errors import DataError
from data_pipeline.tokenizer import file_sha256

COMPRESSIONS = ("", ".gz", ".zst")
SUFFIXES = {
    "jsonl": tuple(base + c for base in (".jsonl", ".json") for c in COMPRESSIONS),
    "parquet": (".parquet",),
    "text": tuple(".txt" + c for c in COMPRESSIONS),
    EMBEDDED_FORMAT: (".py",),
}


@dataclass(frozen=True)
class InputFile:
    uri: str  # what the filesystem opens: a local path, or a URI
    size: int
    mtime_ns: int
    format: str  # jsonl | parquet | text | python-docstrings
    # A byte range of a large line-oriented file: the lines that start in [start, end).
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class WorkUnit:
    index: int  # position in the plan
    source: str
    number: int  # position among the units of its source: names its shards
    files: tuple[InputFile, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(row: dict) -> WorkUnit:
        return WorkUnit(
            index=row["index"],
            source=row["source"],
            number=row["number"],
            files=tuple(InputFile(**f) for f in row["files"]),
        )


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a local path or URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pafs.ArrowInvalid, OSError) as err:
        raise DataError(f"{uri}: no filesystem for this URI ({err}); use a local path or a URI pyarrow supports")


def _format_of(path: str, source: SourceConfig) -> str | None:
    """The file's format, or None for a file this source does not read."""
    if source.format != "auto":
        return source.format if path.endswith(SUFFIXES[source.format]) else None
    for name in ("jsonl", "parquet", "text"):
        if path.endswith(SUFFIXES[name]):
            return name
    return None


def _matching(fs: pafs.FileSystem, path: str, pattern: str) -> list[pafs.FileInfo]:
    if not glob.has_magic(path):
        return [fs.get_file_info(path)]
    if isinstance(fs, pafs.LocalFileSystem):
        matches = fs.get_file_info(sorted(glob.glob(path, recursive=True)))
    else:
        # Object stores have no glob: list below the last folder without wildcards and match
        # (there a `*` may also match across folders).
        root = path[: min(path.index(c) for c in "*?[" if c in path)].rpartition("/")[0]
        listing = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        matches = [info for info in listing if fnmatch.fnmatch(info.path, path)]
    if not matches:
        raise DataError(f"data.sources: {pattern!r} matches no file; check the path or glob")
    return matches


def list_source_files(source: SourceConfig) -> list[InputFile]:
    """The source's files, in a fixed order; a path that does not exist or holds nothing readable is an error."""
    if source.format == EMBEDDED_FORMAT and not source.paths:
        return _stdlib_files()
    found: dict[str, InputFile] = {}
    for pattern in source.paths:
        fs, path = filesystem(pattern)
        prefix = pattern[: pattern.index("://") + 3] if "://" in pattern else ""
        for info in _matching(fs, path, pattern):
            if info.type == pafs.FileType.NotFound:
                raise DataError(f"data.sources[{source.name}]: {pattern!r} does not exist")
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(info.path, recursive=True))
                candidates = [i for i in infos if i.type == pafs.FileType.File]
            else:
                candidates = [info]
                if _format_of(info.path, source) is None:
                    raise DataError(
                        f"data.sources[{source.name}]: {info.path!r} is not a {source.format} file; "
                        f"use one of {', '.join(_readable_suffixes(source))} or set the source's format"
                    )
            for candidate in candidates:
                file_format = _format_of(candidate.path, source)
                if file_format is not None:
                    uri = prefix + candidate.path if prefix else candidate.path
                    found[uri] = InputFile(uri, candidate.size, candidate.mtime_ns or 0, file_format)
    if not found:
        raise DataError(
            f"data.sources[{source.name}]: {source.paths} hold no {', '.join(_readable_suffixes(source))} file"
        )
    return [found[uri] for uri in sorted(found)]


def _readable_suffixes(source: SourceConfig) -> tuple[str, ...]:
    if source.format != "auto":
        return SUFFIXES[source.format]
    return SUFFIXES["jsonl"] + SUFFIXES["parquet"] + SUFFIXES["text"]


def _stdlib_files() -> list[InputFile]:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(
        path
        for path in root.rglob("*.py")
        if not {"site-packages", "dist-packages", "__pycache__"} & set(path.relative_to(root).parts)
    )
    return [InputFile(str(p), p.stat().st_size, p.stat().st_mtime_ns, EMBEDDED_FORMAT) for p in paths]


def _splittable(input_file: InputFile, source: SourceConfig) -> bool:
    """Uncompressed files of one record per line can be read from any byte on."""
    line_records = input_file.format == "jsonl" or (input_file.format == "text" and source.text_unit == "line")
    return line_records and not input_file.uri.endswith(COMPRESSIONS[1:])


def _pieces(input_file: InputFile, source: SourceConfig, target: int) -> list[InputFile]:
    """The file, or byte ranges of about `target` bytes when it is large and splittable."""
    if input_file.size <= target or not _splittable(input_file, source):
        return [input_file]
    bounds = list(range(0, input_file.size, target)) + [input_file.size]
    return [replace(input_file, start=a, end=b) for a, b in pairwise(bounds)]


def plan_units(config: DataConfig) -> list[WorkUnit]:
    """Cut every source's files into units of about `shard_size_mb` of input, in order.

    Small files are grouped; a large uncompressed JSONL or line-per-document text
    file is split into byte ranges, so one big file still keeps every worker busy.
    """
    target = int(config.shard_size_mb * 1e6)
    units: list[WorkUnit] = []
    for source in config.sources:
        batch: list[InputFile] = []
        number = 0
        for input_file in list_source_files(source):
            for piece in _pieces(input_file, source, target):
                batch.append(piece)
                if sum((f.end if f.end is not None else f.size) - f.start for f in batch) >= target:
                    units.append(WorkUnit(len(units), source.name, number, tuple(batch)))
                    batch, number = [], number + 1
        if batch:
            units.append(WorkUnit(len(units), source.name, number, tuple(batch)))
    return units


def plan_fingerprint(units: list[WorkUnit], config: DataConfig) -> str:
    """Changes when an input file, the given tokenizer or a setting that shapes the output changes.

    An input file changes with its size and modification time, or with its bytes
    when `inputs_changed_by` is "content". A build resumes only if equal, and a
    finished build of an equal plan is up to date.
    """
    settings = config.model_dump(exclude={"output_dir"})
    tokenizer = file_sha256(Path(config.tokenizer.path)) if config.tokenizer.path else None
    plan = [u.to_dict() for u in units]
    contents = None
    if config.inputs_changed_by == "content":
        for row in plan:
            for input_file in row["files"]:
                del input_file["mtime_ns"]
        contents = {uri: content_hash(uri) for uri in sorted({f.uri for u in units for f in u.files})}
    payload = json.dumps(
        {"units": plan, "contents": contents, "settings": settings, "tokenizer": tokenizer}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def content_hash(uri: str) -> str:
    """XXH3-128 of a file's bytes, read in 16 MB blocks through its filesystem.

    This tells a changed input from an unchanged one, it does not authenticate:
    a fast non-cryptographic hash keeps the check near the speed of reading.
    """
    fs, path = filesystem(uri)
    digest = xxhash.xxh3_128()
    with fs.open_input_stream(path, compression=None) as stream:
        while block := stream.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()
