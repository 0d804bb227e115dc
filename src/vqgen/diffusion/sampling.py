"""Sampling a diffusion model: diffusers' schedulers (DDPM, DDIM, DPM-Solver++), classifier-free
guidance, and Imagen's static and dynamic thresholding of the predicted clean image x̂₀.

Guidance is ε̂ = ε̂_c + (λ − 1)(ε̂_c − ε̂_u), the usual ε̂_u + λ(ε̂_c − ε̂_u) written so that λ = 1
gives the conditional prediction exactly (and the unconditional pass is skipped when every row
has λ = 1). Thresholding is applied here, for every scheduler alike: x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t
is thresholded and turned back into the ε̂ the scheduler steps with. Static thresholding clips
x̂₀ to [−1, 1]; dynamic thresholding takes, per sample, s = the p-th percentile of |x̂₀|,
s = max(s, 1), clips x̂₀ to [−s, s] and divides by s.

    settings = DiffusionSampling(scheduler="ddim", steps=25, thresholding="dynamic")
    images = sample(model, text, mask, guidance=torch.full((B,), 5.0), settings=settings, generator=gens)
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Sequence

import torch

from vqgen.config import require
from vqgen.errors import ConfigError

SCHEDULERS = ("ddim", "ddpm", "dpm")
THRESHOLDING = ("none", "static", "dynamic")
MAX_STEPS = 1000


@dataclass(frozen=True)
class DiffusionSampling:
    """How a diffusion pipeline samples: ``scheduler`` (ddpm = ancestral sampling, the default: the most
    forgiving of a briefly trained model; ddim; dpm = DPM-Solver++ 2M),
    ``steps``, ``eta`` (DDIM's noise; 0 = deterministic), ``thresholding`` with ``percentile`` (p
    of dynamic thresholding), and for a super-resolution stage its ``sr_steps``, ``sr_aug_level``
    (the noise-augmentation level of the low-resolution input at inference) and ``sr_guidance``."""

    scheduler: Literal["ddim", "ddpm", "dpm"] = "ddpm"
    steps: int = 25
    eta: float = 0.0
    thresholding: Literal["none", "static", "dynamic"] = "dynamic"
    percentile: float = 0.995
    sr_steps: int = 20
    sr_aug_level: float = 0.1
    sr_guidance: float = 1.0

    def __post_init__(self):
        require(self.scheduler in SCHEDULERS, "scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        require(isinstance(self.steps, int) and 1 <= self.steps <= MAX_STEPS, "steps", f"must be 1..{MAX_STEPS}")
        require(isinstance(self.sr_steps, int) and 1 <= self.sr_steps <= MAX_STEPS, "sr_steps",
                f"must be 1..{MAX_STEPS}")
        require(0.0 <= self.eta <= 1.0, "eta", "must be in [0, 1]")
        require(self.thresholding in THRESHOLDING, "thresholding", f"must be one of {', '.join(THRESHOLDING)}")
        require(0.5 <= self.percentile <= 1.0, "percentile", "must be in [0.5, 1]")
        require(0.0 <= self.sr_aug_level <= 1.0, "sr_aug_level", "must be in [0, 1]")
        require(0.0 <= self.sr_guidance <= 100.0, "sr_guidance", "must be in [0, 100]")

    @classmethod
    def from_dict(cls, data: Any, where: str = "diffusion") -> "DiffusionSampling":
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be an object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{where}: unknown settings {sorted(unknown)}")
        return cls(**data)

    def merged(self, **changes: Any) -> "DiffusionSampling":
        """These settings with every change that is not None applied (and checked)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **given) if given else self


# ----------------------------------------------------------------------------- the pieces
def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    """Clip x̂₀ (B, C, H, W) to [−1, 1]."""
    return x0.clamp(-1.0, 1.0)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding, per sample: s = the ``percentile`` quantile of |x̂₀|,
    s = max(s, 1), x̂₀ clipped to [−s, s] and divided by s."""
    s = torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1)  # (B,)
    s = s.clamp(min=1.0).to(x0)[:, None, None, None]  # (B, 1, 1, 1)
    return torch.maximum(torch.minimum(x0, s), -s) / s  # (B, C, H, W)


def threshold(x0: torch.Tensor, kind: str, percentile: float = 0.995) -> torch.Tensor:
    if kind == "none":
        return x0
    if kind == "static":
        return static_threshold(x0)
    if kind == "dynamic":
        return dynamic_threshold(x0, percentile)
    raise ConfigError(f"thresholding: must be one of {', '.join(THRESHOLDING)}, got {kind!r}", "thresholding")


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance, per row λ (B,): ε̂_c + (λ − 1)(ε̂_c − ε̂_u); λ = 1 is ε̂_c exactly."""
    lam = scale.to(cond)[:, None, None, None]  # (B, 1, 1, 1)
    return cond + (lam - 1.0) * (cond - uncond)  # (B, C, H, W)


