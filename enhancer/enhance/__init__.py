"""The enhance job: scan -> validate -> shard -> loader -> model -> Grad-CAM -> crops, enhanced images -> HDF5 shard.

Usage::

    from enhancer.enhance import merge_enhanced, run_enhance
    from enhancer.specs import EnhanceSpec
    summary = run_enhance(EnhanceSpec(data="val/", out="enhanced/", checkpoint="ResNet-101_GradCAM_Cropped_v4.pth"))
    merge_enhanced("enhanced/")

The modules, each with one job (everything but the entry points below is imported from its module):

- ``job``: ``run_enhance`` (one shard under its claim) and ``merge_enhanced``;
- ``inputs``: scanning the folder or label file, validating the files, the boxes and the lung segmenter;
- ``job_settings``: the spec resolved into the model, the maps per class (``class_plan``), the per-batch
  ``OutputSettings`` and the batch size;
- ``shard_attrs``: the provenance and identity every shard stores;
- ``batch_outputs``: one batch's stored fields, computed on its device (``compute_outputs``);
- ``batch_loop``: loading, computing and writing overlapped, with no host synchronisation per batch;
- ``summary``: ``EnhanceSummary``, what a job reports.
"""

from enhancer.enhance.job import merge_enhanced, run_enhance
from enhancer.enhance.job_settings import default_batch_size
from enhancer.enhance.summary import EnhanceSummary

__all__ = ["EnhanceSummary", "default_batch_size", "merge_enhanced", "run_enhance"]
