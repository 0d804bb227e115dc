"""Training a token transformer on pre-tokenized code shards (``vqgen train``).

One function, :func:`train`, runs on CPU, one GPU or under ``torchrun`` (DDP, or FSDP2 with
``train.fsdp=true``): AdamW or Adafactor, warmup then cosine/exponential decay, gradient
clipping and accumulation, bf16 autocast where supported, condition dropout for
classifier-free guidance, optional EMA and ``torch.compile``. Running it again on the same
``RUN`` continues bit-exactly from the latest checkpoint. A step whose loss or gradient is not
finite is skipped and counted (never checkpointed); ``train.max_bad_steps`` in a row stop the run.

    RUN/config.json  RUN/tokenizer.json (text models)  RUN/metrics.jsonl  RUN/tb/  RUN/samples/
    RUN/checkpoints/step-N/{model,ema}/ + resume.pt     RUN/model/  (the final model, EMA if used)
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from vqgen.config import apply_overrides, get_preset, load_config, save_config
from vqgen.errors import ConfigError, VqgenError
from vqgen.runtime import (EpochBatches, RunLogger, autocast, cleanup_distributed, init_distributed,
                           latest_checkpoint, load_resume, progress, rng_state, save_checkpoint,
                           seed_everything, set_rng_state)
from vqgen.transformer import build_model
from vqgen.transformer.base import Condition, TokenModel
from vqgen.transformer.config import FAMILY, RunConfig

CONFIG_NAME = "config.json"


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_loss: float
    unigram_val_loss: float
    skipped_steps: int


@dataclass
class TrainData:
    """All records as tensors on CPU: ``codes`` (N, h*w); per-record ``labels`` (N,) or text
    ``text_ids``/``text_mask`` (N, L); the seeded train/validation split."""

    codes: torch.Tensor
    labels: torch.Tensor | None
    text_ids: torch.Tensor | None
    text_mask: torch.Tensor | None
    train_idx: torch.Tensor
    val_idx: torch.Tensor

    def batch(self, idx: torch.Tensor, device) -> tuple[torch.Tensor, Condition]:
        cond = Condition(
            class_ids=None if self.labels is None else self.labels[idx].to(device),
            text_ids=None if self.text_ids is None else self.text_ids[idx].to(device),
            text_mask=None if self.text_mask is None else self.text_mask[idx].to(device),
        )
        return self.codes[idx].to(device), cond  # (B, N), cond


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded hold-out: (train_idx, val_idx), at least one item each."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return order[n_val:].sort().values, order[:n_val].sort().values


def unigram_loss(train_codes: torch.Tensor, val_codes: torch.Tensor, vocab: int) -> float:
    """Cross-entropy (nats/code) of validation codes under add-one-smoothed training code frequencies."""
    counts = torch.bincount(train_codes.flatten(), minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[val_codes.flatten()].mean())


# ----------------------------------------------------------------------------- config + data
def resolve_config(run_dir: Path, preset: str | None, overrides: list[str], steps: int | None) -> tuple[RunConfig, bool]:
    """The run's config: the saved one when RUN exists (resume), else ``preset`` + overrides."""
    extra = list(overrides) + ([f"train.steps={steps}"] if steps is not None else [])
    saved = run_dir / CONFIG_NAME
    if saved.is_file():
        cfg = load_config(RunConfig, saved)
        new = apply_overrides(cfg, extra)
        if new.model != cfg.model:
            raise ConfigError(f"{run_dir} was trained with a different model config; use a new --out to start over")
        return new, True
    if not preset:
        raise ConfigError("--preset is required to start a new run")
    return apply_overrides(get_preset(FAMILY, preset), extra), False


