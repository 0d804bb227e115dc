"""Stage 2: token transformers over image codes (VIM, Parti, unified text+image stream),
their shared layers, presets and the training loop. See ``base`` for the sampler contract.

The names below load on first use, so ``vqgen --help`` (which imports ``vqgen.transformer.cli``)
does not import torch. A family's model class is found by its name through the one model
registry (:func:`vqgen.io.model_class`).
"""
from __future__ import annotations

from vqgen.lazy import lazy_exports

# configs and presets are plain dataclasses (no torch): imported now, so the presets are registered
from vqgen.transformer.config import RunConfig, TextConfig, TrainConfig, TransformerConfig

_EXPORTS = {
    "NULL_CLASS": "vqgen.transformer.base",
    "Condition": "vqgen.transformer.base",
    "KVCache": "vqgen.transformer.base",
    "TokenModel": "vqgen.transformer.base",
    "TokenOutput": "vqgen.transformer.base",
}

__all__ = sorted([*_EXPORTS, "RunConfig", "TextConfig", "TrainConfig", "TransformerConfig", "build_model"])


def build_model(config):
    """The model of ``config.family`` with fresh weights."""
    from vqgen.io import model_class

    return model_class(config.family)(config)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
