"""Unconditional generation (and image completion): nothing → codes → images, with a VIM model
trained without a condition.

    pipe = UnconditionalPipeline.from_pretrained("runs/emoji-pipeline")
    out = pipe(num_images=8, generator=torch.Generator().manual_seed(0))
    done = pipe(num_images=4, prefix_image=img, prefix_rows=3)     # keep 3 code rows, write the rest
"""
from __future__ import annotations

from typing import Any

from vqgen.errors import VqgenError
from vqgen.pipelines.base import Pipeline
from vqgen.sampling.settings import SamplingConfig


class UnconditionalPipeline(Pipeline):
    """Images from an unconditional token transformer; its only input is ``None`` (or "")."""

    pipeline_type = "unconditional"
    cond_kind = "none"

    def __init__(self, tokenizer, transformer, reranker=None, upsampler=None,
                 sampling: SamplingConfig = SamplingConfig(), **options):
        if reranker is not None:
            raise VqgenError("an unconditional pipeline has no prompt to rerank by")
        super().__init__(tokenizer, transformer, None, upsampler, sampling, **options)

    def validate_prompt(self, prompt: Any) -> str:
        if prompt not in (None, ""):
            raise VqgenError("an unconditional model takes no prompt")
        return ""

    def condition(self, labels: list[str], device):
        from vqgen.transformer.base import Condition

        return Condition()
