"""Our CAM method names -> the pytorch-grad-cam (1.5.7) classes that compute the same maps: the one mapping that
the side-by-side checks (tests/test_cam_methods.py) and timings (benchmarks/cam_methods_bench.py) share.
pytorch-grad-cam is imported only when the classes are asked for, and the ``enhancer`` package never imports it.

Usage (the benchmarks import it as ``pgc_reference``, their own folder on ``sys.path``; tests as
``benchmarks.pgc_reference``, the repository root on ``sys.path``)::

    from pgc_reference import reference_classes
    classes = reference_classes()  # {"gradcam": pytorch_grad_cam.GradCAM, ..., "ablationcam": ...AblationCAM}
"""

from __future__ import annotations

# enhancer.explain.cam.METHODS -> the class's name in pytorch_grad_cam
PGC_CLASS_NAMES: dict[str, str] = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}


def reference_classes() -> dict[str, type]:
    """Each method's pytorch-grad-cam class (imports pytorch_grad_cam)."""
    import pytorch_grad_cam

    return {method: getattr(pytorch_grad_cam, name) for method, name in PGC_CLASS_NAMES.items()}