def make_scheduler(name: str, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2"):
    """A fresh diffusers scheduler (they keep per-call state) with no thresholding of its own."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type="epsilon",
                  timestep_spacing="leading", steps_offset=1)  # never the last timestep: ᾱ ≈ 0 there (cosine
    # betas), where x̂₀ = (x − √(1−ᾱ) ε̂)/√ᾱ multiplies ε̂'s error by ~10⁴ and every sample blows up
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=False)
    if name == "dpm":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ConfigError(f"decoder: a diffusion pipeline samples with {', '.join(SCHEDULERS)}, got {name!r}", "decoder")


def row_noise(shape: Sequence[int], generator, device) -> torch.Tensor:
    """Standard normal noise; with a list of generators, row ``i`` is drawn from generator ``i``
    (on the CPU, so a seed gives the same images on every device)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(tuple(shape), generator=generator, device=torch.device("cpu")).to(device)


# ----------------------------------------------------------------------------- the loop
@torch.no_grad()
def sample(model, text: torch.Tensor, mask: torch.Tensor, *, guidance: torch.Tensor, settings: DiffusionSampling,
           generator=None, low_res: torch.Tensor | None = None, aug_level: float = 0.0, steps: int | None = None,
           progress: bool = False) -> torch.Tensor:
    """Images (B, 3, S, S) in [−1, 1] for text rows (B, ...) with per-row guidance λ (B,).

    A super-resolution model takes ``low_res`` (B, 3, s, s) in [−1, 1], corrupted at
    ``aug_level`` with noise from the rows' generators before sampling. ``steps`` overrides
    ``settings.steps``.
    """
    from vqgen.diffusion.model import augment_low_res
    from vqgen.runtime import progress as progress_bar

    c = model.config
    device = model.device
    b = text.shape[0]
    sched = make_scheduler(settings.scheduler, c.num_train_timesteps, c.beta_schedule)
    sched.set_timesteps(steps or settings.steps)
    x = row_noise((b, 3, c.image_size, c.image_size), generator, device) * sched.init_noise_sigma  # (B, 3, S, S)
    level = None
    if low_res is not None:
        level = torch.full((b,), float(aug_level), device=device)  # (B,)
        noise = row_noise(tuple(low_res.shape), generator, device)  # (B, 3, s, s)
        low_res = augment_low_res(low_res.to(device), level, noise)  # (B, 3, s, s)
    guidance = guidance.to(device)
    two = bool((guidance != 1.0).any())
    if two:  # conditional rows, then the null text
        null_text, null_mask = model.null_text(text, mask)
        text2, mask2 = torch.cat([text, null_text]), torch.cat([mask, null_mask])  # (2B, ...)
        low2 = None if low_res is None else torch.cat([low_res, low_res])  # (2B, 3, s, s)
        level2 = None if level is None else torch.cat([level, level])  # (2B,)
    alphas = sched.alphas_cumprod.to(device)
    extra = {"eta": settings.eta} if settings.scheduler == "ddim" else {}
    for t in progress_bar(sched.timesteps, desc="denoising", enabled=progress):
        inp = sched.scale_model_input(x, t)  # (B, 3, S, S)
        ts = torch.full((b,), int(t), device=device, dtype=torch.long)  # (B,)
        if two:
            both = model(torch.cat([inp, inp]), torch.cat([ts, ts]), text2, mask2, low2, level2)  # (2B, 3, S, S)
            eps = guide(both[:b], both[b:], guidance)  # (B, 3, S, S)
        else:
            eps = model(inp, ts, text, mask, low_res, level)  # (B, 3, S, S)
        if settings.thresholding != "none":
            a = alphas[int(t)]
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()  # (B, 3, S, S)
            x0 = threshold(x0, settings.thresholding, settings.percentile)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # (B, 3, S, S): the ε that x̂₀ implies
        x = sched.step(eps, t, x, generator=generator, **extra).prev_sample  # (B, 3, S, S)
    return x.clamp(-1.0, 1.0)
