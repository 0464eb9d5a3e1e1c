"""The typed settings of the data stage: what to read, how to clean and tokenize, where to write."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_pipeline.filters import FiltersConfig, Preset, with_preset

# The embedded default corpus: docstrings of the running interpreter's standard library.
EMBEDDED_FORMAT = "python-docstrings"


class SourceConfig(BaseModel):
    """One named source: its files and how to read them. Its documents keep its name in the shards."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="names the source in shard file names, the manifest and train.mixture",
    )
    paths: list[str] = Field(
        json_schema_extra={"path": True},
        default_factory=list,
        description="files, folders or globs; local paths or URIs of any pyarrow filesystem (file://, s3://, gs://)",
    )
    format: Literal["auto", "jsonl", "parquet", "text", "python-docstrings"] = Field(
        "auto",
        description="auto: by file suffix (.jsonl/.json.gz, .parquet, .txt; plus .gz/.zst compression); "
        "python-docstrings: the docstrings of .py files (the standard library when paths is empty)",
    )
    text_field: str = Field("text", description="JSONL/Parquet field holding the text; dots reach into nested records")
    text_unit: Literal["file", "line", "paragraph"] = Field(
        "file", description="text files: one document per file, per line, or per paragraph (blank-line separated)"
    )

    @model_validator(mode="after")
    def _needs_paths(self) -> SourceConfig:
        if not self.paths and self.format != EMBEDDED_FORMAT:
            raise ValueError(f"source {self.name!r} has no paths; list its files, folders or globs")
        return self


def embedded_source() -> SourceConfig:
    return SourceConfig(name="stdlib", format=EMBEDDED_FORMAT)


class NearDedupConfig(BaseModel):
    """MinHash over word n-grams, LSH bands, one document kept per cluster (data_pipeline/near_dedup.py)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="remove near-duplicates (off: exact duplicates only)")
    ngram: int = Field(5, ge=1, description="words per shingle")
    num_hashes: int = Field(128, ge=2, le=1024, description="MinHash signature length")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of shingles at which a pair is removed")
    bands: int | None = Field(
        None, ge=1, description="LSH bands (with rows); default: chosen from threshold and num_hashes"
    )
    rows: int | None = Field(None, ge=1, description="hashes per LSH band (with bands)")
    seed: int = Field(1, description="seed of the hash permutations")

    @model_validator(mode="after")
    def _bands_and_rows(self) -> NearDedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("data.cleaning.near_dedup: give both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_hashes:
            raise ValueError(
                f"data.cleaning.near_dedup: bands x rows = {self.bands * self.rows} exceeds "
                f"num_hashes = {self.num_hashes}; lower them or raise num_hashes"
            )
        return self


class CleaningConfig(BaseModel):
    """Each step can be switched off; every document a step removes is counted by reason."""

    model_config = ConfigDict(extra="forbid")

    normalize_nfc: bool = Field(True, description="Unicode NFC normalization")
    remove_control_chars: bool = Field(True, description="drop control characters other than tab and newline")
    min_chars: int = Field(32, ge=0, description="shorter documents (after cleaning) are filtered out")
    max_chars: int = Field(1_000_000, ge=1, description="longer documents are filtered out")
    preset: Preset = Field(
        "none",
        description="quality rules of a published pipeline: gopher, c4 or fineweb (docs/data.md); "
        "settings under filters win over the preset's",
    )
    filters: FiltersConfig = Field(default_factory=FiltersConfig, description="each quality rule's thresholds")
    deduplicate: bool = Field(True, description="keep one copy of identical documents across the whole corpus")
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    dedup_partition_mb: float = Field(
        4096,
        gt=0,
        description="input per deduplication task: a task holds about 24 bytes per document of it "
        "(plus 16 per LSH band with near_dedup)",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: object) -> object:
        if isinstance(data, dict):
            data = {**data, "filters": with_preset(data.get("preset", "none"), data.get("filters"))}
        return data


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(4096, ge=300, description="BPE vocabulary size, special tokens included")
    path: str | None = Field(
        None, description="an existing tokenizer.json to load instead of training one", json_schema_extra={"path": True}
    )
    sample_documents: int = Field(
        50_000, ge=1, description="documents (a deterministic sample by content hash) the tokenizer is trained on"
    )


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SourceConfig] = Field(
        default_factory=lambda: [embedded_source()],
        description="named sources, each with its own reader settings; default: the embedded corpus",
    )
    output_dir: str = Field(
        "outputs/data/stdlib",
        description="where shards, tokenizer and manifest are written",
        json_schema_extra={"path": True},
    )
    val_fraction: float = Field(0.05, gt=0, lt=1, description="share of documents held out for validation")
    shard_size_mb: float = Field(
        64, gt=0, le=1024, description="target size of one shard, and of the input one worker reads at a time"
    )
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    inputs_changed_by: Literal["metadata", "content"] = Field(
        "metadata",
        description="how a rerun tells that an input changed: its size and modification time, or a hash of "
        "its bytes (reads every input at each run; for copied inputs and stores whose times cannot be trusted)",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        if not self.sources:
            raise ValueError("data.sources is empty; name at least one source")
        names = [source.name for source in self.sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"data.sources: the name(s) {', '.join(repeated)} are used twice; names must be unique")
        return self
