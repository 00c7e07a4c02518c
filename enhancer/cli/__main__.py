"""``python -m enhancer.cli``: the command line (torchrun and the sbatch scripts start it this way)."""

from enhancer.cli.entry import run

run()
