"""Training a tokenizer (ViT-VQGAN or CNN-VQGAN): one function, the same on CPU, GPU or under torchrun.

``train_tokenizer(cfg, data_dir, run_dir)`` writes ``RUN/config.json``, ``metrics.jsonl``,
TensorBoard scalars and images, reconstruction grids under ``samples/``, checkpoints that resume
exactly (weights, optimizers, schedulers, step, RNG, batch position, codebook monitor) and the
final model at ``RUN/model/``. Called again on the same RUN it continues from the latest checkpoint.

An image folder is read into memory. Shards (:func:`~vqgen.data.stream.is_stream_source`) stream
through a :class:`~vqgen.data.stream.StreamLoader` (split by rank and worker, a shuffle buffer, every
rank's position in the checkpoint, bad samples counted into ``RUN/data.json``).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from torch import nn

from vqgen import distributed as fsdp
from vqgen.data.stream import StreamLoader, is_stream_source, load_position, position_state, report_stream
from vqgen.errors import ConfigError, VqgenError
from vqgen.runtime import (CheckpointError, EpochBatches, Limits, RunLogger, autocast, cleanup_distributed,
                           init_distributed, is_sharded, load_weights, lr_factor, metrics_bytes, model_dir, progress,
                           report_skips, resolve_run_config, resume_from, rng_state, save_checkpoint, save_final,
                           save_run_config, save_sharded_checkpoint, seed_everything, set_lr, set_rng_state, unwrap)
from vqgen.tokenizer.base import VQTokenizer
from vqgen.tokenizer.cnn_vqgan import CNNVQGAN
from vqgen.tokenizer.config import TokenizerTrainConfig
from vqgen.tokenizer.data import ImageSet, holdout_split, image_stream, load_heldout_shards, load_image_set
from vqgen.tokenizer.discriminator import StyleGANDiscriminator
from vqgen.tokenizer.evaluate import evaluate_tokenizer, reconstruction_grid
from vqgen.tokenizer.losses import ReconstructionLoss, gan_discriminator_loss
from vqgen.tokenizer.quantizer import CodebookMonitor, code_histogram
from vqgen.tokenizer.vit_vqgan import ViTVQGAN

TextEncoder = Callable[[list[str]], torch.Tensor]  # captions → embeddings (N, D) or (N, T, D)


def build_tokenizer(cfg: TokenizerTrainConfig) -> VQTokenizer:
    """A fresh tokenizer of the architecture ``cfg.arch``."""
    return ViTVQGAN(cfg.vit) if cfg.arch == "vit_vqgan" else CNNVQGAN(cfg.cnn)


# parameters the tokenizers create themselves (torch.randn(...) * scale), by attribute name: their std
_OWN_PARAMS = {"codebook": 1.0, "enc_pos": 0.02, "dec_pos": 0.02}


def init_tokenizer(model: nn.Module) -> None:
    """What constructing a tokenizer or discriminator does, for one built on meta: PyTorch's
    init of every layer, and N(0, std) for the parameters the models create themselves."""
    fsdp.reset_modules(model)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name in _OWN_PARAMS:
                nn.init.normal_(p, 0.0, _OWN_PARAMS[name])


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The blocks of every ``blocks`` list (ViT encoder/decoder blocks, CNN residual blocks)."""
    return [blk for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name.endswith("blocks")
            for blk in m]


def _sharded(cfg: TokenizerTrainConfig, factory, info, seed: int) -> nn.Module:
    """``factory()`` built on meta, its blocks and then itself sharded, each rank's shard initialised."""
    model = fsdp.on_meta(factory)
    units = fsdp_units(model)
    if cfg.activation_checkpointing:
        fsdp.checkpoint_activations(units)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and info.device.type == "cuda"
                                       and torch.cuda.is_bf16_supported())
    fsdp.shard(model, units, bf16=bf16)
    fsdp.materialize(model, info.device, seed, init_tokenizer)
    return model


