"""Text-to-video (CogVideo): prompts → key frames → recursive interpolation → frames.

The ``transformer`` component is a :class:`vqgen.video.model.VideoTransformer` (the frozen
image model with its key-frame and interpolation channels); the ``tokenizer`` decodes every
frame. Saved and loaded like every pipeline (``pipeline.json`` + ``tokenizer/`` + ``transformer/``);
the sampling defaults (guidance, temperature, top-k) are the pipeline's ``sampling`` settings.

    pipe = TextToVideoPipeline.from_pretrained()              # the bundled motion model
    out = pipe("a red circle moves to the right", num_frames=17, fps=8, seed=0)
    out.frames[0]                                             # 17 PIL images
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vqgen.errors import VqgenError
from vqgen.pipelines.base import Pipeline, load_pipeline, to_output_images
from vqgen.pipelines.text_to_image import TextToImagePipeline


def video_model_dir() -> Path:
    """Where the bundled video pipeline lives inside the installed package."""
    return Path(__file__).resolve().parents[1] / "assets" / "video_model"


@dataclass
class VideoOutput:
    """``frames[i]``: video ``i`` as a list of PIL images / (H, W, 3) arrays, or a (T, 3, H, W)
    tensor (``output_type="pt"``), None for ``"codes"``; ``codes`` (N, T, h, w); ``key_codes``
    (N, 5, h, w) the key frames before interpolation; ``fps`` the frame rate of ``frames``."""

    frames: list | None
    codes: torch.Tensor
    key_codes: torch.Tensor
    fps: int
    prompts: list[str] = field(default_factory=list)


class TextToVideoPipeline(Pipeline):
    """Prompts → clips with a dual-channel video transformer."""

    pipeline_type = "text_to_video"
    cond_kind = "text"

    validate_prompt = TextToImagePipeline.validate_prompt

    def condition(self, labels: list[str], device):
        return self.transformer.text_condition(labels, device=device)

    @classmethod
    def from_pretrained(cls, dir: str | Path | None = None, device="cpu") -> "TextToVideoPipeline":
        """A video pipeline directory; ``None`` loads the bundled one."""
        if dir is None:
            dir = video_model_dir()
            if not (dir / "pipeline.json").is_file():
                raise VqgenError(f"the bundled video model is missing from {dir}; build it with "
                                 "`python configs/video_model.py` or pass --model DIR")
        return load_pipeline(dir, device, expect=cls)

    @torch.no_grad()
    def __call__(self, prompt: Any, num_videos: int = 1, *, num_frames: int = 17, fps: int = 8,
                 seed: int | None = None, generator=None, guidance_scale: float | None = None,
                 interp_guidance_scale: float | None = None, temperature: float | None = None,
                 top_k: int | None = None, output_type: str = "pil") -> VideoOutput:
        """``num_videos`` clips of ``num_frames`` frames (5, 9, 17, 33: 5 key frames and
        interpolation passes) at ``fps`` per prompt. ``seed`` seeds video ``i`` of every prompt
        with ``seed + i`` (or give ``generator``: one, or one per video row); guidance, temperature
        and top-k default to the pipeline's sampling settings."""
        from vqgen.video.sample import generate_video

        labels = self._inputs(prompt)
        if not isinstance(num_videos, int) or isinstance(num_videos, bool) or num_videos < 1:
            raise VqgenError(f"num_videos must be a positive integer, got {num_videos!r}")
        if output_type not in ("pil", "np", "pt", "codes"):
            raise VqgenError(f"output_type must be pil, np, pt or codes, got {output_type!r}")
        s = self.sampling.merged(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k)
        rows = [p for p in labels for _ in range(num_videos)]
        if generator is None and seed is not None:
            generator = [torch.Generator().manual_seed(int(seed) + i) for _ in labels for i in range(num_videos)]
        cond = self.condition(rows, self.device)
        codes, stages = generate_video(self.transformer, cond, frames=num_frames, fps=fps,
                                       guidance=s.guidance_scale, temperature=s.temperature, top_k=s.top_k or 0,
                                       generator=generator, interp_guidance=interp_guidance_scale)
        grid = tuple(self.transformer.grid)
        codes = codes.view(len(rows), num_frames, *grid).cpu()  # (N, T, h, w)
        frames = None
        if output_type != "codes":
            images = self.decode(codes.flatten(0, 1))  # (N*T, 3, H, W)
            per = to_output_images(images, output_type)
            frames = [per[i * num_frames:(i + 1) * num_frames] for i in range(len(rows))]
            if output_type == "pt":
                frames = [torch.stack(f) for f in frames]  # (T, 3, H, W) each
        return VideoOutput(frames=frames, codes=codes, key_codes=stages[0].view(len(rows), -1, *grid).cpu(),
                           fps=fps, prompts=rows)
