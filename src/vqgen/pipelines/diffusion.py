"""Text-to-image by diffusion (Imagen's cascade): prompts → frozen-encoder text → a base U-Net
sampled with guidance and thresholding → optionally a diffusion super-resolution stage.

    pipe = DiffusionTextToImagePipeline.from_pretrained("RUN/pipeline")
    out = pipe("a red circle", num_images=2, guidance_scale=5.0, thresholding="dynamic",
               generator=torch.Generator().manual_seed(0), super_resolution=True)

The same call as every other pipeline (``vqgen generate``, ``vqgen eval shapes`` and the server
drive it unchanged): ``settings.decoder`` names the scheduler (``ddim``, ``ddpm``, ``dpm``),
``guidance_scale`` is λ, ``super_resolution`` runs the cascade stage. Its directory::

    pipeline.json   {"pipeline_type": "diffusion_text_to_image", "components": {"unet": "unet",
                     "upsampler": "upsampler"}, "stages": {"upsampler": "diffusion_sr"},
                     "sampling": {...}, "diffusion": {steps, thresholding, sr_aug_level, ...}, ...}
    unet/           the base model (config.json, model.safetensors[, tokenizer.json])
    upsampler/      optional: a diffusion SR model (or the convolutional one)

:class:`DiffusionUpsampler` (``UPSAMPLERS["diffusion_sr"]``) is the SR stage; it also ends a token
pipeline (``pipe.with_components(upsampler=sr_model)``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vqgen.diffusion.sampling import SCHEDULERS, DiffusionSampling, sample
from vqgen.errors import ConfigError, VqgenError
from vqgen.io import atomic_write_json, read_json_object, replace_dir, resolve_inside
from vqgen.pipelines.base import PIPELINE_NAME, PipelineOutput, _row_generators, to_output_images, wrap_stage
from vqgen.pipelines.text_to_image import TextToImagePipeline
from vqgen.sampling.settings import SamplingConfig

KEYS = {"pipeline_type", "components", "stages", "sampling", "diffusion", "max_prompt_length", "vqgen_version"}


def _per_row(generator, rows: int):
    """Generators for ``rows`` rows: one shared, one per row, or one per prompt repeated for its rows."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    gens = list(generator)
    if len(gens) == rows:
        return gens
    if gens and rows % len(gens) == 0:
        return [g for g in gens for _ in range(rows // len(gens))]
    raise VqgenError(f"generator has {len(gens)} values for {rows} images")


class DiffusionUpsampler:
    """A diffusion super-resolution model as an upsampler stage: the low-resolution images are
    noise-augmented at ``settings.sr_aug_level`` and the model samples the larger images for
    their prompts (``sr_steps`` steps, guidance ``sr_guidance``, the settings' thresholding)."""

    def __init__(self, model, settings: DiffusionSampling = DiffusionSampling()):
        self.model = model
        self.scale = int(model.config.sr_scale)
        self.settings = settings

    @classmethod
    def accepts(cls, model) -> bool:
        from vqgen.diffusion.model import DiffusionUNet

        return isinstance(model, DiffusionUNet) and model.config.sr_scale > 1

    def __call__(self, images: torch.Tensor, prompts: list[str], generator=None) -> torch.Tensor:
        m, s = self.model, self.settings
        low = images.to(m.device).float() * 2 - 1  # (N, 3, h, w) in [-1, 1]
        if low.shape[-1] != m.config.low_res_size:
            raise VqgenError(f"the super-resolution model takes {m.config.low_res_size} px images, got "
                             f"{low.shape[-1]} px")
        text, mask = m.encode_prompts(list(prompts))
        out = sample(m, text, mask, guidance=torch.full((low.shape[0],), s.sr_guidance), settings=s,
                     generator=_per_row(generator, low.shape[0]), low_res=low, aug_level=s.sr_aug_level,
                     steps=s.sr_steps)  # (N, 3, H, W)
        return (out + 1) / 2


class DiffusionTextToImagePipeline(TextToImagePipeline):
    """Prompts → images with a text-conditional diffusion U-Net (+ an optional upsampler stage)."""

    pipeline_type = "diffusion_text_to_image"
    cond_kind = "text"

    def __init__(self, unet, upsampler=None, sampling: SamplingConfig | None = None, *,
                 diffusion: DiffusionSampling = DiffusionSampling(), max_prompt_length: int = 200,
                 stages: dict[str, str] | None = None):
        from vqgen.diffusion.model import DiffusionUNet

        if not isinstance(unet, DiffusionUNet) or unet.config.sr_scale != 1:
            raise VqgenError(f"a diffusion pipeline needs a base DiffusionUNet (sr_scale 1), got {type(unet).__name__}")
        if not isinstance(max_prompt_length, int) or max_prompt_length < 1:
            raise ConfigError(f"max_prompt_length: must be a positive integer, got {max_prompt_length!r}")
        self.unet, self.upsampler = unet, upsampler
        self.tokenizer = self.transformer = self.reranker = self.rerank_stage = None
        self.clusters = self.class_names = None
        self.diffusion = diffusion
        self.stage_names: dict[str, str] = {}
        self.upsample_stage = None
        if upsampler is not None:
            self.stage_names["upsampler"], self.upsample_stage = wrap_stage("upsampler", upsampler,
                                                                           (stages or {}).get("upsampler"))
        self.max_prompt_length = max_prompt_length
        if sampling is None:
            sampling = SamplingConfig(decoder=diffusion.scheduler, thresholding=diffusion.thresholding)
        self.sampling = self.check_settings(sampling)

    # -- facts -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def image_size(self) -> int:
        return int(self.unet.config.image_size)

    def check_settings(self, settings: SamplingConfig) -> SamplingConfig:
        """``settings`` if a diffusion pipeline can run them: the decoder is a scheduler; no
        reranking, clusters or token-sampling options."""
        if settings.decoder not in SCHEDULERS:
            raise ConfigError(f"decoder: a diffusion pipeline samples with {', '.join(SCHEDULERS)}, got "
                              f"{settings.decoder!r}", "decoder")
        default = SamplingConfig()
        for name in ("temperature", "top_k", "top_p", "cluster", "rerank", "guidance_schedule"):
            if getattr(settings, name) != getattr(default, name):
                raise ConfigError(f"{name}: a diffusion pipeline has no such setting (leave it at "
                                  f"{getattr(default, name)!r})", name)
        return settings

    def diffusion_settings(self, settings: SamplingConfig, **changes: Any) -> DiffusionSampling:
        """The diffusion settings of a call: the scheduler from ``settings.decoder``, the
        thresholding from ``changes`` or else ``settings``."""
        thresholding = changes.pop("thresholding", None) or settings.thresholding
        return self.diffusion.merged(scheduler=settings.decoder, thresholding=thresholding, **changes)

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: Any = None, num_images: int = 1, *, settings: SamplingConfig | None = None,
                 guidance_scale=None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, cluster: int | None = None, rerank: int | None = None,
                 decoder: str | None = None, prefix_image=None, prefix_rows: int | None = None,
                 super_resolution: bool = False, generator=None, output_type: str = "pil", progress: bool = False,
                 thresholding: str | None = None, steps: int | None = None,
                 sr_aug_level: float | None = None) -> PipelineOutput:
        """Generate ``num_images`` images per prompt, grouped by prompt (see :class:`Pipeline`);
        ``thresholding``, ``steps`` and ``sr_aug_level`` override the pipeline's diffusion settings."""
        from vqgen.pipelines.base import OUTPUT_TYPES

        labels = self._inputs(prompt)
        if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
            raise VqgenError(f"num_images must be a positive integer, got {num_images!r}")
        if output_type not in OUTPUT_TYPES:
            raise VqgenError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
        if prefix_image is not None or prefix_rows is not None:
            raise VqgenError("image completion (prefix image) needs a token pipeline; this one is a diffusion pipeline")
        if super_resolution and self.upsample_stage is None:
            raise VqgenError("super_resolution needs a pipeline with an upsampler/ component")
        per_prompt_guidance = isinstance(guidance_scale, (list, tuple))
        s = self.check_settings((settings or self.sampling).merged(
            guidance_scale=None if per_prompt_guidance else guidance_scale, temperature=temperature, top_k=top_k,
            top_p=top_p, cluster=cluster, rerank=rerank, decoder=decoder))
        d = self.diffusion_settings(s, thresholding=thresholding, steps=steps, sr_aug_level=sr_aug_level)
        rows = [p for p in labels for _ in range(num_images)]
        guidance = s.row_guidance(guidance_scale if per_prompt_guidance else None, num_images, len(labels))  # (R,)
        gens = _row_generators(generator, labels, num_images)
        text, mask = self.unet.encode_prompts(rows)
        images = (sample(self.unet, text, mask, guidance=guidance, settings=d, generator=gens,
                         progress=progress) + 1) / 2  # (R, 3, S, S)
        if super_resolution:  # a diffusion SR stage samples with this call's settings
            stage = DiffusionUpsampler(self.upsampler, d) if isinstance(self.upsample_stage, DiffusionUpsampler) \
                else self.upsample_stage
            images = stage(images, rows, gens)  # (R, 3, S*k, S*k)
        return PipelineOutput(images=to_output_images(images, output_type),
                              codes=torch.zeros(len(rows), 0, dtype=torch.long), scores=None, prompts=rows)

    # -- save / load -----------------------------------------------------------------------
    def with_components(self, **changes) -> "DiffusionTextToImagePipeline":
        """This pipeline with some of unet, upsampler, sampling, diffusion, max_prompt_length replaced."""
        unknown = set(changes) - {"unet", "upsampler", "sampling", "diffusion", "max_prompt_length"}
        if unknown:
            raise VqgenError(f"a diffusion pipeline has no {sorted(unknown)}")
        kwargs = dict(unet=self.unet, upsampler=self.upsampler, sampling=self.sampling, diffusion=self.diffusion,
                      max_prompt_length=self.max_prompt_length)
        stages = {k: v for k, v in self.stage_names.items() if k not in changes}
        return type(self)(**{**kwargs, **changes}, stages=stages)

    def save_pretrained(self, directory: str | Path) -> Path:
        """``pipeline.json`` + ``unet/`` (+ ``upsampler/``), written beside and swapped in whole."""
        from vqgen import __version__

        directory = Path(directory)
        if directory.exists() and not (directory / PIPELINE_NAME).is_file() and \
                (not directory.is_dir() or any(directory.iterdir())):
            raise VqgenError(f"cannot write a pipeline to {directory}: it exists and is not a pipeline directory")
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            components = {"unet": "unet"}
            self.unet.save_pretrained(tmp / "unet")
            if self.upsampler is not None:
                self.upsampler.save_pretrained(tmp / "upsampler")
                components["upsampler"] = "upsampler"
            sampling = asdict(self.sampling)
            diffusion = asdict(self.diffusion_settings(self.sampling))
            atomic_write_json(tmp / PIPELINE_NAME, {
                "pipeline_type": self.pipeline_type, "components": components, "stages": self.stage_names,
                "sampling": sampling, "diffusion": diffusion, "max_prompt_length": self.max_prompt_length,
                "vqgen_version": __version__})
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a saved pipeline is shared like any folder
            replace_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load_directory(cls, directory: str | Path, device="cpu") -> "DiffusionTextToImagePipeline":
        """Load a diffusion pipeline directory strictly (called by ``load_pipeline``)."""
        from vqgen.diffusion.model import DiffusionUNet
        from vqgen.io import load_pretrained

        directory = Path(directory)
        path = directory / PIPELINE_NAME
        data = read_json_object(path)
        unknown = set(data) - KEYS
        if unknown:
            raise VqgenError(f"{path}: unknown keys {sorted(unknown)}")
        if data.get("pipeline_type") != cls.pipeline_type:
            raise VqgenError(f"{path}: pipeline_type is {data.get('pipeline_type')!r}, expected {cls.pipeline_type!r}")
        comps = data.get("components")
        if not isinstance(comps, dict) or "unet" not in comps or set(comps) - {"unet", "upsampler"}:
            raise VqgenError(f"{path}: 'components' must name unet (and optionally upsampler)")
        stages = data.get("stages") or {}
        if not isinstance(stages, dict) or set(stages) - {"upsampler"} or ("upsampler" in stages) != ("upsampler" in comps):
            raise VqgenError(f"{path}: 'stages' must name the upsampler stage exactly when there is an upsampler")
        models = {}
        for name, sub in comps.items():
            folder = resolve_inside(directory, sub) if isinstance(sub, str) else None
            if folder is None or not folder.is_dir():
                raise VqgenError(f"{path}: component {name!r} folder {sub!r} is missing")
            models[name] = load_pretrained(folder, device=device).eval()
        if not isinstance(models["unet"], DiffusionUNet):
            raise VqgenError(f"{directory / comps['unet']} holds a {type(models['unet']).__name__}, not a DiffusionUNet")
        diffusion = DiffusionSampling.from_dict(data.get("diffusion", {}), f"{path}: diffusion")
        sampling = dict(data.get("sampling", {}))
        sampling.setdefault("thresholding", diffusion.thresholding)
        return cls(**models, sampling=SamplingConfig.from_dict(sampling, f"{path}: sampling"), diffusion=diffusion,
                   max_prompt_length=data.get("max_prompt_length", 200), stages=stages)

    @classmethod
    def from_pretrained(cls, dir: str | Path | None = None, device="cpu") -> "DiffusionTextToImagePipeline":
        if dir is None:
            raise VqgenError("a diffusion pipeline needs its directory (there is no bundled one)")
        return cls.load_directory(dir, device)