def prepare(cfg: RunConfig, codes_dir: str | Path, run_dir: Path, resuming: bool,
            text_tokenizer: str | Path | None = None):
    """Load CODES and fit the config to it: grid, codebook, classes, text vocabulary.

    Returns (config, TrainData, info, text tokenizer or None).
    """
    from vqgen.data.codes import CodeDataset

    ds = CodeDataset.load(codes_dir)
    m, t = cfg.model, cfg.train
    h, w = ds.grid
    changes = dict(grid=(h, w), codebook_size=ds.codebook_size)
    if int(ds.codes.max()) >= ds.codebook_size or int(ds.codes.min()) < 0:
        raise VqgenError(f"{codes_dir}: codes outside [0, {ds.codebook_size})")
    train_idx, val_idx = split_indices(len(ds), t.val_fraction, t.seed)

    want = t.condition
    if want == "auto":
        want = "text" if m.family != "vim" else ("class" if all(lb is not None for lb in ds.labels) else "none")
    if (m.family == "vim") == (want == "text"):
        raise ConfigError(f"train.condition={want!r} does not suit family {m.family!r} (vim: none/class; parti, unified: text)")
    labels = text_ids = text_mask = tok = None
    if want == "class":
        if any(lb is None for lb in ds.labels):
            raise VqgenError(f"{codes_dir}: class conditioning needs a label on every record")
        labels = torch.tensor(ds.labels, dtype=torch.long)
        names = ds.info.get("class_names") or []
        changes["num_classes"] = max(len(names), int(labels.max()) + 1)
    elif want == "none":
        changes["num_classes"] = 0
    else:
        texts = ds.texts
        if all(not x for x in texts):
            raise VqgenError(f"{codes_dir}: text conditioning needs captions, and no record has one")
        if m.text.encoder == "pretrained":
            from vqgen.text.encoder import FrozenTextEncoder

            text_ids, text_mask = FrozenTextEncoder(m.text.pretrained_dir).encode(texts, m.text.max_len)
        else:
            from vqgen.text.bpe import TOKENIZER_NAME, TextTokenizer

            if resuming:
                tok = TextTokenizer.load(run_dir / TOKENIZER_NAME)
            elif text_tokenizer:
                tok = TextTokenizer.load(text_tokenizer)
            else:  # BPE training is not deterministic across processes: rank 0 trains, the others receive it
                tok = None
                if not dist.is_initialized() or dist.get_rank() == 0:
                    tok = TextTokenizer.train([texts[i] for i in train_idx.tolist()], vocab_size=m.text.vocab_size)
                if dist.is_initialized():
                    box = [tok.tok.to_str() if tok is not None else None]
                    dist.broadcast_object_list(box, src=0)
                    tok = TextTokenizer.from_str(box[0])
            text_ids, text_mask = tok.encode(texts, m.text.max_len)
            changes["text"] = dataclasses.replace(m.text, vocab_size=tok.vocab_size)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, **changes))
    data = TrainData(codes=ds.codes.flatten(1), labels=labels, text_ids=text_ids, text_mask=text_mask,
                     train_idx=train_idx, val_idx=val_idx)
    return cfg, data, ds.info, tok


# ----------------------------------------------------------------------------- optimisation
class LossModule(nn.Module):
    """Wraps a model so that ``forward`` returns its training loss (what DDP/FSDP/compile wrap)."""

    def __init__(self, model: TokenModel):
        super().__init__()
        self.model = model

    def forward(self, codes: torch.Tensor, cond: Condition):
        return self.model.compute_loss(codes, cond)


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW (or Adafactor, or plain SGD) with weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_factor(step: int, cfg) -> float:
    """Linear warmup, then cosine or exponential decay to ``min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    start = max(cfg.warmup_steps, cfg.decay_start if cfg.schedule == "exponential" else cfg.warmup_steps)
    if step < start:
        return 1.0
    frac = min(1.0, (step - start) / max(1, cfg.steps - start))
    if cfg.schedule == "cosine":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.min_lr_ratio ** frac


def _full_norm(x: torch.Tensor) -> float:
    return float(x.full_tensor() if hasattr(x, "full_tensor") else x)


# ----------------------------------------------------------------------------- sample grids
@torch.no_grad()
def sample_codes(model: TokenModel, cond: Condition, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Plain temperature-1 ancestral sampling through the cache contract: codes (B, h, w).
    (The full samplers — top-k/p, guidance, compiled caches — live in ``vqgen.sampling``.)"""
    cache = model.new_cache(batch)
    logits = model.prefill(cond, cache)  # (B, V)
    out = [] if cond.prefix_codes is None else list(cond.prefix_codes.unbind(1))
    while len(out) < model.image_seq_len:
        tok = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).squeeze(1).to(logits.device)  # (B,)
        out.append(tok)
        if len(out) < model.image_seq_len:
            logits = model.decode_step(tok, cache)
    return torch.stack(out, 1).view(batch, *model.grid)


