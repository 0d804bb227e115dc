"""Pipelines: one ``__call__`` from a prompt, a class or nothing to images, through named stages
(decoder, reranker, upsampler; ``pipelines/base.py``), saved as a directory of components."""
from vqgen.pipelines.base import (DECODERS, RERANKERS, UPSAMPLERS, Pipeline, PipelineOutput, default_model_dir,
                                  load_pipeline)
from vqgen.pipelines.class_conditional import ClassConditionalPipeline
from vqgen.pipelines.text_to_image import TextToImagePipeline
from vqgen.pipelines.unconditional import UnconditionalPipeline

__all__ = ["Pipeline", "PipelineOutput", "TextToImagePipeline", "ClassConditionalPipeline", "UnconditionalPipeline",
           "load_pipeline", "default_model_dir", "DECODERS", "RERANKERS", "UPSAMPLERS"]
