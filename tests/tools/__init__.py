"""Helpers for the test suite (synthetic data, external-reader scripts); not collected as tests."""
