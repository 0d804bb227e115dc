"""Super-resolution on top of the frozen tokenizer: stacked convolutional residual layers, x2 or x4.

The names below load on first use (``vqgen --help`` imports ``vqgen.superres.cli`` without torch).
"""
from vqgen.lazy import lazy_exports

_EXPORTS = {"SuperResConfig": "vqgen.superres.model", "SuperResolution": "vqgen.superres.model"}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
