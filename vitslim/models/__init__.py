"""Model loading: timm model names, checkpoints and the embedded demo model."""

from vitslim.models.loading import DEMO, LoadedModel, load_model, read_checkpoint

__all__ = ["DEMO", "LoadedModel", "load_model", "read_checkpoint"]
