"""Encoding motion clips and training the dual-channel video model (``vqgen video encode|train``).

``encode_clips`` turns a clip folder (``vqgen data motion``) into codes: every frame through the
image tokenizer, ``CODES/clips.safetensors`` (``codes`` (C, T, h, w)) and ``CODES/clips.jsonl``
(caption, action window, and the key frames and frame rate from the seed's rule,
:func:`vqgen.motion.framerate.key_frames`, recomputed here from the window).

``train`` runs the lifecycle of :mod:`vqgen.runtime` (config with presets and ``--set``, resume
from the newest usable checkpoint, limits, atomic checkpoints, ``metrics.jsonl``, TensorBoard).
A step of the ``key`` task reads each clip's 5 key frames with its frame-rate token; a step of
``interp`` reads 5 consecutive frames at a random stride (the result's rate), the 1st, 3rd and 5th
given. Presets (``vqgen video presets``):

* ``video-key``: inherit the image model (``train.image_from``), train only the key channel
  (``image.*`` and ``interp.*`` frozen): CogVideo's recipe;
* ``video-key-full``: inherit it and train everything (full fine-tuning);
* ``video-key-scratch``: the same architecture with fresh image weights, everything trained;
* ``video-interp``: start from a key-frame run (``train.init_from``) and train only the
  interpolation channel, so both channels share the frozen backbone.

    RUN/config.json  RUN/metrics.jsonl  RUN/tb/  RUN/checkpoints/step-N/{model/, resume.pt}  RUN/model/
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from vqgen.config import register_preset, require
from vqgen.errors import VqgenError
from vqgen.runtime import (EpochBatches, Limits, RunLogger, freeze, load_weights, lr_factor, metrics_bytes,
                           progress, requested_config, resolve_run_config, resume_from, rng_state, save_checkpoint,
                           save_final, save_run_config, seed_everything, set_rng_state)

FAMILY = "video"
CODES_NAME, META_NAME, INFO_NAME = "clips.safetensors", "clips.jsonl", "info.json"


@dataclass(frozen=True)
class VideoModelFields:
    """The video model's own fields (the image model's come from ``train.image_from``)."""

    frames: int = 5
    frame_rates: tuple[int, ...] = (2, 4, 8, 16)
    window: int = 5
    frame_window: int = 0


@dataclass(frozen=True)
class VideoTrainConfig:
    task: Literal["key", "interp"] = "key"
    image_from: str = ""            # a saved unified model (or a run / pipeline's transformer/) to inherit
    init_from: str = ""             # a saved video model to start from (the key-frame run, for interp)
    scratch: bool = False           # fresh image weights (the from-scratch baseline)
    freeze: tuple[str, ...] = ("image.*", "interp.*")
    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    schedule: Literal["constant", "cosine"] = "constant"  # constant: a run cut by a CPU limit is a prefix of a longer one
    gate_lr_scale: float = 1.0      # the gates' learning rate = lr * this (a zero gate opens by ~lr per Adam step)
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    cond_dropout: float = 0.1
    val_fraction: float = 0.05
    val_every: int = 100
    log_every: int = 10
    ckpt_every: int = 100
    seed: int = 0
    time_limit_min: float = 0.0
    cpu_limit_min: float = 0.0

    def __post_init__(self):
        require(self.steps >= 1, "train.steps", "must be >= 1")
        require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        require(0 <= self.cond_dropout < 1, "train.cond_dropout", "must be in [0, 1)")
        require(0 < self.val_fraction < 1, "train.val_fraction", "must be in (0, 1)")
        require(self.gate_lr_scale > 0, "train.gate_lr_scale", "must be > 0")


@dataclass(frozen=True)
class VideoRunConfig:
    model: VideoModelFields = field(default_factory=VideoModelFields)
    train: VideoTrainConfig = field(default_factory=VideoTrainConfig)


@register_preset(FAMILY, "video-key")
def _key():
    return VideoRunConfig(train=VideoTrainConfig(freeze=("image.*", "interp.*")))


@register_preset(FAMILY, "video-key-full")
def _key_full():
    return VideoRunConfig(train=VideoTrainConfig(freeze=("interp.*",), lr=3e-4))


@register_preset(FAMILY, "video-key-scratch")
def _key_scratch():
    return VideoRunConfig(train=VideoTrainConfig(scratch=True, freeze=("interp.*",)))


@register_preset(FAMILY, "video-interp")
def _interp():
    return VideoRunConfig(train=VideoTrainConfig(task="interp", freeze=("image.*", "key.*")))


# ----------------------------------------------------------------------------- data
def encode_clips(data: str | Path, tokenizer: str | Path, out: str | Path, batch: int = 256,
                 show_progress: bool = True) -> dict:
    """Tokenize every frame of a motion clip folder into ``out`` (see module doc); returns info."""
    from safetensors.torch import save_file

    from vqgen.io import atomic_write, atomic_write_json, load_pretrained, make_dir
    from vqgen.motion.dataset import MotionFolder
    from vqgen.motion.framerate import key_frames

    folder = MotionFolder(data)
    tok = load_pretrained(tokenizer).eval()
    codes, rows = [], []
    for clip in progress(folder, total=len(folder), desc="encode", enabled=show_progress):
        frames = torch.from_numpy(clip.frames.copy()).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
        with torch.no_grad():
            codes.append(torch.cat([tok.encode(frames[i:i + batch]) for i in range(0, len(frames), batch)]))
        m = clip.meta
        rate, keys = key_frames(tuple(m["window"]), len(frames), base_fps=int(m["fps"]))
        rows.append({"key": clip.key, "text": clip.text, "category": m.get("category"), "spec": m.get("spec"),
                     "window": m["window"], "fps": m["fps"], "frame_rate": rate, "key_frames": keys})
    if not codes:
        raise VqgenError(f"{data} holds no readable clips")
    out = make_dir(out)
    stacked = torch.stack(codes).to(torch.int32)  # (C, T, h, w)
    atomic_write(out / CODES_NAME, lambda tmp: save_file({"codes": stacked}, tmp))
    atomic_write(out / META_NAME, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows)))
    info = {"data": str(data), "tokenizer": str(tokenizer), "clips": len(rows), "frames": stacked.shape[1],
            "grid": list(stacked.shape[2:]), "skipped": dict(folder.skipped)}
    atomic_write_json(out / INFO_NAME, info)
    return info


@dataclass
class ClipData:
    """Encoded clips on CPU: ``codes`` (C, T, N) long, the captions' ``text_ids``/``text_mask``
    (C, L), ``key_frames`` (C, 5), ``rates`` (C,) frame-rate indices, and the seeded split."""

    codes: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor
    key_frames: torch.Tensor
    rates: torch.Tensor
    base_fps: int
    train_idx: torch.Tensor
    val_idx: torch.Tensor

    def batch(self, idx: torch.Tensor, task: str, frame_rates: tuple[int, ...], g: torch.Generator):
        """(codes (B, 5, N), Condition, rate indices (B,), known (5,) or None) for clips ``idx``."""
        from vqgen.transformer.base import Condition

        cond = Condition(text_ids=self.text_ids[idx], text_mask=self.text_mask[idx])
        if task == "key":
            return self.codes[idx[:, None], self.key_frames[idx]], cond, self.rates[idx], None
        t = self.codes.shape[1]
        usable = [i for i, r in enumerate(frame_rates) if r > min(frame_rates) and r <= self.base_fps
                  and self.base_fps % r == 0 and 4 * (self.base_fps // r) <= t - 1]
        pick = torch.tensor(usable)[torch.randint(len(usable), (len(idx),), generator=g)]  # (B,)
        stride = torch.tensor([self.base_fps // frame_rates[i] for i in pick.tolist()])  # (B,)
        start = (torch.rand(len(idx), generator=g) * (t - 4 * stride)).long()  # (B,)
        frames = start[:, None] + stride[:, None] * torch.arange(5)  # (B, 5)
        known = torch.tensor([True, False, True, False, True])
        return self.codes[idx[:, None], frames], cond, pick, known


def load_clip_data(codes_dir: str | Path, model, frame_rates: tuple[int, ...], val_fraction: float,
                   seed: int) -> ClipData:
    from safetensors.torch import load_file

    codes_dir = Path(codes_dir)
    if not (codes_dir / CODES_NAME).is_file():
        raise VqgenError(f"{codes_dir} holds no encoded clips (run `vqgen video encode` first)")
    codes = load_file(str(codes_dir / CODES_NAME))["codes"].long().flatten(2)  # (C, T, N)
    rows = [json.loads(line) for line in (codes_dir / META_NAME).read_text().splitlines() if line.strip()]
    if codes.shape[2] != model.image.image_seq_len:
        raise VqgenError(f"{codes_dir}: clips have {codes.shape[2]} codes per frame, the model {model.image.image_seq_len}")
    ids, mask = model.tokenize([r["text"] for r in rows])
    rates = model.rate_index([r["frame_rate"] for r in rows])
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(len(rows) * val_fraction))
    return ClipData(codes, ids, mask, torch.tensor([r["key_frames"] for r in rows]), rates, int(rows[0]["fps"]),
                    order[n_val:], order[:n_val])


# ----------------------------------------------------------------------------- model
def build_video_model(cfg: VideoRunConfig):
    """The model a run starts from: a saved video model (``init_from``) or the inherited image
    model wrapped with fresh temporal channels (re-initialised when ``scratch``)."""
    from vqgen.io import load_pretrained
    from vqgen.runtime import model_dir
    from vqgen.transformer.layers import init_weights
    from vqgen.transformer.unified import Unified
    from vqgen.video.model import VideoTransformer

    t = cfg.train
    if not (t.init_from or t.image_from):
        raise VqgenError("name the image model to inherit (--set train.image_from=DIR) or a video model to start "
                         "from (--set train.init_from=DIR)")
    if t.init_from:
        model = VideoTransformer.from_pretrained(_model_path(t.init_from, model_dir))
        if (model.config.window, model.config.frame_window, model.config.frame_rates) != \
                (cfg.model.window, cfg.model.frame_window, cfg.model.frame_rates):
            model = _refit(model, cfg.model)
        return model.train()
    image = load_pretrained(_model_path(t.image_from, model_dir))
    if not isinstance(image, Unified):
        raise VqgenError(f"{t.image_from} holds a {type(image).__name__}; a video model inherits a unified decoder")
    model = VideoTransformer.inherit(image, frames=cfg.model.frames, frame_rates=cfg.model.frame_rates,
                                     window=cfg.model.window, frame_window=cfg.model.frame_window)
    if t.scratch:
        torch.manual_seed(t.seed)
        init_weights(model.image, model.image.config.depth)
        torch.nn.init.normal_(model.image.text_pos, 0.0, 0.02)
    return model.train()


def _refit(model, fields: VideoModelFields):
    from vqgen.video.model import VideoTransformer

    new = VideoTransformer(replace(model.config, frames=fields.frames, frame_rates=fields.frame_rates,
                                   window=fields.window, frame_window=fields.frame_window))
    new.load_state_dict(model.state_dict())
    new.text_tokenizer = model.text_tokenizer
    return new


def _model_path(path: str, model_dir) -> Path:
    """A model directory, a run (its model), or a pipeline (its transformer/)."""
    p = Path(path)
    if (p / "pipeline.json").is_file():
        return p / "transformer"
    return model_dir(p)


# ----------------------------------------------------------------------------- training
@dataclass
class VideoTrainResult:
    run_dir: Path
    step: int
    val_loss: float
    trainable: int
    frozen: int


def resolve_config(run_dir, preset: str | None, overrides: list[str]) -> tuple[VideoRunConfig, bool]:
    requested = requested_config(VideoRunConfig, FAMILY, run_dir, preset, overrides, default_preset="video-key")
    return resolve_run_config(run_dir, requested)


def train(codes: str | Path, run_dir: str | Path, preset: str | None = None, overrides: list[str] | None = None,
          show_progress: bool = True) -> VideoTrainResult:
    """Train (or resume) a video run on encoded clips; see the module doc."""
    run_dir = Path(run_dir)
    cfg, _ = resolve_config(run_dir, preset, list(overrides or []))
    t = cfg.train
    seed_everything(t.seed)
    model = build_video_model(cfg)
    frozen = set(freeze(model, t.freeze))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise VqgenError("train.freeze leaves no parameter to train")
    data = load_clip_data(codes, model, cfg.model.frame_rates, t.val_fraction, t.seed)
    save_run_config(cfg, run_dir)
    model.text_tokenizer.save(run_dir / "tokenizer.json")
    gates = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith(".gate")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".gate")]
    opt = torch.optim.AdamW([{"params": rest, "scale": 1.0}, {"params": gates, "scale": t.gate_lr_scale}],
                            lr=t.lr, betas=(0.9, 0.96), weight_decay=t.weight_decay)
    batches = EpochBatches(len(data.train_idx), t.batch_size, seed=t.seed)
    logger = RunLogger(run_dir)

    def restore(ckpt: Path, state: dict) -> None:
        load_weights(model, ckpt / "model")
        opt.load_state_dict(state["optimizer"])

    state = resume_from(run_dir, restore)
    step = 0
    if state is not None:
        step = int(state["step"])
        batches.load_state_dict(state["batches"])
        set_rng_state(state["rng"])
    limits = Limits(t.time_limit_min, t.cpu_limit_min, state.get("limits") if state else None)

    def val_loss() -> float:
        model.eval()
        g = torch.Generator().manual_seed(t.seed + 7)
        with torch.no_grad():
            losses = []
            for i in range(0, len(data.val_idx), t.batch_size):
                x, cond, rate, known = data.batch(data.val_idx[i:i + t.batch_size], t.task, cfg.model.frame_rates, g)
                losses.append(model.clip_loss(x, cond, rate, t.task, known)[0].item())
        model.train()
        return sum(losses) / len(losses)

    def checkpoint(at: int) -> None:
        save_checkpoint(run_dir, at, {"model": model},
                        {"step": at, "optimizer": opt.state_dict(), "batches": batches.state_dict(),
                         "rng": rng_state(), "limits": limits.state_dict(), "metrics_bytes": metrics_bytes(run_dir)})

    it = iter(batches)
    bar = progress(total=t.steps, desc=f"video {t.task}", enabled=show_progress, initial=step)
    last_val = float("nan")
    t0 = time.perf_counter()
    while step < t.steps:
        if limits.reached(step):
            break
        idx = data.train_idx[next(it)]
        g = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
        x, cond, rate, known = data.batch(idx, t.task, cfg.model.frame_rates, g)
        cond = cond.drop(t.cond_dropout, g)
        lr = t.lr * lr_factor(step, t.steps, t.warmup_steps, t.min_lr_ratio, t.schedule)
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        loss, metrics = model.clip_loss(x, cond, rate, t.task, known)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip) if t.grad_clip else torch.tensor(0.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % t.log_every == 0 or step == t.steps:
            gates = torch.stack([l.gate.abs().mean() for l in getattr(model, t.task).layers]).mean()
            logger.log(step, {"loss": loss.item(), "lr": opt.param_groups[0]["lr"], "grad_norm": float(norm),
                              "gate": gates.item(), "s_per_step": (time.perf_counter() - t0) / t.log_every})
            t0 = time.perf_counter()
        if t.val_every and step % t.val_every == 0:
            last_val = val_loss()
            logger.log(step, {"val_loss": last_val})
        if t.ckpt_every and step % t.ckpt_every == 0:
            checkpoint(step)
    bar.close()
    if last_val != last_val or step % max(t.val_every, 1):  # no validation at the last step yet
        last_val = val_loss()
        logger.log(step, {"val_loss": last_val})
    checkpoint(step)
    model.eval()
    save_final(model, run_dir / "model")
    logger.close()
    trainable = sum(p.numel() for p in params)
    return VideoTrainResult(run_dir, step, last_val, trainable, sum(p.numel() for n, p in model.named_parameters()
                                                                    if n in frozen))