def _grid_image(images: torch.Tensor, rows: int):
    from PIL import Image

    b, _, h, w = images.shape
    cols = math.ceil(b / rows)
    canvas = torch.ones(3, rows * h, cols * w)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = img.clamp(0, 1).float().cpu()
    return Image.fromarray((canvas.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))


class SampleGrids:
    """Sample codes with the model and decode them with the CODES' image tokenizer, if it exists."""

    def __init__(self, info: dict, data: TrainData, rows: int, logger: RunLogger):
        self.logger, self.rows, self.data, self.decoder = logger, rows, data, None
        tok_dir = info.get("tokenizer")
        if tok_dir and Path(tok_dir).is_dir():
            try:
                from vqgen.io import load_pretrained

                self.decoder = load_pretrained(tok_dir)
            except VqgenError as e:
                print(f"vqgen: no sample grids: cannot load the image tokenizer ({e})")
        else:
            print(f"vqgen: no sample grids: the image tokenizer {tok_dir!r} named by the codes is not here")

    @torch.no_grad()
    def __call__(self, model: TokenModel, step: int, device) -> None:
        if self.decoder is None:
            return
        was_training = model.training
        model.eval()
        n = self.rows * self.rows
        g = torch.Generator().manual_seed(step)
        if self.data.labels is not None:
            classes = torch.arange(n) % model.config.num_classes
            cond = Condition(class_ids=classes.to(device))
        elif self.data.text_ids is not None:
            idx = self.data.val_idx[torch.arange(n) % len(self.data.val_idx)]
            cond = Condition(text_ids=self.data.text_ids[idx].to(device), text_mask=self.data.text_mask[idx].to(device))
        else:
            cond = Condition()
        codes = sample_codes(model, cond, n, g)
        decoder_device = next(self.decoder.parameters()).device
        images = self.decoder.decode(codes.to(decoder_device))  # (B, 3, H, W)
        self.logger.image("samples", step, _grid_image(images, self.rows))
        model.train(was_training)


