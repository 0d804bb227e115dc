"""Reranking generated images by text–image agreement: a CLIP-style dual encoder trained here.

The names below load on first use (``vqgen --help`` imports ``vqgen.rerank.cli`` without torch).
"""
import importlib

_EXPORTS = {"ClipConfig": "vqgen.rerank.clip", "ClipReranker": "vqgen.rerank.clip", "check_reranker": "vqgen.rerank.clip"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vqgen.rerank' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
