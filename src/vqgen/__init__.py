"""vqgen: token-based image generation (ViT-VQGAN tokenizers, token transformers, samplers)."""
__version__ = "0.1.0"
