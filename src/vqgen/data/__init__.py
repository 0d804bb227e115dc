"""Data sources, records and pre-tokenized code shards.

The names below load on first use, so ``vqgen --help`` (which imports ``vqgen.data.cli``) does
not pay for importing torch.
"""
import importlib

_EXPORTS = {
    "Record": "vqgen.data.records",
    "ImageFolder": "vqgen.data.folder",
    "write_image_folder": "vqgen.data.folder",
    "ShardDataset": "vqgen.data.webdataset",
    "Batch": "vqgen.data.image",
    "SKIP_REASONS": "vqgen.data.image",
    "SkipRecord": "vqgen.data.image",
    "collate_records": "vqgen.data.image",
    "decode_image": "vqgen.data.image",
    "to_pil": "vqgen.data.image",
    "to_tensor": "vqgen.data.image",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vqgen.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted(list(globals()) + __all__)