def _plain(model: nn.Module, factory) -> nn.Module:
    """An unsharded copy of a sharded model on every rank (collective), for samples, evals and saving."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    plain = fsdp.on_meta(factory)
    plain.load_state_dict({k: v.detach().cpu().clone() for k, v in full.items()}, strict=True, assign=True)
    return plain.eval()


def _conditions(cfg: TokenizerTrainConfig, labels: list, texts: list,
                text_encoder: TextEncoder | None) -> torch.Tensor | None:
    """Decoder conditions of images with these labels and captions: (N,) labels or (N, ..., D)
    text embeddings, or None for an unconditioned decoder."""
    cond = cfg.model.cond
    if cond.kind == "class":
        if any(label is None for label in labels):
            raise VqgenError("class conditioning needs a label on every record (metadata.jsonl 'label')")
        labels = torch.tensor(labels, dtype=torch.long)  # (N,)
        if labels.max().item() >= cond.num_classes:
            raise ConfigError(f"config field '{cfg.arch[:3]}.cond.num_classes' is {cond.num_classes} but the "
                              f"data has label {labels.max().item()}")
        return labels
    if cond.kind == "text":
        if text_encoder is None:
            raise ConfigError("cond.kind=text needs a text encoder to embed the captions")
        if any(t is None for t in texts):
            raise VqgenError("text conditioning needs a caption on every record (metadata.jsonl 'text')")
        emb = text_encoder(list(texts)).float()  # (N, D) or (N, T, D)
        if emb.shape[-1] != cond.text_dim:
            raise ConfigError(f"cond.text_dim is {cond.text_dim} but the text encoder gives {emb.shape[-1]}")
        return emb
    return None


@dataclass
class TrainImages:
    """Where training batches and evaluation images come from: an image folder in memory, or
    WebDataset shards streamed (:func:`~vqgen.tokenizer.data.image_stream`) with their held-out
    images in memory. ``position`` is the resumable batch order; ``batches()`` yields
    ``(images (B, 3, S, S) uint8, conditions or None)``."""

    position: EpochBatches | StreamLoader
    batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor | None]]]
    eval_set: ImageSet | None  # held-out images (shards: the first ones found), else None
    eval_conds: torch.Tensor | None
    samples: ImageSet  # up to 8 images for reconstruction grids
    sample_conds: torch.Tensor | None


def open_images(cfg: TokenizerTrainConfig, source, run_dir: Path, info, text_encoder: TextEncoder | None,
                data: ImageSet | None = None) -> TrainImages:
    """Open the training images (``data`` if given, else ``source``) and record their skip counts."""
    bs = cfg.optim.batch_size
    if data is None and is_stream_source(source):  # counted as they stream (report_stream at the end)
        stream = image_stream(source, cfg.image_size, bs, cfg.holdout_every, cfg.seed, info.rank, info.world_size,
                              cfg.stream_workers, cfg.shuffle_buffer)
        held = load_heldout_shards(source, cfg.image_size, cfg.holdout_every, max(8, cfg.eval_batches * bs))
        samples = held or load_image_set(source, cfg.image_size, limit=8)

        def shard_batches():
            for images, labels, texts in stream:
                yield images, _conditions(cfg, labels, texts, text_encoder)

        return TrainImages(stream, shard_batches, held, _conditions(cfg, held.labels, held.texts, text_encoder)
                           if held else None, samples, _conditions(cfg, samples.labels, samples.texts, text_encoder))
    if data is None:
        data = load_image_set(source, cfg.image_size)
    elif tuple(data.images.shape[-2:]) != (cfg.image_size, cfg.image_size):
        raise VqgenError(f"images are {tuple(data.images.shape[-2:])}, the model wants {cfg.image_size}")
    report_skips(run_dir, source, len(data), data.skipped, info.is_main)
    train_idx, eval_idx = holdout_split(len(data), cfg.holdout_every)
    conds = _conditions(cfg, data.labels, data.texts, text_encoder)
    order = EpochBatches(len(train_idx), bs, seed=cfg.seed, rank=info.rank, world_size=info.world_size)

    def folder_batches():
        for ids in order:
            ids = train_idx[ids]  # (B,)
            yield data.images[ids], (conds[ids] if conds is not None else None)

    sample_idx = (eval_idx if len(eval_idx) else train_idx)[:8]

    def subset(idx: torch.Tensor) -> ImageSet:
        pick = idx.tolist()
        return ImageSet(data.images[idx], [data.texts[i] for i in pick], [data.labels[i] for i in pick],
                        [data.metas[i] for i in pick], [data.keys[i] for i in pick], data.class_names, Counter())

    return TrainImages(order, folder_batches, subset(eval_idx) if len(eval_idx) else None,
                       conds[eval_idx] if conds is not None else None, subset(sample_idx),
                       conds[sample_idx] if conds is not None else None)


def train_tokenizer(cfg: TokenizerTrainConfig, data_dir: str | Path, run_dir: str | Path,
                    text_encoder: TextEncoder | None = None, data: ImageSet | None = None,
                    show_progress: bool = True) -> VQTokenizer:
    """Train (or resume) a tokenizer on an image folder or WebDataset shards; returns the trained
    model (unwrapped). On an existing RUN, ``cfg`` may differ from the saved config only in the
    harmless fields (:func:`vqgen.runtime.resolve_run_config`).

    ``data`` may be given instead of reading ``data_dir`` (an ImageSet already in memory).
    """
    run_dir = Path(run_dir)
    cfg, _ = resolve_run_config(run_dir, cfg)
    info = init_distributed(cfg.device, group=cfg.fsdp)
    try:
        return _train(cfg, data_dir, run_dir, text_encoder, data, show_progress, info)
    finally:
        cleanup_distributed()


def _train(cfg, data_dir, run_dir, text_encoder, data, show_progress, info) -> VQTokenizer:
    device = info.device
    images = open_images(cfg, data_dir, run_dir, info, text_encoder, data)

    seed_everything(cfg.seed)
    sharded = cfg.fsdp
    if sharded:
        model = _sharded(cfg, lambda: build_tokenizer(cfg), info, cfg.seed)
        disc = _sharded(cfg, lambda: StyleGANDiscriminator(cfg.disc), info, cfg.seed + 1) if cfg.loss.gan > 0 else None
    else:
        model = build_tokenizer(cfg).to(device)
        disc = StyleGANDiscriminator(cfg.disc).to(device) if cfg.loss.gan > 0 else None
    loss_fn = ReconstructionLoss(cfg.loss).to(device)
    if disc is not None and cfg.disc.image_size != cfg.image_size:
        raise ConfigError(f"config field 'disc.image_size' is {cfg.disc.image_size}, images are {cfg.image_size}")
    params = model.decoder_parameters() if cfg.decoder_only else list(model.parameters())
    if cfg.optim.name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                weight_decay=cfg.optim.weight_decay)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.optim.disc_lr, betas=(0.0, 0.99)) if disc else None
    batches = images.position
    monitor = CodebookMonitor(model.config.quantizer.codebook_size, cfg.codebook.dead_after)

    def shards() -> dict:
        out = {"tokenizer": fsdp.model_state(model), "opt": fsdp.optim_state(model, opt)}
        if disc is not None:
            out.update(discriminator=fsdp.model_state(disc), opt_d=fsdp.optim_state(disc, opt_d))
        return out

    def restore(ckpt: Path, state: dict) -> None:
        if sharded != is_sharded(ckpt):
            raise CheckpointError(f"{ckpt} is {'' if is_sharded(ckpt) else 'not '}a sharded checkpoint, "
                                  f"and the run has fsdp={str(sharded).lower()}")
        if sharded:
            loaded = shards()
            fsdp.load_sharded(ckpt / fsdp.DCP_DIR, loaded)
            fsdp.set_model_state(model, loaded["tokenizer"])
            fsdp.set_optim_state(model, opt, loaded["opt"])
            if disc is not None:
                fsdp.set_model_state(disc, loaded["discriminator"])
                fsdp.set_optim_state(disc, opt_d, loaded["opt_d"])
            return
        load_weights(model, ckpt / "tokenizer")
        if disc is not None:
            load_weights(disc, ckpt / "discriminator")

    state = resume_from(run_dir, restore, info.is_main)
    if state is not None:
        if not sharded:
            opt.load_state_dict(state["opt"])
            if disc is not None:
                opt_d.load_state_dict(state["opt_d"])
        load_position(batches, state["batches"], info.rank, info.world_size)
        monitor.load_state_dict(state["monitor"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:
            seed_everything(cfg.seed + 1000 * info.rank + int(state["step"]))
    else:
        if cfg.init_from:
            if sharded:
                raise ConfigError("init_from with fsdp=true is not supported (start the run without fsdp)")
            load_weights(model, model_dir(cfg.init_from, "tokenizer"))
        if info.is_main:
            save_run_config(cfg, run_dir)
    step = int(state["step"]) if state is not None else 0
    limits = Limits(cfg.time_limit_min, cfg.cpu_limit_min, state)

    ddp_model = model
    ddp_disc = disc
    if info.distributed and not sharded:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        ddp_model = DDP(model, device_ids=ids)
        ddp_disc = DDP(disc, device_ids=ids) if disc is not None else None

    logger = RunLogger(run_dir, enabled=info.is_main)
    bar = progress(total=cfg.steps, desc=f"train {cfg.arch}", enabled=info.is_main and show_progress, initial=step)
    it = images.batches()
    sums: dict[str, float] = {}
    n_sum, images_seen, t_log = 0, 0, time.perf_counter()
    k = model.config.quantizer.codebook_size
    stop = False

    while step < cfg.steps and not stop:
        model.train()
        x, cond = next(it)
        x = x.to(device).float().div_(255.0)  # (B, 3, H, W)
        cond = cond.to(device) if cond is not None else None
        gan_on = disc is not None and step >= cfg.loss.gan_start

        lr = set_lr(opt, cfg.optim.lr * lr_factor(step, cfg.steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio))
        if disc is not None and not sharded:  # (FSDP: its stray grads are cleared before its own step)
            disc.requires_grad_(False)
        with autocast(device, "fp32" if sharded else cfg.precision):
            out = ddp_model(x, cond)
            total, terms = loss_fn(x, out, step, disc if gan_on else None)
        opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()

        if gan_on:
            disc.requires_grad_(True)
            with autocast(device, "fp32" if sharded else cfg.precision):
                logits = ddp_disc(torch.cat([x, out.reconstruction.detach()]))  # (2B,)
                d_loss = gan_discriminator_loss(logits[:x.shape[0]], logits[x.shape[0]:])
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            terms["gan_d"] = d_loss

        counts = code_histogram(out.codes, k)  # (K,)
        if info.distributed:
            counts = counts.to(device)
            dist.all_reduce(counts)
            counts = counts.cpu()
        monitor.update(step, counts)
        restarted = _maybe_restart(cfg, model, monitor, out, step, info)

        step += 1
        images_seen += x.shape[0] * info.world_size
        n_sum += 1
        for name, v in [("loss", total), *terms.items()]:
            sums[name] = sums.get(name, 0.0) + float(v.detach())
        if restarted:
            sums["restarted_codes"] = sums.get("restarted_codes", 0.0) + restarted
        bar.update(1)
        stop = limits.reached(step if info.is_main else None)

        if step % cfg.log_every == 0 or step == cfg.steps or stop:
            now = time.perf_counter()
            row = {f"train/{name}": v / n_sum for name, v in sums.items()}
            row.update(monitor.report(step))
            row.update({"lr": lr, "images_per_s": images_seen / max(now - t_log, 1e-9),
                        "elapsed_s": limits.elapsed, "cpu_s": limits.cpu_elapsed})
            logger.log(step, row)
            bar.set_postfix(loss=f"{row['train/loss']:.4f}", usage=f"{row['train/codebook_usage']:.3f}")
            sums, n_sum, images_seen, t_log = {}, 0, 0, now
        sample_now = step % cfg.sample_every == 0 or step == cfg.steps or stop
        eval_now = bool(cfg.eval_every) and step % cfg.eval_every == 0 and step < cfg.steps
        view = _plain(model, lambda: build_tokenizer(cfg)).to(device) if sharded and (sample_now or eval_now) else model
        if info.is_main and sample_now:
            _log_samples(logger, view, images.samples, images.sample_conds, device, step)
        if info.is_main and eval_now:
            _log_eval(logger, view, images.eval_set, images.eval_conds, device, step, cfg.optim.batch_size,
                      limit=cfg.eval_batches * cfg.optim.batch_size)
        ckpt_now = step % cfg.ckpt_every == 0 or step == cfg.steps or stop
        position = position_state(batches) if ckpt_now else None  # every rank's stream position (collective)
        if ckpt_now and sharded:
            resume = {"step": step, **limits.state_dict(), "batches": position,
                      "monitor": monitor.state_dict(), "rng": _rng_states(info), "metrics_bytes": metrics_bytes(run_dir)}
            comps = {"tokenizer": model, **({"discriminator": disc} if disc is not None else {})}
            state_now = shards()
            save_sharded_checkpoint(run_dir, step, lambda where: fsdp.save_sharded(where, state_now), comps, resume,
                                    info.is_main)
        elif ckpt_now:
            if info.is_main:
                resume = {"step": step, **limits.state_dict(), "opt": opt.state_dict(),
                          "batches": position, "monitor": monitor.state_dict(), "rng": rng_state(),
                          "metrics_bytes": metrics_bytes(run_dir)}
                components = {"tokenizer": model}
                if disc is not None:
                    resume["opt_d"] = opt_d.state_dict()
                    components["discriminator"] = disc
                save_checkpoint(run_dir, step, components, resume)
            if info.distributed:
                dist.barrier()
    bar.close()

    if info.is_main and isinstance(batches, StreamLoader):
        report_stream(run_dir, data_dir, batches, info.distributed)
    final = _plain(model, lambda: build_tokenizer(cfg)).to(device) if sharded else model
    if info.is_main:
        save_final(final, run_dir / "model")
        _log_eval(logger, final, images.eval_set, images.eval_conds, device, step, cfg.optim.batch_size)
    logger.close()
    return unwrap(final)


def _rng_states(info) -> list:
    """Every rank's RNG state in rank order (collective under torchrun)."""
    if not dist.is_initialized():
        return [rng_state()]
    out = [None] * info.world_size
    dist.all_gather_object(out, rng_state())
    return out


