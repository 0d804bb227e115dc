"""Super-resolution on top of the frozen tokenizer: stacked convolutional residual layers, x2 or x4."""
from vqgen.superres.model import SuperResConfig, SuperResolution

__all__ = ["SuperResConfig", "SuperResolution"]
