"""Model loading: timm model names and checkpoints, Hugging Face folders and the embedded demo model."""

from vitslim.models.checkpoints import read_checkpoint
from vitslim.models.loaded import LoadedModel
from vitslim.models.loading import DEMO, load_model

__all__ = ["DEMO", "LoadedModel", "load_model", "read_checkpoint"]
