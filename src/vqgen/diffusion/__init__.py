"""Imagen-style text-conditional diffusion: the U-Net (base and super-resolution), sampling with
guidance and thresholding, and its trainer. The names below load on first use."""
from vqgen.lazy import lazy_exports

_EXPORTS = {
    "DiffusionConfig": "vqgen.diffusion.model",
    "DiffusionUNet": "vqgen.diffusion.model",
    "augment_low_res": "vqgen.diffusion.model",
    "DiffusionSampling": "vqgen.diffusion.sampling",
    "dynamic_threshold": "vqgen.diffusion.sampling",
    "static_threshold": "vqgen.diffusion.sampling",
    "sample": "vqgen.diffusion.sampling",
    "DiffusionTrainConfig": "vqgen.diffusion.train",
    "train_diffusion": "vqgen.diffusion.train",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
