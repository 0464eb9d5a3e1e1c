"""The typed settings of the data stage: what to read, how to tokenize, where to write."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(4096, ge=300, description="BPE vocabulary size, special tokens included")
    path: str | None = Field(None, description="an existing tokenizer.json to load instead of training one")
    sample_documents: int = Field(
        50_000, ge=1, description="documents (a deterministic sample) the tokenizer is trained on"
    )


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(
        default_factory=list,
        description="files, folders or globs (.txt, .jsonl, .parquet, optionally .gz); "
        "empty means the embedded corpus: the docstrings of Python's standard library",
    )
    text_field: str = Field("text", description="the field holding the text in JSONL and Parquet")
    output_dir: str = Field("outputs/data/stdlib", description="where shards and manifest are written")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="share of documents held out for validation")
    min_chars: int = Field(32, ge=1, description="shorter documents are dropped")
    shard_size_mb: float = Field(64, gt=0, description="target size of one shard file")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
