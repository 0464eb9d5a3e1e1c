"""`python -m pretrain.cli`: how torchrun, Slurm and Ray start each rank."""

from pretrain.cli import entry_point

entry_point()