def _maybe_restart(cfg, model: VQTokenizer, monitor: CodebookMonitor, out, step: int, info) -> int:
    """Dead-code restart (when enabled): re-seed dead codes from this step's encoder outputs (rank 0's)."""
    if not cfg.codebook.restart_dead or (step + 1) % cfg.codebook.restart_every != 0:
        return 0
    dead = monitor.dead(step)
    n = 0
    if info.is_main:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        n = model.quantizer.restart_codes(dead, out.lookup.detach().reshape(-1, model.quantizer.dim).float(), g)
    if info.distributed:
        dist.broadcast(model.quantizer.codebook.data, src=0)
    monitor.last_used[dead] = step
    return n


def _log_samples(logger: RunLogger, model: VQTokenizer, data: ImageSet, conds: torch.Tensor | None,
                 device, step: int) -> None:
    model.eval()
    with torch.no_grad():
        x = data.float_images(torch.arange(len(data))).to(device)  # (b, 3, H, W)
        c = conds.to(device) if conds is not None else None
        y = model.decode(model.encode(x), c)  # (b, 3, H, W)
    logger.image("reconstruction", step, reconstruction_grid(x, y))


def _log_eval(logger: RunLogger, model: VQTokenizer, data: ImageSet | None, conds: torch.Tensor | None, device,
              step: int, batch_size: int, limit: int = 0) -> None:
    if data is None:
        return
    n = len(data) if not limit else min(limit, len(data))
    stats = evaluate_tokenizer(model, data.images[:n], conds[:n] if conds is not None else None,
                               batch_size=batch_size, device=device)
    logger.log(step, {f"eval/{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
