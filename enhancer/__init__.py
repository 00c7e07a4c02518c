"""enhancer: GPU batch Grad-CAM enhancement of chest X-ray datasets into HDF5 shards.

Usage: ``enhancer --help`` (command line) or ``from enhancer.models.checkpoints import load_checkpoint``.
Nothing heavy is imported here so that the command line starts instantly.
"""

__version__ = "0.1.0"
