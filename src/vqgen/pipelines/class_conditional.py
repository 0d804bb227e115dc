"""Class-conditional generation: class ids or names → sampled codes → images (a VIM model).

    pipe = ClassConditionalPipeline.from_pretrained("runs/digits-pipeline")
    out = pipe(["3", 7], num_images=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))

Same directory layout as the text-to-image pipeline (``pipeline.json`` + ``tokenizer/``,
``transformer/``, optional ``superres/``); ``pipeline.json`` also lists the class names.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from vqgen.errors import VqgenError
from vqgen.pipelines.text_to_image import (Components, PipelineDefaults, PipelineOutput, check_common, per_group,
                                           read_pipeline_json, to_output_images, write_pipeline_dir)


class ClassConditionalPipeline:
    """Class labels → images with a class-conditional token transformer."""

    pipeline_type = "class_conditional"

    def __init__(self, tokenizer, transformer, superres=None, class_names: Sequence[str] | None = None,
                 defaults: PipelineDefaults = PipelineDefaults()):
        if getattr(transformer, "cond_kind", None) != "class":
            raise VqgenError("a class-conditional pipeline needs a class-conditional transformer (vim with classes)")
        self.components = Components(tokenizer, transformer, None, superres)
        n = transformer.config.num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(n)]
        if len(self.class_names) != n:
            raise VqgenError(f"{len(self.class_names)} class names for a model of {n} classes")
        self.defaults = defaults

    @property
    def tokenizer(self):
        return self.components.tokenizer

    @property
    def transformer(self):
        return self.components.transformer

    @property
    def image_size(self) -> int:
        return int(self.tokenizer.config.image_size)

    @classmethod
    def from_pretrained(cls, dir: str | Path, device="cpu") -> "ClassConditionalPipeline":
        directory = Path(dir)
        if not directory.is_dir():
            raise VqgenError(f"pipeline directory {directory} does not exist")
        data = read_pipeline_json(directory, cls.pipeline_type)
        c = Components.load({k: directory / v for k, v in data["components"].items()}, device)
        return cls(c.tokenizer, c.transformer, c.superres, data.get("class_names"),
                   PipelineDefaults(**(data.get("defaults") or {})))

    def save_pretrained(self, directory: str | Path) -> Path:
        return write_pipeline_dir(directory, self.components, {"pipeline_type": self.pipeline_type,
                                                               "defaults": asdict(self.defaults),
                                                               "class_names": self.class_names})

    def class_id(self, label: Any) -> int:
        """A class index from an index or a class name; ``VqgenError`` if it names no class."""
        if isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < len(self.class_names):
                raise VqgenError(f"class {label} is outside 0..{len(self.class_names) - 1}")
            return label
        if isinstance(label, str) and label in self.class_names:
            return self.class_names.index(label)
        raise VqgenError(f"unknown class {label!r}; classes: {', '.join(self.class_names[:20])}")

    @torch.no_grad()
    def __call__(self, class_labels: int | str | Sequence[int | str], num_images: int = 1,
                 guidance_scale: float | Sequence[float] | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, super_resolution: bool = False,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 output_type: str = "pil") -> PipelineOutput:
        """``num_images`` images per class label, grouped by label (``prompts`` holds the class names)."""
        from vqgen.sampling import SamplingConfig, generate
        from vqgen.transformer.base import Condition

        labels = [class_labels] if isinstance(class_labels, (int, str)) else list(class_labels)
        if not labels:
            raise VqgenError("give at least one class label")
        ids = [self.class_id(x) for x in labels]
        check_common(num_images, output_type, None)
        d = self.defaults
        scales = per_group(d.guidance_scale if guidance_scale is None else guidance_scale, len(ids), "guidance_scale")
        gens = per_group(generator, len(ids), "generator")
        row_scales = [float(s) for s in scales for _ in range(num_images)]
        scale = row_scales[0] if len(set(row_scales)) == 1 else tuple(row_scales)
        config = SamplingConfig(temperature=d.temperature if temperature is None else temperature,
                                top_k=int((d.top_k if top_k is None else top_k) or 0),
                                top_p=float((d.top_p if top_p is None else top_p) or 1.0), guidance_scale=scale)
        if any(g is None for g in gens) and not all(g is None for g in gens):
            raise VqgenError("give a generator for every label or for none")
        row_gens = None if gens[0] is None else [g for g in gens for _ in range(num_images)]
        device = next(self.transformer.parameters()).device
        cond = Condition(class_ids=torch.tensor([i for i in ids for _ in range(num_images)], device=device))
        codes = generate(self.transformer, cond, config=config, generator=row_gens)  # (N, h, w)
        images = self.tokenizer.decode(codes.to(next(self.tokenizer.parameters()).device))  # (N, 3, H, W)
        if super_resolution:
            if self.components.superres is None:
                raise VqgenError("super_resolution needs a pipeline with a superres/ component")
            images = self.components.superres(images)
        names = [self.class_names[i] for i in ids for _ in range(num_images)]
        return PipelineOutput(images=to_output_images(images, output_type), codes=codes.cpu(), scores=None,
                              prompts=names)
