"""The reranker and upsampler stages vqgen ships, registered by name in ``pipelines/base.py``.

Each wraps a component model (a saved folder of the pipeline) in the stage protocol, and says with
``accepts(model)`` which models it can wrap, so a pipeline names its stages in ``pipeline.json``
and checks them when it loads.
"""
from __future__ import annotations

import torch


class ClipRerank:
    """CLIP-style reranking: cosine similarity of each image with its prompt (``vqgen rerank train``)."""

    def __init__(self, model):
        self.model = model

    @classmethod
    def accepts(cls, model) -> bool:
        from vqgen.rerank.clip import ClipReranker

        return isinstance(model, ClipReranker)

    def score(self, images: torch.Tensor, codes: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        return self.model.score(images.to(dev), prompts)  # (N,)


class CaptionPerplexityRerank:
    """CogView's post-selection: a transformer that scores captions (unified with
    ``image_first=true``, or CogLM-trained) says how well each prompt fits each image's codes; the
    score is the negative mean caption negative log-likelihood (the log-perplexity, so the same
    order as perplexity)."""

    def __init__(self, model):
        self.model = model

    @classmethod
    def accepts(cls, model) -> bool:
        return bool(getattr(model, "scores_captions", False))

    def score(self, images: torch.Tensor, codes: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        cond = self.model.text_condition(prompts, device=dev)
        return -self.model.caption_nll(codes.to(dev), cond)  # (N,)


class ConvUpsampler:
    """The convolutional super-resolution model (``vqgen superres train``): bicubic plus a learned
    correction; deterministic, so it ignores prompts and generators."""

    def __init__(self, model):
        self.model = model
        self.scale = int(model.scale)

    @classmethod
    def accepts(cls, model) -> bool:
        from vqgen.superres.model import SuperResolution

        return isinstance(model, SuperResolution)

    def __call__(self, images: torch.Tensor, prompts: list[str], generator=None) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        return self.model(images.to(dev))  # (N, 3, H*s, W*s)
