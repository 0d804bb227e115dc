"""Train the super-resolution module on a frozen tokenizer (``vqgen superres train``).

Inputs are the tokenizer's reconstructions of the images box-downsampled to the tokenizer's size;
targets are the images at ``scale`` times that size, so the image folder must hold images at
least that large (e.g. ``vqgen data shapes --size 128`` for a 64px tokenizer and x2). The losses
are the tokenizer's: L2, the weight-free 1 - MS-SSIM, and optionally the VGG perceptual loss from
a local weights file (no adversarial term here).

Every ``holdout_every``-th image is held out; ``metrics.jsonl`` gets held-out PSNR/SSIM of the
module and of bicubic upsampling of the same reconstructions. The model goes to ``RUN/model/``;
the same command again on the same RUN continues from the latest checkpoint.

An image folder is read into memory with its reconstructions. Shards
(:func:`~vqgen.data.stream.is_stream_source`) stream through a
:class:`~vqgen.data.stream.StreamLoader` (split by rank and worker, a shuffle buffer, the position
in each checkpoint), each batch reconstructed as it arrives; the images whose key hashes to the
held-out split (:func:`~vqgen.tokenizer.data.heldout_key`, at most :data:`HELDOUT_LIMIT`) are held
in memory for evaluation.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from PIL import Image

from vqgen.config import get_preset, register_preset, require
from vqgen.data.stream import is_stream_source, load_position, position_state, report_stream
from vqgen.errors import VqgenError
from vqgen.metrics.reconstruction import ms_ssim, psnr, ssim
from vqgen.runtime import (EpochBatches, Limits, RunLogger, cleanup_distributed, init_distributed, load_weights,
                           metrics_bytes, progress, report_skips, resolve_run_config, resume_from, rng_state,
                           save_checkpoint, save_final, save_run_config, seed_everything, set_rng_state)
from vqgen.superres.model import FAMILY as MODEL_FAMILY
from vqgen.superres.model import SuperResConfig, SuperResolution
from vqgen.tokenizer.data import image_stream, load_heldout_shards

FAMILY = "superres-train"
HELDOUT_LIMIT = 256  # held-out images of streamed shards read into memory for evaluation


@dataclass(frozen=True)
class SuperResTrainConfig:
    model: SuperResConfig = field(default_factory=SuperResConfig)
    batch_size: int = 16
    lr: float = 1e-3
    steps: int = 2000
    l2: float = 1.0
    ms_ssim: float = 0.1  # 1 - MS-SSIM, the tokenizer's weight-free perceptual substitute
    perceptual: float = 0.0  # LPIPS-style VGG16 loss; needs vgg_path
    vgg_path: str | None = None
    max_images: int = 2000  # images read from a folder (0: all), kept in memory with their inputs; not for streams
    holdout_every: int = 10  # every n-th image is held out (shards: by a hash of the key)
    stream_workers: int = 2  # DataLoader workers per rank when the data are streamed shards
    shuffle_buffer: int = 1000  # streamed shards: samples in the shuffle buffer of each reader
    seed: int = 0
    device: str = "auto"
    time_limit_min: float = 0.0  # stop (and save) after this many minutes; 0: no limit
    cpu_limit_min: float = 0.0  # stop after this many minutes of this process's CPU time; 0: no limit
    log_every: int = 20
    eval_every: int = 200
    ckpt_every: int = 500
    optimizer: Literal["adam", "sgd"] = "adam"  # sgd: plain steps, linear in the gradient (equivalence tests)

    def __post_init__(self):
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.steps >= 0, "steps", "must be >= 0")
        for name in ("l2", "ms_ssim", "perceptual"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        require(self.perceptual == 0 or bool(self.vgg_path), "vgg_path", "perceptual > 0 needs a local VGG16 file")
        require(self.max_images >= 0, "max_images", "must be >= 0")
        require(self.holdout_every >= 2, "holdout_every", "must be >= 2")
        for name in ("stream_workers", "shuffle_buffer"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("log_every", "eval_every", "ckpt_every"):
            require(getattr(self, name) >= 1, name, "must be >= 1")


@register_preset(FAMILY, "tiny")
def _train_tiny() -> SuperResTrainConfig:
    """The tiny module, 20 steps of batch 4: for tests."""
    return SuperResTrainConfig(model=get_preset(MODEL_FAMILY, "tiny"), batch_size=4, steps=20, max_images=0,
                               device="cpu", log_every=5, eval_every=10, ckpt_every=10)


@register_preset(FAMILY, "small")
def _train_small() -> SuperResTrainConfig:
    """The small module, batch 16, 2000 steps."""
    return SuperResTrainConfig(model=get_preset(MODEL_FAMILY, "small"))


# ----------------------------------------------------------------------------- data
@dataclass
class SuperResData:
    """Tokenizer reconstructions (N, 3, h, w) float, targets (N, 3, h*s, w*s) uint8, and the
    box-downsampled originals (N, 3, h, w) float (for the bicubic-of-the-original reference)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    low: torch.Tensor
    train_idx: torch.Tensor
    heldout_idx: torch.Tensor
    skipped: Counter = field(default_factory=Counter)


