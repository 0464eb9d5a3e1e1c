"""The data stage: a Ray Data pipeline from raw text to tokenized Arrow shards, and their reader."""
