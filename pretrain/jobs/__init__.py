"""Jobs: a training run or a data build sent where `launch.target` says, and followed.

Owns submission (submit.py: this machine in the foreground or detached,
Slurm, Ray), `pretrain jobs` (status.py) and the entry point of Ray Train
workers (ray_train.py). The processes themselves are started and followed by
launch/. Imports pretrain/config/, pretrain/tracking/ and pretrain/train/
(preflight before a job is sent; the loop, in a Ray Train worker).
"""
