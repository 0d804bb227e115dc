"""Text-to-image: prompts → text condition → codes → images, with a text-conditioned transformer
(Parti encoder-decoder or a unified text-then-image stream).

    pipe = TextToImagePipeline.from_pretrained()            # the bundled shapes model
    out = pipe("a red circle above a blue square", num_images=4, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(0))
    out.images[0].save("x.png")
"""
from __future__ import annotations

from typing import Any

from vqgen.errors import VqgenError
from vqgen.pipelines.base import Pipeline
from vqgen.pipelines.edit import edit


class TextToImagePipeline(Pipeline):
    """Prompts → images with a text-conditioned token transformer."""

    pipeline_type = "text_to_image"
    cond_kind = "text"

    def validate_prompt(self, prompt: Any) -> str:
        """The prompt, stripped; raises ``VqgenError`` if it is not text, empty or too long."""
        if not isinstance(prompt, str):
            raise VqgenError(f"a prompt must be text, got {type(prompt).__name__}")
        text = prompt.strip()
        if not text:
            raise VqgenError("the prompt is empty")
        if len(text) > self.max_prompt_length:
            raise VqgenError(f"the prompt has {len(text)} characters, more than the limit of {self.max_prompt_length}")
        if any(not ch.isprintable() for ch in text):
            raise VqgenError("the prompt contains control characters")
        return text

    def condition(self, labels: list[str], device):
        return self.transformer.text_condition(labels, device=device)

    edit = edit  # text-guided editing with a CogLM model: pipelines/edit.py
