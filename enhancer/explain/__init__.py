"""Explaining a classifier's decision: CAM methods, heatmap upsampling, Grad-CAM-guided crops, enhanced images
and localisation metrics. Pure tensor code: no file I/O, no global device."""
