"""Pipelines: one ``__call__`` from a prompt, a class or nothing to images, through named stages
(decoder, reranker, upsampler; ``pipelines/base.py``), saved as a directory of components.

The names below load on first use (``vqgen --help`` imports ``vqgen.pipelines.cli`` without torch).
"""
from vqgen.lazy import lazy_exports

_BASE = "vqgen.pipelines.base"
_EXPORTS = {
    "Pipeline": _BASE, "PipelineOutput": _BASE, "load_pipeline": _BASE, "default_model_dir": _BASE,
    "DECODERS": _BASE, "RERANKERS": _BASE, "UPSAMPLERS": _BASE,
    "TextToImagePipeline": "vqgen.pipelines.text_to_image",
    "ClassConditionalPipeline": "vqgen.pipelines.class_conditional",
    "UnconditionalPipeline": "vqgen.pipelines.unconditional",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