# ----------------------------------------------------------------------------- the loop
def train(codes_dir: str | Path, run_dir: str | Path, preset: str | None = None, overrides: list[str] | None = None,
          steps: int | None = None, text_tokenizer: str | Path | None = None, show_progress: bool = True) -> TrainResult:
    """Train (or resume) a token transformer on CODES into RUN; returns the final figures."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict, set_optimizer_state_dict)

    run_dir = Path(run_dir)
    cfg, resuming = resolve_config(run_dir, preset, overrides or [], steps)
    ckpt = latest_checkpoint(run_dir) if resuming else None
    env = init_distributed(cfg.train.device)
    try:
        cfg, data, info, text_tok = prepare(cfg, codes_dir, run_dir, resuming, text_tokenizer)
        t = cfg.train
        if t.fsdp and t.ema_decay > 0:
            raise ConfigError("train.ema_decay with train.fsdp=true is not supported")
        if t.fsdp and not env.distributed:
            raise ConfigError("train.fsdp=true needs several processes (run under torchrun)")
        device = env.device
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / CONFIG_NAME)
            if text_tok is not None:
                text_tok.save(run_dir / "tokenizer.json")

        seed_everything(t.seed)
        model = build_model(cfg.model)
        model.text_tokenizer = text_tok if hasattr(model, "tokenize") else None
        resume = None
        if ckpt is not None:
            from safetensors.torch import load_model

            load_model(model, str(ckpt / "model" / "model.safetensors"), strict=True)
            resume = load_resume(ckpt)
        model.to(device)
        ema = None
        if t.ema_decay > 0:
            ema = build_model(cfg.model).to(device).eval().requires_grad_(False)
            ema.load_state_dict(model.state_dict())
            if resume is not None:
                from safetensors.torch import load_model

                load_model(ema, str(ckpt / "ema" / "model.safetensors"), strict=True, device=str(device))
        loss_mod: nn.Module = LossModule(model)
        if t.fsdp:
            from torch.distributed.fsdp import fully_shard

            for blk in list(getattr(model, "encoder", [])) + list(model.blocks):
                fully_shard(blk)
            fully_shard(loss_mod)
        elif env.distributed:
            loss_mod = nn.parallel.DistributedDataParallel(loss_mod, device_ids=[device] if device.type == "cuda" else None)
        step_fn = torch.compile(loss_mod) if t.compile else loss_mod
        opt = make_optimizer(model, t)
        batches = EpochBatches(len(data.train_idx), t.batch_size, seed=t.seed, rank=env.rank, world_size=env.world_size)
        sd_opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        step, skipped = 0, 0
        if resume is not None:
            set_optimizer_state_dict(loss_mod, opt, optim_state_dict=resume["optimizer"], options=StateDictOptions(full_state_dict=True))
            batches.load_state_dict(resume["batches"])
            step, skipped = int(resume["step"]), int(resume["skipped"])
            rngs = resume["rng"]
            if len(rngs) == env.world_size:
                set_rng_state(rngs[env.rank])
            else:
                seed_everything(t.seed + 1000 * env.rank + step)

        logger = RunLogger(run_dir, enabled=env.is_main)
        # no grids from a sharded model, nor from a text-after-image scorer (it cannot sample)
        can_sample = not t.fsdp and not cfg.model.image_first
        grids = SampleGrids(info, data, t.sample_rows, logger) if env.is_main and can_sample else None
        if env.is_main and t.fsdp:
            print("vqgen: no sample grids with train.fsdp=true (the model is sharded)")
        uni = unigram_loss(data.codes[data.train_idx], data.codes[data.val_idx], cfg.model.codebook_size)
        tokens_per_row = data.codes.shape[1] + (cfg.model.text.max_len if cfg.model.family == "unified" else 0)

        def evaluate() -> float:
            loss_mod.eval()
            total, n = 0.0, 0
            with torch.no_grad(), autocast(device, t.precision):
                for i in range(0, min(len(data.val_idx), t.val_batches * t.batch_size), t.batch_size):
                    codes, cond = data.batch(data.val_idx[i:i + t.batch_size], device)
                    _, metrics = loss_mod(codes, cond)
                    total += float(metrics["image_loss"]) * codes.shape[0]
                    n += codes.shape[0]
            loss_mod.train()
            return total / n

        def checkpoint() -> None:
            full = get_model_state_dict(loss_mod, options=sd_opts)  # collective under FSDP
            optim = get_optimizer_state_dict(loss_mod, opt, options=sd_opts)
            rngs = [None] * env.world_size
            if env.distributed:
                dist.all_gather_object(rngs, rng_state())
            else:
                rngs = [rng_state()]
            if env.is_main:
                if not all(torch.isfinite(v).all() for v in full.values() if v.is_floating_point()):
                    raise VqgenError(f"step {step}: weights are not finite; no checkpoint written")
                plain = _plain_copy(cfg, {k.removeprefix("model."): v for k, v in full.items()})
                comps = {"model": plain}
                if ema is not None:
                    comps["ema"] = ema
                save_checkpoint(run_dir, step, comps, {
                    "optimizer": optim, "batches": batches.state_dict(),
                    "step": step, "skipped": skipped, "rng": rngs})
            if env.distributed:
                dist.barrier()

        loss_mod.train()
        it = iter(batches)
        bar = progress(total=t.steps, initial=step, desc="train", enabled=env.is_main and show_progress)
        bad_in_row, last_ckpt, t0, seen = 0, step, time.perf_counter(), 0
        while step < t.steps:
            lr = t.lr * lr_factor(step, t)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss_sum, local_bad, sums = 0.0, 0.0, {}
            for micro in range(t.grad_accum):
                codes, cond = data.batch(data.train_idx[next(it)], device)
                cond = cond.drop(t.cond_dropout)
                sync_off = isinstance(loss_mod, nn.parallel.DistributedDataParallel) and micro < t.grad_accum - 1
                with (loss_mod.no_sync() if sync_off else _null()), autocast(device, t.precision):
                    loss, metrics = step_fn(codes, cond)
                if not torch.isfinite(loss):
                    local_bad = 1.0
                (loss / t.grad_accum).backward()
                loss_sum += float(loss.detach()) / t.grad_accum
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / t.grad_accum
                seen += codes.shape[0] * tokens_per_row * env.world_size
            gnorm = _full_norm(nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf")))
            flags = torch.tensor([loss_sum, local_bad], dtype=torch.float64, device=device)
            if env.distributed:
                dist.all_reduce(flags)
                flags[0] /= env.world_size
            ok = math.isfinite(gnorm) and float(flags[1]) == 0.0
            if ok:
                opt.step()
                if ema is not None:
                    with torch.no_grad():
                        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - t.ema_decay)
                bad_in_row = 0
            else:
                opt.zero_grad(set_to_none=True)
                skipped += 1
                bad_in_row += 1
                if bad_in_row >= t.max_bad_steps:
                    raise VqgenError(f"the loss was not finite for {bad_in_row} steps in a row (last at step {step + 1}); "
                                     f"stopping without a checkpoint. Lower train.lr, use train.norm=sandwich or fp32")
            step += 1
            bar.update(1)
            if env.is_main and (step % max(1, t.log_every) == 0 or step == t.steps):
                dt = time.perf_counter() - t0
                row = {"loss": float(flags[0]), "lr": lr, "grad_norm": gnorm,
                       "tokens_per_s": seen / max(dt, 1e-9), "skipped_steps": skipped, **sums}
                logger.log(step, row)
                bar.set_postfix(loss=f"{float(flags[0]):.3f}")
                t0, seen = time.perf_counter(), 0
            if t.val_every and step % t.val_every == 0 and step != t.steps:
                val = evaluate()
                if env.is_main:
                    logger.log(step, {"val_loss": val, "unigram_val_loss": uni})
            if grids is not None and t.sample_every and step % t.sample_every == 0:
                grids(model, step, device)
            if ok and t.ckpt_every and step % t.ckpt_every == 0 and step != t.steps:
                checkpoint()
                last_ckpt = step
        bar.close()
        val = evaluate()
        if env.is_main:
            logger.log(step, {"val_loss": val, "unigram_val_loss": uni})
        if last_ckpt != step:
            checkpoint()
        if env.is_main:
            final = ema if ema is not None else _plain_copy(cfg, {k.removeprefix("model."): v for k, v in
                                                                  get_model_state_dict(loss_mod, options=sd_opts).items()})
            final.text_tokenizer = text_tok if hasattr(final, "tokenize") else None
            if grids is not None:
                grids(final.to(device), step, device)
            _save_final(final, run_dir / "model")
            logger.close()
        elif t.fsdp:
            get_model_state_dict(loss_mod, options=sd_opts)  # the final gather is collective
        if env.distributed:
            dist.barrier()
        return TrainResult(run_dir=run_dir, step=step, val_loss=val, unigram_val_loss=uni, skipped_steps=skipped)
    finally:
        cleanup_distributed()


def _null():
    import contextlib

    return contextlib.nullcontext()


def _plain_copy(cfg: RunConfig, state: dict) -> TokenModel:
    """A CPU model holding ``state`` (a full state dict gathered from any wrapper). Built on the
    meta device, so it neither initialises weights twice nor draws from the RNG."""
    with torch.device("meta"):
        model = build_model(cfg.model)
    model.load_state_dict({k: v.detach().cpu().clone() for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def _save_final(model: TokenModel, out: Path) -> None:
    import shutil

    from vqgen.io import replace_dir

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    replace_dir(tmp, out)
