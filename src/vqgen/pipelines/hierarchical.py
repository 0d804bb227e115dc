"""Hierarchical text-to-image (CogView2): prompts → low-resolution codes (autoregressive) → the
high-resolution grid (direct super-resolution, then LoPAR) → images.

    pipe = HierarchicalTextToImagePipeline.from_pretrained("runs/cogview2/pipeline")
    out = pipe("two red circles", num_images=4, generator=torch.Generator().manual_seed(0))

The directory is an ordinary pipeline: ``tokenizer/`` is the high-resolution tokenizer (its grid
and codebook are the transformer's), ``transformer/`` a
:class:`~vqgen.transformer.hierarchical.HierarchicalSR` whose ``low/`` sub-folder holds the
low-resolution model, optional ``reranker/``. The decoder is ``lopar`` or ``direct_sr`` (the
``sampling`` settings say which, and how many LoPAR passes); ``vqgen generate``, ``vqgen eval
shapes`` and ``vqgen serve`` run it like any pipeline.
"""
from __future__ import annotations

from vqgen.errors import ConfigError, VqgenError
from vqgen.pipelines.text_to_image import TextToImagePipeline
from vqgen.sampling.settings import SamplingConfig

DECODERS = ("lopar", "direct_sr")


class HierarchicalTextToImagePipeline(TextToImagePipeline):
    """Prompts → images through a low-resolution stage and super-resolution (see the module doc)."""

    pipeline_type = "hierarchical_text_to_image"

    def __init__(self, tokenizer, transformer, *args, **kwargs):
        from vqgen.transformer.hierarchical import HierarchicalSR

        if not isinstance(transformer, HierarchicalSR) or transformer.low is None:
            raise VqgenError("a hierarchical pipeline needs a hierarchical transformer with its low-resolution "
                             f"stage, got {type(transformer).__name__}")
        super().__init__(tokenizer, transformer, *args, **kwargs)

    def check_settings(self, settings: SamplingConfig) -> SamplingConfig:
        if settings.decoder not in DECODERS:
            raise ConfigError(f"decoder: a hierarchical pipeline samples with {' or '.join(DECODERS)}, "
                              f"not {settings.decoder!r}", "decoder")
        return super().check_settings(settings)
