"""Downstream evaluation: tasks read from files (tasks.py), scored by log-likelihood as lm-evaluation-harness
scores them (scoring.py), the validation loss over held-out sequences (validation.py), and lm-eval's own task
files written for an export (lm_eval_tasks.py).

Owns how a model is scored, on one process or as a collective call of a job's ranks; what is scored when is
the caller's: the training loop on the live engine, `pretrain eval` (pretrain/tools/evaluate.py) on a
checkpoint or an export. Imports nothing else of pretrain (a model is anything that returns logits).
"""
