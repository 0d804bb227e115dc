"""Stage 2: token transformers over image codes (VIM, Parti, unified text+image stream),
their shared layers, presets and the training loop. See ``base`` for the sampler contract."""
from __future__ import annotations

from vqgen.transformer.base import NULL_CLASS, Condition, KVCache, TokenModel, TokenOutput
from vqgen.transformer.config import RunConfig, TextConfig, TrainConfig, TransformerConfig

FAMILIES = {"vim": "vqgen.transformer.vim:VIM", "parti": "vqgen.transformer.parti:Parti",
            "unified": "vqgen.transformer.unified:Unified"}


def build_model(config: TransformerConfig) -> TokenModel:
    """The model of ``config.family`` (fresh weights)."""
    import importlib

    module, name = FAMILIES[config.family].split(":")
    return getattr(importlib.import_module(module), name)(config)


__all__ = ["NULL_CLASS", "Condition", "KVCache", "TokenModel", "TokenOutput", "RunConfig", "TextConfig",
           "TrainConfig", "TransformerConfig", "build_model"]
