"""Training and evaluation with the seed recipe: the fit loop, input datasets (folders or enhanced HDF5),
augmentations, metrics, curves and DDP helpers."""
