"""pretrain: train GPT-style language models, from raw text to a model anyone can load."""

__version__ = "0.1.0"
