"""vitslim: post-training compression and deployment toolkit for Vision Transformers."""

__version__ = "0.1.0"
