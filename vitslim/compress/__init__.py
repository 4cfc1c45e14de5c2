"""Compression stages: token reduction, 2:4 sparsity and post-training quantization."""
