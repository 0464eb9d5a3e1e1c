"""Export: a checkpoint becomes a model folder, at the end or while training runs.

Owns finding and verifying the checkpoint to export, writing the folder and
loading a trained model back for `generate` and `attention` (exporter.py),
and `export.every` (periodic.py). Imports pretrain/config/,
pretrain/weights/ and, to register exports, pretrain/tracking/.
"""
