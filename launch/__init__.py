"""Starting and following jobs: local ranks, several hosts, Slurm and Ray. Never imports the training loop."""
