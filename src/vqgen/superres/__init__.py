"""Super-resolution on top of the frozen tokenizer: stacked convolutional residual layers, x2 or x4.

The names below load on first use (``vqgen --help`` imports ``vqgen.superres.cli`` without torch).
"""
import importlib

_EXPORTS = {"SuperResConfig": "vqgen.superres.model", "SuperResolution": "vqgen.superres.model"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vqgen.superres' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
