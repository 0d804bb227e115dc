"""Pipelines: one ``__call__`` from a prompt (or class) to images, saved as a directory of components."""
from vqgen.pipelines.class_conditional import ClassConditionalPipeline
from vqgen.pipelines.text_to_image import PipelineDefaults, PipelineOutput, TextToImagePipeline, default_model_dir

__all__ = ["ClassConditionalPipeline", "PipelineDefaults", "PipelineOutput", "TextToImagePipeline",
           "default_model_dir"]
