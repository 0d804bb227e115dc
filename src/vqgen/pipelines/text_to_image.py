"""Text-to-image: prompts → text condition → sampled image codes → decoded images, optionally
reranked by a contrastive scorer and upsampled by a super-resolution module.

    pipe = TextToImagePipeline.from_pretrained()            # the bundled shapes model
    out = pipe("a red circle above a blue square", num_images=4, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(0))
    out.images[0].save("x.png")

A pipeline directory holds ``pipeline.json`` (component folders and default settings) and one
sub-folder per component, each a saved model (``config.json`` + ``model.safetensors``)::

    pipeline.json  tokenizer/  transformer/  [reranker/]  [superres/]
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vqgen.errors import VqgenError
from vqgen.io import atomic_write_json, replace_dir

PIPELINE_NAME = "pipeline.json"
OUTPUT_TYPES = ("pil", "np", "pt", "codes")
REQUIRED = ("tokenizer", "transformer")
OPTIONAL = ("reranker", "superres")


def default_model_dir() -> Path:
    """Where the bundled default model lives inside the installed package."""
    return Path(__file__).resolve().parents[1] / "assets" / "default_model"


@dataclass(frozen=True)
class PipelineDefaults:
    """Settings a pipeline uses when a call does not give them (saved in ``pipeline.json``)."""

    guidance_scale: float = 3.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_prompt_length: int = 200
    rerank: int = 1  # candidates drawn per image when a call does not say (1: no reranking)

    def __post_init__(self):
        if self.max_prompt_length < 1:
            raise VqgenError("max_prompt_length must be >= 1")
        if not isinstance(self.rerank, int) or self.rerank < 1:
            raise VqgenError(f"the default rerank must be a positive number of candidates, got {self.rerank!r}")


@dataclass
class PipelineOutput:
    """What a pipeline call returns; row ``i`` of every field belongs to ``prompts[i]``.

    ``images``: list of PIL images, (H, W, 3) uint8 arrays or (3, H, W) float tensors in [0, 1]
    (per ``output_type``), None for ``"codes"``. ``codes``: (N, h, w) long. ``scores``: (N,)
    reranker scores of the kept images, or None when no reranking ran.
    """

    images: list | None
    codes: torch.Tensor
    scores: torch.Tensor | None
    prompts: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- shared helpers
def to_output_images(images: torch.Tensor, output_type: str) -> list | None:
    """(N, 3, H, W) in [0, 1] → a list in the asked form (None for ``"codes"``)."""
    if output_type == "codes":
        return None
    if output_type == "pt":
        return list(images.cpu().unbind(0))
    arrays = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)  # (N, H, W, 3)
    if output_type == "np":
        return list(arrays)
    from PIL import Image

    return [Image.fromarray(a) for a in arrays]


def check_common(num_images: Any, output_type: Any, rerank: Any) -> None:
    if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
        raise VqgenError(f"num_images must be a positive integer, got {num_images!r}")
    if output_type not in OUTPUT_TYPES:
        raise VqgenError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
    if rerank is not None and (not isinstance(rerank, int) or isinstance(rerank, bool) or rerank < 1):
        raise VqgenError(f"rerank must be None or a positive number of candidates, got {rerank!r}")


def per_group(value: Any, groups: int, name: str) -> list:
    """A scalar repeated per group, or a list with one value per group."""
    if isinstance(value, (list, tuple)):
        if len(value) != groups:
            raise VqgenError(f"{name} has {len(value)} values for {groups} prompts: give one per prompt")
        return list(value)
    return [value] * groups


class Components:
    """Loads, holds and saves the sub-folder components of a pipeline directory."""

    def __init__(self, tokenizer, transformer, reranker=None, superres=None):
        self.tokenizer, self.transformer, self.reranker, self.superres = tokenizer, transformer, reranker, superres
        if tuple(tokenizer.grid_size) != tuple(transformer.grid):
            raise VqgenError(f"the tokenizer's code grid {tuple(tokenizer.grid_size)} does not match the "
                             f"transformer's {tuple(transformer.grid)}")
        if tokenizer.config.quantizer.codebook_size != transformer.codebook_size:
            raise VqgenError(f"the tokenizer has {tokenizer.config.quantizer.codebook_size} codes, the transformer "
                             f"{transformer.codebook_size}")

    def named(self) -> dict[str, Any]:
        return {k: v for k, v in (("tokenizer", self.tokenizer), ("transformer", self.transformer),
                                  ("reranker", self.reranker), ("superres", self.superres)) if v is not None}

    @staticmethod
    def load(paths: dict[str, str | Path | None], device) -> "Components":
        """Load components from their directories (``None`` = absent optional component)."""
        from vqgen.io import load_pretrained
        from vqgen.tokenizer.base import VQTokenizer
        from vqgen.transformer.base import TokenModel

        def one(name: str, want: type | None):
            path = paths.get(name)
            if path is None:
                return None
            model = load_pretrained(path, device=device)
            if want is not None and not isinstance(model, want):
                raise VqgenError(f"{path} holds a {type(model).__name__}, not a {want.__name__} ({name})")
            return model.eval()

        from vqgen.rerank import check_reranker
        from vqgen.superres import SuperResolution

        reranker = one("reranker", None)
        if reranker is not None:
            check_reranker(reranker, paths["reranker"])
        return Components(one("tokenizer", VQTokenizer), one("transformer", TokenModel), reranker,
                          one("superres", SuperResolution))


def read_pipeline_json(directory: Path, pipeline_type: str) -> dict:
    """``pipeline.json`` checked strictly: its type, known keys, and every named sub-folder present."""
    path = directory / PIPELINE_NAME
    if not path.is_file():
        raise VqgenError(f"{directory} is not a pipeline directory: {PIPELINE_NAME} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VqgenError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("pipeline_type") != pipeline_type:
        raise VqgenError(f"{path}: pipeline_type is {data.get('pipeline_type') if isinstance(data, dict) else None!r}, "
                         f"expected {pipeline_type!r}")
    unknown = set(data) - {"pipeline_type", "components", "defaults", "class_names", "vqgen_version"}
    if unknown:
        raise VqgenError(f"{path}: unknown keys {sorted(unknown)}")
    comps = data.get("components")
    if not isinstance(comps, dict) or any(k not in REQUIRED + OPTIONAL for k in comps) or \
            any(k not in comps for k in REQUIRED):
        raise VqgenError(f"{path}: 'components' must name {list(REQUIRED)} (and optionally {list(OPTIONAL)})")
    for name, sub in comps.items():
        if not isinstance(sub, str) or not (directory / sub).is_dir():
            raise VqgenError(f"{path}: component {name!r} folder {sub!r} is missing")
    return data


def write_pipeline_dir(directory: str | Path, components: Components, meta: dict) -> Path:
    """Write every component into its sub-folder and ``pipeline.json``; replaces ``directory`` atomically."""
    from vqgen import __version__

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        names = {}
        for name, model in components.named().items():
            model.save_pretrained(tmp / name)
            names[name] = name
        atomic_write_json(tmp / PIPELINE_NAME, {**meta, "components": names, "vqgen_version": __version__})
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# ----------------------------------------------------------------------------- the pipeline
class TextToImagePipeline:
    """Prompts → images with a text-conditioned token transformer (Parti or unified stream)."""

    pipeline_type = "text_to_image"

    def __init__(self, tokenizer, transformer, reranker=None, superres=None,
                 defaults: PipelineDefaults = PipelineDefaults()):
        if getattr(transformer, "cond_kind", None) != "text":
            raise VqgenError(f"a text-to-image pipeline needs a text-conditioned transformer, "
                             f"got {type(transformer).__name__} ({getattr(transformer, 'cond_kind', None)})")
        if defaults.rerank > 1 and reranker is None:
            raise VqgenError("the pipeline's default rerank needs a reranker component")
        self.components = Components(tokenizer, transformer, reranker, superres)
        self.defaults = defaults

    # -- components ------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.components.tokenizer

    @property
    def transformer(self):
        return self.components.transformer

    @property
    def reranker(self):
        return self.components.reranker

    @property
    def superres(self):
        return self.components.superres

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def image_size(self) -> int:
        """Side of the output images in pixels (times ``superres.scale`` with ``super_resolution=True``)."""
        return int(self.tokenizer.config.image_size)

    @property
    def max_prompt_length(self) -> int:
        """The longest prompt accepted, in characters."""
        return self.defaults.max_prompt_length

    # -- save / load -----------------------------------------------------------------------
    @classmethod
    def from_components(cls, tokenizer: str | Path, transformer: str | Path, reranker: str | Path | None = None,
                        superres: str | Path | None = None, device="cpu", **defaults) -> "TextToImagePipeline":
        """Assemble a pipeline from saved component directories (e.g. training runs' ``model/``)."""
        c = Components.load({"tokenizer": tokenizer, "transformer": transformer, "reranker": reranker,
                             "superres": superres}, device)
        return cls(c.tokenizer, c.transformer, c.reranker, c.superres, PipelineDefaults(**defaults))

    @classmethod
    def from_pretrained(cls, dir: str | Path | None = None, device="cpu") -> "TextToImagePipeline":
        """Load a pipeline directory strictly; ``None`` loads the bundled default model."""
        directory = Path(dir) if dir is not None else default_model_dir()
        if dir is None and not (directory / PIPELINE_NAME).is_file():
            raise VqgenError(f"the bundled default model is missing from {directory}; "
                             "train it with `python configs/default_model.py` or pass --model DIR")
        if not directory.is_dir():
            raise VqgenError(f"pipeline directory {directory} does not exist")
        data = read_pipeline_json(directory, cls.pipeline_type)
        try:
            defaults = PipelineDefaults(**(data.get("defaults") or {}))
        except TypeError as e:
            raise VqgenError(f"{directory / PIPELINE_NAME}: bad defaults ({e})") from None
        c = Components.load({k: directory / v for k, v in data["components"].items()}, device)
        return cls(c.tokenizer, c.transformer, c.reranker, c.superres, defaults)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``pipeline.json`` and a sub-folder per component."""
        from dataclasses import asdict

        return write_pipeline_dir(directory, self.components,
                                  {"pipeline_type": self.pipeline_type, "defaults": asdict(self.defaults)})

    # -- prompts ---------------------------------------------------------------------------
    def validate_prompt(self, prompt: Any) -> str:
        """The prompt, stripped; raises ``VqgenError`` if it is not text, empty or too long."""
        if not isinstance(prompt, str):
            raise VqgenError(f"a prompt must be text, got {type(prompt).__name__}")
        text = prompt.strip()
        if not text:
            raise VqgenError("the prompt is empty")
        if len(text) > self.max_prompt_length:
            raise VqgenError(f"the prompt has {len(text)} characters, more than the limit of {self.max_prompt_length}")
        if any(not ch.isprintable() for ch in text):
            raise VqgenError("the prompt contains control characters")
        return text

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], num_images: int = 1,
                 guidance_scale: float | Sequence[float] | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, rerank: int | None = None,
                 super_resolution: bool = False,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 output_type: str = "pil", progress: bool = False) -> PipelineOutput:
        """Generate ``num_images`` images per prompt; results grouped by prompt.

        ``guidance_scale`` and ``generator`` may be lists with one entry per prompt: a batch of
        different requests then gives the same images as one call per request with the same
        seeds. ``rerank=k`` draws ``k`` candidates per image and keeps the one the reranker
        scores highest (``rerank=1``: no reranking). Settings left as None take the pipeline's
        defaults.
        """
        prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
        if not prompts:
            raise VqgenError("the prompt list is empty")
        prompts = [self.validate_prompt(p) for p in prompts]
        check_common(num_images, output_type, rerank)
        d = self.defaults
        scales = per_group(d.guidance_scale if guidance_scale is None else guidance_scale, len(prompts), "guidance_scale")
        gens = per_group(generator, len(prompts), "generator")
        k = d.rerank if rerank is None else rerank
        if k > 1 and self.reranker is None:
            raise VqgenError("rerank needs a pipeline with a reranker/ component")
        if super_resolution and self.superres is None:
            raise VqgenError("super_resolution needs a pipeline with a superres/ component")
        per_prompt = num_images * k  # rows sampled per prompt: image-major, candidates within
        rows = [p for p in prompts for _ in range(per_prompt)]
        codes = self._sample(rows, [s for s in scales for _ in range(per_prompt)],
                             [g for g in gens for _ in range(per_prompt)],
                             temperature=d.temperature if temperature is None else temperature,
                             top_k=d.top_k if top_k is None else top_k, top_p=d.top_p if top_p is None else top_p,
                             progress=progress)  # (P*n*k, h, w)
        images = self.decode(codes)  # (P*n*k, 3, H, W)
        scores = None
        if k > 1:
            all_scores = self.rerank_scores(images, codes, rows).view(-1, k)  # (P*n, k)
            best = all_scores.argmax(1)  # (P*n,)
            pick = torch.arange(best.shape[0], device=best.device) * k + best  # (P*n,)
            scores = all_scores.gather(1, best[:, None]).squeeze(1).cpu()  # (P*n,)
            codes, images = codes[pick.to(codes.device)], images[pick.to(images.device)]
        if super_resolution:
            images = self.superres(images)  # (N, 3, H*s, W*s)
        kept = [p for p in prompts for _ in range(num_images)]
        return PipelineOutput(images=to_output_images(images, output_type), codes=codes.cpu(), scores=scores,
                              prompts=kept)

    def _sample(self, rows: list[str], scales: list, gens: list, temperature, top_k, top_p,
                progress: bool) -> torch.Tensor:
        from vqgen.errors import ConfigError
        from vqgen.sampling import SamplingConfig, generate

        for s in scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise VqgenError(f"guidance_scale must be a number, got {s!r}")
        scale = float(scales[0]) if len(set(scales)) == 1 else tuple(float(s) for s in scales)
        try:
            config = SamplingConfig(temperature=float(temperature), top_k=int(top_k or 0),
                                    top_p=1.0 if top_p is None else float(top_p), guidance_scale=scale)
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise VqgenError(f"bad sampling setting: {e}") from None
        if all(g is None for g in gens):
            generator = None
        elif any(g is None for g in gens):
            raise VqgenError("give a generator for every prompt or for none")
        else:
            generator = gens  # one per row; rows of a prompt share (and consume in order) its generator
        cond = self.transformer.text_condition(rows, device=self.device)
        return generate(self.transformer, cond, config=config, generator=generator, progress=progress)

    @torch.no_grad()
    def rerank_scores(self, images: torch.Tensor, codes: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Higher is better (N,): the CLIP reranker's similarity, or a text-after-image model's
        negative caption perplexity (CogView's post-selection) — log-perplexity, same order."""
        from vqgen.transformer.base import TokenModel

        if isinstance(self.reranker, TokenModel):
            cond = self.reranker.text_condition(prompts, device=self.device)
            return -self.reranker.caption_nll(codes.to(self.device), cond)  # (N,)
        return self.reranker.score(images, prompts)  # (N,)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Codes (N, h, w) → images (N, 3, H, W) in [0, 1] with the image tokenizer."""
        dev = next(self.tokenizer.parameters()).device
        parts = [self.tokenizer.decode(codes[i:i + batch_size].to(dev)) for i in range(0, codes.shape[0], batch_size)]
        return torch.cat(parts)  # (N, 3, H, W)
