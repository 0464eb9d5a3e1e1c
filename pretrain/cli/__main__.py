"""`python -m pretrain.cli`: how torchrun, Slurm and Ray start each rank."""

import sys

from pretrain.cli import main

sys.exit(main())