def _first_image_size(root: Path) -> tuple[int, int] | None:
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        return None
    for line in meta.read_text(encoding="utf-8").splitlines():
        try:
            with Image.open(root / json.loads(line)["file_name"]) as im:
                return im.size
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _check_tokenizer(tokenizer) -> None:
    """Only an unconditioned decoder can reconstruct images without labels or captions."""
    if getattr(tokenizer, "cond_embed", None) is not None:
        raise VqgenError("a tokenizer whose decoder is conditioned (class/text) is not supported here")


@torch.no_grad()
def reconstruct(tokenizer, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's inputs for target images (B, 3, H, W) in [0, 1]: the tokenizer's
    reconstructions of them box-downsampled to its size, and the downsampled images, both (B, 3, h, w)."""
    size = tokenizer.config.image_size
    low = F.interpolate(images, size=(size, size), mode="area")  # (B, 3, h, w)
    return tokenizer.decode(tokenizer.encode(low)).float(), low


def _with_inputs(tokenizer, targets: torch.Tensor, train_idx: torch.Tensor, heldout_idx: torch.Tensor,
                 device: torch.device, batch_size: int, show_progress: bool, skipped: Counter) -> SuperResData:
    """Targets (N, 3, H, W) uint8 with their reconstructions, computed ``batch_size`` at a time."""
    low_size = tokenizer.config.image_size
    n = len(targets)
    inputs = torch.empty(n, 3, low_size, low_size)
    low = torch.empty(n, 3, low_size, low_size)
    for s in progress(range(0, n, batch_size), desc="tokenizer reconstructions", enabled=show_progress):
        x = targets[s:s + batch_size].to(device).float() / 255.0  # (b, 3, H, W)
        rec, x_low = reconstruct(tokenizer, x)  # (b, 3, h, w) x2
        inputs[s:s + batch_size], low[s:s + batch_size] = rec.cpu(), x_low.cpu()
    return SuperResData(inputs, targets, low, train_idx, heldout_idx, skipped)


def prepare_data(tokenizer, data_dir: str | Path, scale: int, max_images: int, holdout_every: int,
                 device: torch.device, batch_size: int = 64, show_progress: bool = True) -> SuperResData:
    """Read the image folder or shards at the target size and run the frozen tokenizer over the
    downsampled images."""
    from vqgen.tokenizer.data import load_image_set

    _check_tokenizer(tokenizer)
    low_size = tokenizer.config.image_size
    high = low_size * scale
    root = Path(data_dir)
    first = _first_image_size(root) if root.is_dir() else None
    if first is not None and min(first) < high:
        raise VqgenError(f"{root} holds {first[0]}x{first[1]} images; x{scale} on a {low_size}px tokenizer needs "
                         f"at least {high}x{high} (make the data at the higher size)")
    data = load_image_set(root, high, limit=max_images)
    n = len(data)
    if n < 2:
        raise VqgenError(f"{root} has {n} usable images; super-resolution needs at least 2")
    idx = torch.arange(n)
    held = idx % holdout_every == holdout_every - 1
    if not held.any():
        held[-1] = True
    return _with_inputs(tokenizer.to(device).eval(), data.images, idx[~held], idx[held], device, batch_size,
                        show_progress, data.skipped)


def prepare_heldout_stream(tokenizer, source, scale: int, holdout_every: int, device: torch.device,
                           batch_size: int = 64) -> SuperResData:
    """The held-out images of streamed shards (at most :data:`HELDOUT_LIMIT`) at the target size
    with their reconstructions, as a :class:`SuperResData` with no training images."""
    _check_tokenizer(tokenizer)
    held = load_heldout_shards(source, tokenizer.config.image_size * scale, holdout_every, HELDOUT_LIMIT)
    if held is None:
        raise VqgenError(f"{source}: no held-out image (holdout_every={holdout_every})")
    return _with_inputs(tokenizer.to(device).eval(), held.images, torch.zeros(0, dtype=torch.long),
                        torch.arange(len(held)), device, batch_size, False, Counter())


# ----------------------------------------------------------------------------- training
@torch.no_grad()
def evaluate_superres(model: SuperResolution, data: SuperResData, device: torch.device,
                      batch_size: int = 32) -> dict[str, float]:
    """Held-out PSNR / SSIM of the module vs bicubic upsampling of the same reconstructions, plus
    bicubic upsampling of the downsampled originals (what a perfect tokenizer would give)."""
    model.eval()
    sums = {k: 0.0 for k in ("psnr_sr", "psnr_bicubic", "psnr_bicubic_original", "ssim_sr", "ssim_bicubic")}
    idx = data.heldout_idx
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        x = data.inputs[b].to(device)  # (b, 3, h, w)
        y = data.targets[b].to(device).float() / 255.0  # (b, 3, H, W)
        sr, bic, bic_orig = model(x), model.bicubic(x), model.bicubic(data.low[b].to(device))
        sums["psnr_sr"] += psnr(sr, y).sum().item()
        sums["psnr_bicubic"] += psnr(bic, y).sum().item()
        sums["psnr_bicubic_original"] += psnr(bic_orig, y).sum().item()
        sums["ssim_sr"] += ssim(sr, y).sum().item()
        sums["ssim_bicubic"] += ssim(bic, y).sum().item()
    model.train()
    return {k: v / len(idx) for k, v in sums.items()}


def train_superres(cfg: SuperResTrainConfig, tokenizer, data_dir: str | Path, run_dir: str | Path,
                   show_progress: bool = True) -> tuple[SuperResolution, dict[str, float]]:
    """Train (or resume) the module on a frozen tokenizer; returns it and its held-out metrics. On
    an existing RUN, ``cfg`` may differ from the saved config only in the harmless fields."""
    run_dir = Path(run_dir)
    cfg, _ = resolve_run_config(run_dir, cfg)
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, tokenizer, data_dir, run_dir, show_progress, info)
    finally:
        cleanup_distributed()


def _train(cfg: SuperResTrainConfig, tokenizer, data_dir, run_dir: Path, show_progress: bool, info):
    """One process's run (DDP under torchrun: each rank its share of every global batch)."""
    import torch.distributed as dist

    device, main = info.device, info.is_main
    seed_everything(cfg.seed)
    streaming = is_stream_source(data_dir)
    if streaming:  # held-out images in memory, training images streamed (counted as they are read)
        data = prepare_heldout_stream(tokenizer, data_dir, cfg.model.scale, cfg.holdout_every, device)
    else:
        data = prepare_data(tokenizer, data_dir, cfg.model.scale, cfg.max_images, cfg.holdout_every, device,
                            show_progress=show_progress and main)
        report_skips(run_dir, data_dir, len(data.targets), data.skipped, main)
    if not streaming and len(data.train_idx) < cfg.batch_size * info.world_size:
        raise VqgenError(f"{len(data.train_idx)} training images, fewer than one batch of {cfg.batch_size}"
                         + (f" x {info.world_size} ranks" if info.distributed else ""))
    perceptual = None
    if cfg.perceptual > 0:
        from vqgen.tokenizer.losses import VGGPerceptualLoss
        perceptual = VGGPerceptualLoss.from_file(cfg.vgg_path).to(device)

    model = SuperResolution(cfg.model).to(device)
    opt = (torch.optim.SGD(model.parameters(), lr=cfg.lr) if cfg.optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=cfg.lr))
    if streaming:
        batches = image_stream(data_dir, cfg.model.scale * tokenizer.config.image_size, cfg.batch_size,
                               cfg.holdout_every, cfg.seed, info.rank, info.world_size, cfg.stream_workers,
                               cfg.shuffle_buffer)
    else:
        batches = EpochBatches(len(data.train_idx), cfg.batch_size, seed=cfg.seed, rank=info.rank,
                               world_size=info.world_size)
    state = resume_from(run_dir, lambda ckpt, _: load_weights(model, ckpt / "superres"), main)
    if state is not None:
        opt.load_state_dict(state["opt"])
        load_position(batches, state["batches"], info.rank, info.world_size)
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
    elif main:
        save_run_config(cfg, run_dir)
    step = int(state["step"]) if state is not None else 0
    limits = Limits(cfg.time_limit_min, cfg.cpu_limit_min, state)
    net = model
    if info.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    logger = RunLogger(run_dir, enabled=main)
    bar = progress(total=cfg.steps, initial=step, desc=f"superres x{cfg.model.scale}", enabled=show_progress and main)
    it = iter(batches)
    model.train()

    def checkpoint(step: int) -> None:
        """Rank 0 writes ``step-N`` with every rank's RNG state (collective)."""
        rngs = [rng_state()]
        if info.distributed:
            rngs = [None] * info.world_size
            dist.all_gather_object(rngs, rng_state())
        position = position_state(batches)
        if main:
            save_checkpoint(run_dir, step, {"superres": model}, {
                "opt": opt.state_dict(), "batches": position, "rng": rngs, "step": step,
                **limits.state_dict(), "metrics_bytes": metrics_bytes(run_dir)})
        if info.distributed:
            dist.barrier()

    try:
        while step < cfg.steps:
            if streaming:
                y = next(it)[0].to(device).float() / 255.0  # (B, 3, H, W)
                x, _ = reconstruct(tokenizer, y)  # (B, 3, h, w)
            else:
                b = data.train_idx[next(it)]  # (B,)
                x = data.inputs[b].to(device)  # (B, 3, h, w)
                y = data.targets[b].to(device).float() / 255.0  # (B, 3, H, W)
            out = net(x)  # (B, 3, H, W)
            terms = {"l2": (out - y).pow(2).mean()}
            loss = cfg.l2 * terms["l2"]
            if cfg.ms_ssim > 0:
                terms["ms_ssim"] = 1.0 - ms_ssim(out, y).mean()
                loss = loss + cfg.ms_ssim * terms["ms_ssim"]
            if perceptual is not None:
                terms["perceptual"] = perceptual(out, y)
                loss = loss + cfg.perceptual * terms["perceptual"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            stop = limits.reached(step if main else None)
            if step % cfg.log_every == 0 or step == cfg.steps or stop:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                logger.log(step, {"loss": loss, **terms})
            if stop:
                break
            if main and step % cfg.eval_every == 0 and step < cfg.steps:
                logger.log(step, evaluate_superres(model, data, device))
            if step % cfg.ckpt_every == 0 and step < cfg.steps:
                checkpoint(step)
        model.eval()
        checkpoint(step)
        if streaming and main:
            report_stream(run_dir, data_dir, batches, info.distributed)
        metrics = {}
        if main:
            save_final(model, run_dir / "model")
            metrics = evaluate_superres(model, data, device)  # logged after the last checkpoint: a re-run logs it once
            logger.log(step, metrics)
    finally:
        bar.close()
        logger.close()
    return model, metrics
