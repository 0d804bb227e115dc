"""Package faces whose names load on first use, so ``vqgen --help`` imports no torch.

    _EXPORTS = {"ShapesDataset": "vqgen.shapes.dataset", ...}   # name -> module that defines it
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
"""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """Module-level ``__getattr__`` and ``__dir__`` for ``package`` that import ``exports`` lazily."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__():
        return sorted(set(exports) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__
