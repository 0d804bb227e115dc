"""Reranking generated images by text–image agreement: a CLIP-style dual encoder trained here."""
from vqgen.rerank.clip import ClipConfig, ClipReranker, check_reranker

__all__ = ["ClipConfig", "ClipReranker", "check_reranker"]
