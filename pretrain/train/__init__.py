"""Training: what every rank of a job runs, and what is checked before any rank starts.

Owns the loop (loop.py) and its parts with clear edges: the DeepSpeed engine
and its generated config (engine.py, deepspeed_config.py), the optimizer and
schedule (optim.py), the data loader and its shard checks (data.py), what
each evaluation scores (validate.py), stability and preemption (stability.py,
preemption.py), metrics, the console and the cost model (metrics.py,
console.py, cost.py), samples (sampling.py), resume rules and preflight
(resume.py, preflight.py) and the run folder's files (run_files.py). Imports
pretrain/config/, pretrain/weights/, pretrain/tracking/, pretrain/evaluation/
(validation and task scoring) and, for periodic export, pretrain/export/.
"""
