"""Weights on disk: checkpoints and what becomes of them.

Owns checkpoints (their folder and marker, checkpoint_folder.py; their
files, checked and loaded weights_only, checkpoint_files.py and
checkpoint_engine.py; saving and loading through DeepSpeed, checkpoint.py;
continuing on another layout, layout_change.py and reshard.py),
consolidating ZeRO and tensor-parallel shards into one state dict
(consolidate.py), and exported model folders with their Hugging Face mapping
(model_folder.py, hf_config.py, hf_format.py). Imports model/, data_pipeline/
(the tokenizer), pretrain/layout.py and pretrain/errors.py; nothing else of pretrain/.
"""
