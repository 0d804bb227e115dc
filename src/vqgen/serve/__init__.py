"""``vqgen serve``: an OpenAI-shaped HTTP API with cross-request batching, and a web page.

``create_app(pipe, ServeConfig(...))`` builds the FastAPI application; ``Batcher`` is the
cross-request batching queue. They are imported on first use, so that ``vqgen --help`` (which
imports ``vqgen.serve.cli``) does not load the web framework.
"""
import importlib

_EXPORTS = {"create_app": "vqgen.serve.app", "ServeConfig": "vqgen.serve.app", "Batcher": "vqgen.serve.batcher"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vqgen.serve' has no attribute {name!r}")
