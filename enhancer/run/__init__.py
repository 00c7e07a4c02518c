"""Launching, kept apart from computing: job files, SLURM submission, local worker processes and clean stops on
signals."""
