"""Classifiers and their checkpoints: the seed zoo (exact state_dict layouts), checkpoint reading and writing,
demonstration models and the lung segmenter."""
