"""The typed settings of the data stage: what to read, how to clean and tokenize, where to write."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    text_unit: Literal["file", "line"] = Field("file", description="text files: one document per file or per line")

    @model_validator(mode="after")
    def _needs_paths(self) -> SourceConfig:
        if not self.paths and self.format != EMBEDDED_FORMAT:
            raise ValueError(f"source {self.name!r} has no paths; list its files, folders or globs")
        return self


def embedded_source() -> SourceConfig:
    return SourceConfig(name="stdlib", format=EMBEDDED_FORMAT)


class CleaningConfig(BaseModel):
    """Each step can be switched off; every document a step removes is counted by reason."""

    model_config = ConfigDict(extra="forbid")

    normalize_nfc: bool = Field(True, description="Unicode NFC normalization")
    remove_control_chars: bool = Field(True, description="drop control characters other than tab and newline")
    min_chars: int = Field(32, ge=0, description="shorter documents (after cleaning) are filtered out")
    max_chars: int = Field(1_000_000, ge=1, description="longer documents are filtered out")
    deduplicate: bool = Field(True, description="keep one copy of identical documents across the whole corpus")


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

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        if not self.sources:
            raise ValueError("data.sources is empty; name at least one source")
        names = [source.name for source in self.sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"data.sources: the name(s) {', '.join(repeated)} are used twice; names must be unique")
        return self
