"""Reranking generated images by text–image agreement: a CLIP-style dual encoder trained here.

The names below load on first use (``vqgen --help`` imports ``vqgen.rerank.cli`` without torch).
"""
from vqgen.lazy import lazy_exports

_EXPORTS = {"ClipConfig": "vqgen.rerank.clip", "ClipReranker": "vqgen.rerank.clip", "check_reranker": "vqgen.rerank.clip"}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
