"""Training the super-resolution transformer (``vqgen hierarchical train``) on paired code shards.

    vqgen tokenizer encode LOW_TOKENIZER  --data IMAGES --out low-codes     # 8x8 codes
    vqgen tokenizer encode HIGH_TOKENIZER --data IMAGES --out high-codes    # 16x16 codes, same records
    vqgen hierarchical train --low-codes low-codes --high-codes high-codes --stage1 LOW_MODEL \
        --preset small --out RUN

The two code directories must hold the same records in the same order (checked by key). The
text goes through the stage-1 model's BPE tokenizer (``--stage1``: the low-resolution model the
pipeline will sample with), so one tokenization serves both stages. The loss is the model's
``compute_loss`` (random masks; see :mod:`vqgen.transformer.hierarchical`); validation logs
``val_loss`` (seeded random masks) and ``val_dsr_loss`` (every cell masked: direct
super-resolution) on a fixed hold-out. The run lifecycle is :mod:`vqgen.runtime`'s: presets and
``--set``, resume on re-run (only steps, intervals and limits may change), ``--cpu-minutes``
limit (continued across resumes), atomic checkpoints, ``metrics.jsonl`` and TensorBoard,
``RUN/model`` at the end.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vqgen.errors import VqgenError
from vqgen.runtime import (EpochBatches, Limits, RunLogger, load_weights, lr_factor, metrics_bytes, model_dir,
                           progress, requested_config, resolve_run_config, resume_from, rng_state, save_checkpoint,
                           save_final, save_run_config, seed_everything, set_lr, set_rng_state)
from vqgen.transformer import build_model
from vqgen.transformer.base import Condition
from vqgen.transformer.config import RunConfig
from vqgen.transformer.hierarchical import PRESETS

FITTED = ("model.grid", "model.codebook_size", "model.low_grid", "model.low_codebook_size", "model.text")


@dataclass
class PairedCodes:
    """Records as tensors: ``low`` (N, n), ``high`` (N, N_high), ``text_ids``/``text_mask`` (N, L)."""

    low: torch.Tensor
    high: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Condition]:
        return self.low[idx], self.high[idx], Condition(text_ids=self.text_ids[idx], text_mask=self.text_mask[idx])


def load_pairs(low_dir, high_dir, stage1_dir) -> tuple[PairedCodes, dict, object, object]:
    """(data, fitted model fields, text tokenizer, stage-1 text config) from the two code dirs."""
    from vqgen.data.codes import CodeDataset
    from vqgen.io import load_pretrained
    from vqgen.text.bpe import TOKENIZER_NAME

    low, high = CodeDataset.load(low_dir), CodeDataset.load(high_dir)
    if len(low) != len(high) or low.keys != high.keys:
        raise VqgenError(f"{low_dir} and {high_dir} do not hold the same records in the same order "
                         "(encode one image folder with both tokenizers)")
    stage1 = load_pretrained(model_dir(stage1_dir))
    tok = getattr(stage1, "text_tokenizer", None)
    if tok is None or stage1.config.text.encoder != "trained":
        raise VqgenError(f"{stage1_dir}: the stage-1 model needs a trained BPE text tokenizer ({TOKENIZER_NAME})")
    if tuple(stage1.grid) != tuple(low.grid) or stage1.codebook_size != low.codebook_size:
        raise VqgenError(f"{stage1_dir} writes {tuple(stage1.grid)} codes of {stage1.codebook_size}; {low_dir} holds "
                         f"{tuple(low.grid)} codes of {low.codebook_size}")
    ids, mask = tok.encode(low.texts, stage1.config.text.max_len)  # (N, L) x2
    data = PairedCodes(low=low.codes.flatten(1), high=high.codes.flatten(1), text_ids=ids, text_mask=mask)
    fitted = dict(grid=tuple(high.grid), codebook_size=high.codebook_size, low_grid=tuple(low.grid),
                  low_codebook_size=low.codebook_size, text=stage1.config.text)
    return data, fitted, tok, stage1


@torch.no_grad()
def evaluate(model, data: PairedCodes, idx: torch.Tensor, batch_size: int, seed: int) -> dict:
    """``val_loss`` over seeded random masks and ``val_dsr_loss`` with every cell masked (nats/code)."""
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    total = {"val_loss": 0.0, "val_dsr_loss": 0.0}
    for i in range(0, len(idx), batch_size):
        low, high, cond = data.batch(idx[i:i + batch_size])
        masked = model.training_mask(high.shape[0], g)  # (B, N)
        n = high.shape[0] / len(idx)
        total["val_loss"] += float(model.compute_loss(high.to(dev), cond.to(dev), low=low.to(dev),
                                                      masked=masked.to(dev))[0]) * n
        every = torch.ones_like(masked)  # (B, N)
        total["val_dsr_loss"] += float(model.compute_loss(high.to(dev), cond.to(dev), low=low.to(dev),
                                                          masked=every.to(dev))[0]) * n
    model.train(was)
    return total


def train(low_codes, high_codes, stage1, run_dir, preset: str | None = None, overrides: list[str] | None = None,
          steps: int | None = None, cpu_minutes: float = 0.0, show_progress: bool = True) -> dict:
    """Train (or resume) a super-resolution model into RUN; returns the last validation figures."""
    from vqgen.transformer.train import make_optimizer, split_indices

    run_dir = Path(run_dir)
    extra = list(overrides or []) + ([f"train.steps={steps}"] if steps is not None else [])
    requested = requested_config(RunConfig, PRESETS, run_dir, preset, extra)
    data, fitted, tok, _ = load_pairs(low_codes, high_codes, stage1)
    requested = dataclasses.replace(requested, model=dataclasses.replace(requested.model, **fitted))
    cfg, _ = resolve_run_config(run_dir, requested)
    m, t = cfg.model, cfg.train
    if m.family != "hierarchical":
        raise VqgenError(f"model.family must be hierarchical, got {m.family!r}")
    save_run_config(cfg, run_dir)
    tok.save(run_dir / "tokenizer.json")
    seed_everything(t.seed)
    device = torch.device("cuda" if t.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if t.device == "auto" else t.device))
    model = build_model(m)
    model.text_tokenizer = tok
    train_idx, val_idx = split_indices(len(data.low), t.val_fraction, t.seed)
    val_idx = val_idx[: t.val_batches * t.batch_size]
    batches = EpochBatches(len(train_idx), t.batch_size, seed=t.seed)
    opt = make_optimizer(model, t)
    state = resume_from(run_dir, lambda ckpt, st: load_weights(model, ckpt / "model"))
    step = 0
    if state is None and t.init_from:
        load_weights(model, model_dir(t.init_from))
    model.to(device).train()
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["batches"])
        set_rng_state(state["rng"])
        step = int(state["step"])
    limits = Limits(cpu_limit_min=cpu_minutes, state=(state or {}).get("limits"))
    logger = RunLogger(run_dir)

    def checkpoint() -> None:
        save_checkpoint(run_dir, step, {"model": model}, {
            "optimizer": opt.state_dict(), "batches": batches.state_dict(), "step": step, "rng": rng_state(),
            "metrics_bytes": metrics_bytes(run_dir), "limits": limits.state_dict()})

    it = iter(batches)
    bar = progress(total=t.steps, initial=step, desc="train sr", enabled=show_progress)
    last_ckpt, t0, seen = step, time.perf_counter(), 0
    while step < t.steps and not limits.reached(step):
        lr = set_lr(opt, t.lr * lr_factor(step, t.steps, t.warmup_steps, t.min_lr_ratio, t.schedule, t.decay_start))
        low, high, cond = data.batch(train_idx[next(it)])
        loss, metrics = model.compute_loss(high.to(device), cond.to(device), low=low.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf))
        if math.isfinite(gnorm) and torch.isfinite(loss):
            opt.step()
        step += 1
        seen += high.shape[0]
        bar.update(1)
        if step % max(1, t.log_every) == 0 or step == t.steps:
            logger.log(step, {"loss": float(loss.detach()), "lr": lr, "grad_norm": gnorm, **metrics,
                              "records_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                              "cpu_s": limits.cpu_elapsed})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            t0, seen = time.perf_counter(), 0
        if t.val_every and step % t.val_every == 0 and step != t.steps:
            logger.log(step, evaluate(model, data, val_idx, t.batch_size, t.seed + 1))
        if t.ckpt_every and step % t.ckpt_every == 0:
            checkpoint()
            last_ckpt = step
    bar.close()
    if last_ckpt != step:
        checkpoint()
    val = evaluate(model, data, val_idx, t.batch_size, t.seed + 1)
    logger.log(step, val)
    logger.close()
    save_final(model.eval(), run_dir / "model")
    return {"step": step, **val}
