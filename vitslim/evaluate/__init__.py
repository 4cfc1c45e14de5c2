"""Accuracy, fidelity and latency measurement."""
