"""The ``enhancer`` command line: thin click commands that parse options, build a spec and call one library function.

Usage: ``enhancer --help``; ``enhancer inspect ResNet-101_GradCAM_Cropped_v4.pth``; ``enhancer models``.
Heavy imports (torch, DALI) happen inside the commands so that ``enhancer --help`` is instant.
"""

from enhancer.cli import (  # noqa: F401 (registers the commands)
    audit_commands,
    dataset_commands,
    enhance_commands,
    model_commands,
    report_commands,
    train_commands,
)
from enhancer.cli.app import main

__all__ = ["main"]
