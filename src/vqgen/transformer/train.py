"""Training a token transformer on pre-tokenized code shards (``vqgen train``).

One function, :func:`train`, runs on CPU, one GPU or under ``torchrun`` (DDP, or FSDP2 with
``train.fsdp=true``): AdamW, Adafactor or plain SGD, warmup then cosine/exponential decay, gradient
clipping and accumulation, bf16 autocast where supported, condition dropout for
classifier-free guidance, optional EMA and ``torch.compile``; ``train.init_from`` starts from a
saved model and ``train.freeze`` keeps parameters matching name patterns fixed. Running the same
command again on ``RUN`` continues from the latest usable checkpoint (the lifecycle of
:mod:`vqgen.runtime`). A step whose loss or gradient is not finite is skipped and counted (never
checkpointed); ``train.max_bad_steps`` in a row stop the run.

CogLM (unified family): ``--set model.coglm_mix=0.5`` makes each training sample a masked-region
sample with that probability (the loss is the model's ``compute_loss``; see
:mod:`vqgen.transformer.unified`). ``val_loss`` stays the plain next-token loss, comparable with
plain runs; such runs also log ``val_infill_loss``, the loss of the masked cells of seeded random
regions over the same validation records.

    RUN/config.json  RUN/tokenizer.json (text models)  RUN/metrics.jsonl  RUN/tb/  RUN/samples/
    RUN/checkpoints/step-N/{model,ema}/ + resume.pt     RUN/model/  (the final model, EMA if used)
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from vqgen.data.captions import CaptionBank, caption_lists, pick_texts
from vqgen.data.image import image_grid
from vqgen import distributed as fsdp
from vqgen.errors import ConfigError, VqgenError
from vqgen.runtime import (CheckpointError, DistInfo, EpochBatches, RunLogger, autocast, cleanup_distributed, freeze,
                           init_distributed, is_sharded, load_weights, lr_factor, metrics_bytes, model_dir, progress,
                           report_skips, requested_config, resolve_run_config, resume_from, rng_state,
                           save_checkpoint, save_final, save_run_config, save_sharded_checkpoint, seed_everything,
                           set_lr, set_rng_state)
from vqgen.transformer import build_model
from vqgen.transformer.base import Condition, TokenModel
from vqgen.transformer.config import FAMILY, RunConfig
from vqgen.transformer.layers import init_weights


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
    ``text_ids``/``text_mask`` (N, L) (each record's ``text``); the seeded train/validation split;
    ``captions`` when records hold several (``meta["texts"]``): a training step reads one of them each."""

    codes: torch.Tensor
    labels: torch.Tensor | None
    text_ids: torch.Tensor | None
    text_mask: torch.Tensor | None
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    captions: CaptionBank | None = None
    seed: int = 0
    canonical: float = 0.0  # train.canonical_share

    def train_batch(self, ids: torch.Tensor, device, draw: tuple[int, int]) -> tuple[torch.Tensor, Condition]:
        """The training batch at positions ``ids`` of the training split."""
        return self.batch(self.train_idx[ids], device, draw)

    def batch(self, idx: torch.Tensor, device, draw: tuple[int, int] | None = None) -> tuple[torch.Tensor, Condition]:
        """Codes and condition of records ``idx``; with ``draw`` = (step, micro-batch) and several
        captions per record, a seeded pick of one caption each (else ``text``)."""
        text_ids = text_mask = None
        if draw is not None and self.captions is not None:
            text_ids, text_mask = self.captions.pick(idx, self.seed, *draw, canonical=self.canonical)  # (B, L) x2
        elif self.text_ids is not None:
            text_ids, text_mask = self.text_ids[idx], self.text_mask[idx]  # (B, L) x2
        cond = Condition(
            class_ids=None if self.labels is None else self.labels[idx].to(device),
            text_ids=None if text_ids is None else text_ids.to(device),
            text_mask=None if text_mask is None else text_mask.to(device),
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
FITTED = ("model.grid", "model.codebook_size", "model.num_classes", "model.text.vocab_size")  # set from CODES


def resolve_config(run_dir: Path, preset: str | None, overrides: list[str], steps: int | None) -> tuple[RunConfig, bool]:
    """(config, resuming): ``preset`` + overrides for a new RUN, else the saved config (only the
    harmless fields may differ; the data-fitted ones are checked once the codes are read)."""
    extra = list(overrides) + ([f"train.steps={steps}"] if steps is not None else [])
    return resolve_run_config(run_dir, requested_config(RunConfig, FAMILY, run_dir, preset, extra), fitted=FITTED)


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
    labels = text_ids = text_mask = tok = captions = None
    if want == "class":
        if any(lb is None for lb in ds.labels):
            raise VqgenError(f"{codes_dir}: class conditioning needs a label on every record")
        labels = torch.tensor(ds.labels, dtype=torch.long)
        names = ds.info.get("class_names") or []
        changes["num_classes"] = max(len(names), int(labels.max()) + 1)
    elif want == "none":
        changes["num_classes"] = 0
    else:
        texts, alts = ds.texts, caption_lists(ds.texts, ds.metas)
        if all(not x for x in texts):
            raise VqgenError(f"{codes_dir}: text conditioning needs captions, and no record has one")
        if m.text.encoder == "pretrained":
            from vqgen.text.encoder import FrozenTextEncoder

            encode = FrozenTextEncoder(m.text.pretrained_dir).encode
            text_ids, text_mask = encode(texts, m.text.max_len)
        else:
            from vqgen.text.bpe import TOKENIZER_NAME, TextTokenizer

            if resuming:
                tok = TextTokenizer.load(run_dir / TOKENIZER_NAME)
            elif text_tokenizer:
                tok = TextTokenizer.load(text_tokenizer)
            else:  # BPE training is not deterministic across processes: rank 0 trains, the others receive it
                tok = None
                if not dist.is_initialized() or dist.get_rank() == 0:
                    tok = TextTokenizer.train([x for i in train_idx.tolist() for x in alts[i]], vocab_size=m.text.vocab_size)
                if dist.is_initialized():
                    box = [tok.tok.to_str() if tok is not None else None]
                    dist.broadcast_object_list(box, src=0)
                    tok = TextTokenizer.from_str(box[0])
            encode = tok.encode
            text_ids, text_mask = tok.encode(texts, m.text.max_len)
            changes["text"] = dataclasses.replace(m.text, vocab_size=tok.vocab_size)
        captions = CaptionBank.build(alts, encode, m.text.max_len) if any(len(a) > 1 for a in alts) else None
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, **changes))
    data = TrainData(codes=ds.codes.flatten(1), labels=labels, text_ids=text_ids, text_mask=text_mask,
                     train_idx=train_idx, val_idx=val_idx, captions=captions, seed=t.seed,
                     canonical=t.canonical_share)
    return cfg, data, ds.info, tok


# ----------------------------------------------------------------------------- streamed code shards
PROBE = 4096  # records read from the front of a stream: grid, classes, BPE captions, validation


def held_out(key: str, every: int) -> bool:
    """Whether a streamed record (``shard:key``) is in the validation split: every ``every``-th by
    a hash of its key, the same on every rank, worker and epoch."""
    return zlib.crc32(key.encode()) % every == 0


def _kept(key: str, every: int) -> bool:
    return not held_out(key, every)


@dataclass
class StreamData:
    """CODES streamed from WebDataset code shards (``vqgen data code-shards``; a local path, brace
    pattern or ``file:``/``pipe:`` URL): ``val`` holds the held-out records found in the first
    :data:`PROBE` samples (in memory, a :class:`TrainData`), ``probe_train`` the codes of the
    training records among them (the unigram baseline); training batches come from
    :meth:`loader`, split by rank and worker, through a shuffle buffer, with a resumable position.
    A record with several captions (``meta["texts"]``) gives one per step, picked as in memory."""

    source: str
    val: TrainData
    probe_train: torch.Tensor
    every: int
    class_cond: bool
    encode: Callable | None
    max_len: int
    seed: int
    canonical: float = 0.0  # train.canonical_share

    def loader(self, cfg: RunConfig, env: DistInfo):
        from vqgen.data.stream import StreamLoader
        from vqgen.data.webdataset import ShardDataset

        m, t = cfg.model, cfg.train
        ds = ShardDataset(self.source, kind="codes", grid=m.grid, codebook_size=m.codebook_size, rank=env.rank,
                          world_size=env.world_size, shuffle=True, seed=t.seed, shuffle_buffer=t.shuffle_buffer)
        return StreamLoader(ds, t.batch_size, workers=t.stream_workers,
                            exclude=functools.partial(held_out, every=self.every), metas=True)

    def train_batch(self, item, device, draw: tuple[int, int]) -> tuple[torch.Tensor, Condition]:
        """A streamed batch ``(codes (B, *grid), labels, texts, metas)`` as codes (B, N) and its
        condition; ``draw`` = (step, micro-batch) picks each row's caption (:func:`pick_texts`)."""
        codes, labels, texts, metas = item
        class_ids = text_ids = text_mask = None
        if self.class_cond:
            if any(lb is None for lb in labels):
                raise VqgenError(f"{self.source}: class conditioning needs a label on every record")
            class_ids = torch.tensor(labels, dtype=torch.long, device=device)
        elif self.encode is not None:
            texts = pick_texts(list(texts), metas, self.seed, *draw, canonical=self.canonical)  # one caption per row
            text_ids, text_mask = self.encode(texts, self.max_len)  # (B, L) x2
            text_ids, text_mask = text_ids.to(device), text_mask.to(device)
        return codes.flatten(1).to(device), Condition(class_ids=class_ids, text_ids=text_ids, text_mask=text_mask)


def prepare_stream(cfg: RunConfig, source: str, run_dir: Path, resuming: bool, text_tokenizer=None):
    """Fit the config to streamed code shards from their first :data:`PROBE` training records: the grid,
    the classes, the BPE (rank 0 trains it on their captions); the codebook is the config's
    (``model.codebook_size``: codes outside it are skipped as ``bad_codes``). Returns (config,
    StreamData, info, text tokenizer or None)."""
    from vqgen.data.webdataset import ShardDataset

    m, t = cfg.model, cfg.train
    every = max(2, round(1 / t.val_fraction))
    probe = ShardDataset(source, kind="codes", codebook_size=m.codebook_size, rank=0, world_size=1)
    front = [rec for _, rec in itertools.islice(probe.samples(exclude=functools.partial(held_out, every=every)), PROBE)]
    if not front:
        raise VqgenError(f"{source}: no readable training sample (skipped: {dict(probe.skipped) or 'none'})")
    grid = tuple(front[0].codes.shape)
    front = [r for r in front if tuple(r.codes.shape) == grid]
    probe2 = ShardDataset(source, kind="codes", codebook_size=m.codebook_size, rank=0, world_size=1)
    val = [rec for _, rec in itertools.islice(probe2.samples(exclude=functools.partial(_kept, every=every)),
                                              max(1, t.val_batches * t.batch_size))]
    val = [r for r in val if tuple(r.codes.shape) == grid]
    if not val:
        raise VqgenError(f"{source}: no held-out record among the first samples (train.val_fraction={t.val_fraction})")
    want = t.condition
    if want == "auto":
        want = "text" if m.family != "vim" else ("class" if all(r.label is not None for r in front) else "none")
    if (m.family == "vim") == (want == "text"):
        raise ConfigError(f"train.condition={want!r} does not suit family {m.family!r} (vim: none/class; parti, unified: text)")
    changes: dict = {"grid": grid}
    encode, tok, labels, text_ids, text_mask = None, None, None, None, None
    if want == "class":
        seen = [r.label for r in front + val if r.label is not None]
        changes["num_classes"] = max(getattr(m, "num_classes", 0), max(seen, default=-1) + 1)
        labels = torch.tensor([r.label for r in val], dtype=torch.long)
    elif want == "none":
        changes["num_classes"] = 0
    else:
        if m.text.encoder == "pretrained":
            from vqgen.text.encoder import FrozenTextEncoder

            encode = FrozenTextEncoder(m.text.pretrained_dir).encode
        else:
            lists = caption_lists([r.text for r in front], [r.meta for r in front])
            tok = _bpe(m, run_dir, resuming, text_tokenizer, [x for c in lists for x in c if x])
            encode = tok.encode
            changes["text"] = dataclasses.replace(m.text, vocab_size=tok.vocab_size)
        text_ids, text_mask = encode([r.text for r in val], m.text.max_len)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, **changes))
    val_codes = torch.stack([r.codes for r in val]).flatten(1)  # (V, N)
    val_data = TrainData(codes=val_codes, labels=labels, text_ids=text_ids, text_mask=text_mask,
                         train_idx=torch.zeros(0, dtype=torch.long), val_idx=torch.arange(len(val)), seed=t.seed)
    data = StreamData(str(source), val_data, torch.stack([r.codes for r in front]).flatten(1), every,
                      want == "class", encode, m.text.max_len if want == "text" else 0, t.seed, t.canonical_share)
    return cfg, data, {}, tok


def _bpe(m, run_dir: Path, resuming: bool, given, captions: list[str]):
    """The run's BPE: its own when resuming, the one given, else trained by rank 0 on ``captions``
    and sent to the other ranks (BPE training is not deterministic across processes)."""
    from vqgen.text.bpe import TOKENIZER_NAME, TextTokenizer

    if resuming:
        return TextTokenizer.load(run_dir / TOKENIZER_NAME)
    if given:
        return TextTokenizer.load(given)
    if not captions:
        raise VqgenError("text conditioning needs captions, and no record has one")
    tok = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        tok = TextTokenizer.train(captions, vocab_size=m.text.vocab_size)
    if dist.is_initialized():
        box = [tok.tok.to_str() if tok is not None else None]
        dist.broadcast_object_list(box, src=0)
        tok = TextTokenizer.from_str(box[0])
    return tok


# ----------------------------------------------------------------------------- optimisation
class LossModule(nn.Module):
    """Wraps a model so that ``forward`` returns its training loss (what DDP/FSDP/compile wrap)."""

    def __init__(self, model: TokenModel):
        super().__init__()
        self.model = model

    def forward(self, codes: torch.Tensor, cond: Condition):
        return self.model.compute_loss(codes, cond)


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW (or Adafactor, or plain SGD) over the trainable parameters, weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def step_lr(step: int, t) -> float:
    """The learning rate of ``step`` under TrainConfig ``t`` (warmup, then its schedule)."""
    return t.lr * lr_factor(step, t.steps, t.warmup_steps, t.min_lr_ratio, t.schedule, t.decay_start)


def _full_norm(x: torch.Tensor) -> float:
    return float(x.full_tensor() if hasattr(x, "full_tensor") else x)


# ----------------------------------------------------------------------------- sample grids
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
        from vqgen.sampling import SamplingConfig, generate

        if self.decoder is None:
            return
        was_training = model.training
        n = self.rows * self.rows
        cond = None
        if self.data.labels is not None:
            cond = Condition(class_ids=(torch.arange(n) % model.config.num_classes).to(device))
        elif self.data.text_ids is not None:
            idx = self.data.val_idx[torch.arange(n) % len(self.data.val_idx)]
            cond = Condition(text_ids=self.data.text_ids[idx].to(device), text_mask=self.data.text_mask[idx].to(device))
        codes = generate(model, cond, num=n, config=SamplingConfig(), generator=torch.Generator().manual_seed(step))
        decoder_device = next(self.decoder.parameters()).device
        images = self.decoder.decode(codes.to(decoder_device))  # (B, 3, H, W)
        self.logger.image("samples", step, image_grid(images, cols=math.ceil(n / self.rows), pad=0))
        model.train(was_training)


# ----------------------------------------------------------------------------- one process's run
@dataclass
class Run:
    """What one training process holds: the model, its wrappers and optimizer, and the position.
    ``accum`` is ``train.grad_accum``, or more after resuming on fewer ranks (the global batch is kept)."""

    cfg: RunConfig
    env: DistInfo
    model: TokenModel
    loss_mod: nn.Module
    step_fn: Callable
    opt: torch.optim.Optimizer
    batches: EpochBatches
    ema: TokenModel | None = None
    step: int = 0
    skipped: int = 0
    bad_in_row: int = 0
    accum: int = 1

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.accum * self.env.world_size


def bf16_params(t, device: torch.device) -> bool:
    """Whether FSDP gathers parameters in bfloat16 (``precision`` bf16, or auto on a bf16 GPU);
    autocast is then off, the policy does the casting."""
    if not t.fsdp or t.precision == "fp32":
        return False
    return t.precision == "bf16" or (device.type == "cuda" and torch.cuda.is_bf16_supported())


def init_token_model(model: TokenModel) -> None:
    """What a family's constructor does after building its layers: :func:`init_weights` and
    N(0, 0.02) for the model's own parameters (start slot, text positions); for models built on meta."""
    init_weights(model, model.config.depth)
    for p in model._parameters.values():
        nn.init.normal_(p, 0.0, 0.02)


def _resumed_accum(t, env: DistInfo, state: dict | None) -> int:
    """Micro-batches per step: ``grad_accum``, scaled so a run resumed on another number of ranks
    keeps its global batch (a one-line error when it cannot)."""
    if state is None or "global_batch" not in state:
        return t.grad_accum
    want = int(state["global_batch"])
    if want % (t.batch_size * env.world_size):
        raise ConfigError(f"the run's global batch is {want}; {env.world_size} ranks x train.batch_size="
                          f"{t.batch_size} cannot make it up (resume on a number of ranks that divides it)")
    return want // (t.batch_size * env.world_size)


def _restore_position(run: Run, state: dict, t) -> None:
    from vqgen.data.stream import load_position

    load_position(run.batches, state["batches"], run.env.rank, run.env.world_size)
    run.step, run.skipped = int(state["step"]), int(state["skipped"])
    rngs = state["rng"]
    if len(rngs) == run.env.world_size:
        set_rng_state(rngs[run.env.rank])
    else:
        seed_everything(t.seed + 1000 * run.env.rank + run.step)


def _batches(source, cfg: RunConfig, env: DistInfo):
    """The batch order: :class:`EpochBatches` over ``source`` records in memory, or the stream's loader."""
    if isinstance(source, StreamData):
        return source.loader(cfg, env)
    t = cfg.train
    return EpochBatches(source, t.batch_size, seed=t.seed, rank=env.rank, world_size=env.world_size)


def build_sharded_run(cfg: RunConfig, env: DistInfo, run_dir: Path, text_tok, num_train) -> Run:
    """FSDP2: the model is built on the meta device, its blocks (and text encoder blocks) and
    then the whole are sharded, and each rank materialises and initialises its shard (the same
    weights on any number of ranks). Resumes from a sharded checkpoint on any number of ranks."""
    t, device = cfg.train, env.device
    seed_everything(t.seed)
    model = fsdp.on_meta(lambda: build_model(cfg.model))
    model.text_tokenizer = text_tok if hasattr(model, "tokenize") else None
    frozen = freeze(model, t.freeze) if t.freeze else []
    if env.is_main and frozen:
        print(f"vqgen: {len(frozen)} of {len(list(model.parameters()))} parameter tensors frozen")
    units = list(getattr(model, "encoder", [])) + list(model.blocks)
    if t.activation_checkpointing:
        fsdp.checkpoint_activations(units)
    loss_mod = LossModule(model)
    fsdp.shard(loss_mod, units, bf16=bf16_params(t, device), reduce_dtype=t.reduce_dtype)
    fsdp.materialize(loss_mod, device, t.seed, lambda _: init_token_model(model))
    opt = make_optimizer(model, t)

    def restore(ckpt: Path, state: dict) -> None:
        if not is_sharded(ckpt):
            raise CheckpointError(f"{ckpt} is not a sharded checkpoint (the run was not trained with train.fsdp)")
        shards = {"model": fsdp.model_state(model), "optim": fsdp.optim_state(model, opt)}
        fsdp.load_sharded(ckpt / fsdp.DCP_DIR, shards)
        fsdp.set_model_state(model, shards["model"])
        fsdp.set_optim_state(model, opt, shards["optim"])

    state = resume_from(run_dir, restore, env.is_main)
    if state is None and t.init_from:
        _load_full(model, model_dir(t.init_from), env, t.init_text)
    run = Run(cfg, env, model, loss_mod, torch.compile(loss_mod) if t.compile else loss_mod, opt,
              _batches(num_train, cfg, env), accum=_resumed_accum(t, env, state))
    if state is not None:
        _restore_position(run, state, t)
    return run


def _load_full(model: TokenModel, directory: Path, env: DistInfo, init_text: bool = True) -> None:
    """A saved model's weights into a sharded model: rank 0 reads the file, each rank keeps its shard
    (with ``init_text`` false the text side keeps its fresh values: :func:`init_from_weights`)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not init_text:
        text_side(model)  # a model without one is refused on every rank, not on rank 0 alone
    full = init_from_weights(model, directory, init_text) if env.is_main else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                               strict=init_text))


def text_side(model: TokenModel) -> tuple[str, ...]:
    """Parameter-name prefixes of a model's text side (``train.init_text=false`` leaves them fresh)."""
    prefixes = getattr(type(model), "TEXT_SIDE", ())
    if not prefixes:
        raise ConfigError(f"train.init_text=false: a {type(model).__name__} model has no separate text side "
                          "(only Parti's encoder and text projection can start fresh)")
    return prefixes


def init_from_weights(model: TokenModel, directory: Path, init_text: bool = True) -> dict:
    """``init_from``'s weights for ``model``: all of them, or (``init_text`` false) all but the text
    side, checked against ``model``: every other tensor present, with its shape."""
    from safetensors.torch import load_file

    from vqgen.io import WEIGHTS_NAME

    weights = load_file(str(directory / WEIGHTS_NAME))
    if init_text:
        return weights
    skip = text_side(model)
    kept = {k: v for k, v in weights.items() if not k.startswith(skip)}
    own = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(skip)}
    missing = sorted(set(own) - set(kept))
    wrong = sorted(k for k in own if k in kept and tuple(kept[k].shape) != tuple(own[k]))
    if missing or wrong or set(kept) - set(own):
        raise CheckpointError(f"{directory}: its image decoder does not fit this model (missing {missing[:3]}, "
                              f"other shapes {wrong[:3]}, extra {sorted(set(kept) - set(own))[:3]})")
    return kept


def build_run(cfg: RunConfig, env: DistInfo, run_dir: Path, text_tok, num_train: int) -> Run:
    """Build the model (resumed, or from ``init_from``), freeze, wrap for DDP/FSDP/compile, and
    make the optimizer and batch order, restoring them from the latest usable checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    t, device = cfg.train, env.device
    if t.fsdp:
        return build_sharded_run(cfg, env, run_dir, text_tok, num_train)
    seed_everything(t.seed)
    model = build_model(cfg.model)
    model.text_tokenizer = text_tok if hasattr(model, "tokenize") else None
    ema = build_model(cfg.model).eval().requires_grad_(False) if t.ema_decay > 0 else None

    def restore(ckpt: Path, state: dict) -> None:
        load_weights(model, ckpt / "model")
        if ema is not None:
            load_weights(ema, ckpt / "ema")

    state = resume_from(run_dir, restore, env.is_main)
    if state is None:
        if t.init_from and t.init_text:
            load_weights(model, model_dir(t.init_from))
        elif t.init_from:  # the image decoder only: the text side keeps its fresh values
            model.load_state_dict(init_from_weights(model, model_dir(t.init_from), init_text=False), strict=False)
        if ema is not None:
            ema.load_state_dict(model.state_dict())
    frozen = freeze(model, t.freeze) if t.freeze else []
    if env.is_main and frozen:
        print(f"vqgen: {len(frozen)} of {len(list(model.parameters()))} parameter tensors frozen")
    if t.activation_checkpointing:
        fsdp.checkpoint_activations(list(getattr(model, "encoder", [])) + list(model.blocks))
    model.to(device)
    ema = ema.to(device) if ema is not None else None
    loss_mod: nn.Module = LossModule(model)
    if env.distributed:
        loss_mod = nn.parallel.DistributedDataParallel(loss_mod, device_ids=[device] if device.type == "cuda" else None)
    opt = make_optimizer(model, t)
    run = Run(cfg, env, model, loss_mod, torch.compile(loss_mod) if t.compile else loss_mod, opt,
              _batches(num_train, cfg, env), ema, accum=_resumed_accum(t, env, state))
    if state is not None:
        set_optimizer_state_dict(loss_mod, opt, optim_state_dict=state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        _restore_position(run, state, t)
    return run


def train_step(run: Run, data: TrainData, batches, device) -> tuple[dict, bool, int]:
    """One optimisation step over ``grad_accum`` micro-batches: (metrics row, stepped?, rows seen).
    A non-finite loss or gradient norm on any rank skips the step for all of them."""
    t, accum = run.cfg.train, run.accum
    lr = set_lr(run.opt, step_lr(run.step, t))
    run.opt.zero_grad(set_to_none=True)
    loss_sum, local_bad, sums, rows = 0.0, 0.0, {}, 0
    precision = "fp32" if bf16_params(t, device) else t.precision  # the FSDP policy casts instead
    for micro in range(accum):
        codes, cond = data.train_batch(next(batches), device, (run.step, micro))  # (B, N), cond
        cond = cond.drop(t.cond_dropout)
        sync_off = isinstance(run.loss_mod, nn.parallel.DistributedDataParallel) and micro < accum - 1
        with (run.loss_mod.no_sync() if sync_off else contextlib.nullcontext()), autocast(device, precision):
            loss, metrics = run.step_fn(codes, cond)
        if not torch.isfinite(loss):
            local_bad = 1.0
        (loss / accum).backward()
        loss_sum += float(loss.detach()) / accum
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) / accum
        rows += codes.shape[0]
    gnorm = _full_norm(nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf")))
    flags = torch.tensor([loss_sum, local_bad], dtype=torch.float64, device=device)
    if run.env.distributed:
        dist.all_reduce(flags)
        flags[0] /= run.env.world_size
    ok = math.isfinite(gnorm) and float(flags[1]) == 0.0
    if ok:
        run.opt.step()
        if run.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(list(run.ema.parameters()), list(run.model.parameters()), 1 - t.ema_decay)
        run.bad_in_row = 0
    else:
        run.opt.zero_grad(set_to_none=True)
        run.skipped += 1
        run.bad_in_row += 1
        if run.bad_in_row >= t.max_bad_steps:
            raise VqgenError(f"the loss was not finite for {run.bad_in_row} steps in a row (last at step {run.step + 1}); "
                             f"stopping without a checkpoint. Lower train.lr, use train.norm=sandwich or fp32")
    run.step += 1
    row = {"loss": float(flags[0]), "lr": lr, "grad_norm": gnorm, "skipped_steps": run.skipped, **sums}
    return row, ok, rows


def evaluate(run: Run, data: TrainData, device) -> float:
    """Mean image-code loss (nats/code) over the first ``val_batches`` validation batches."""
    t = run.cfg.train
    run.loss_mod.eval()
    total, n = 0.0, 0
    with torch.no_grad(), autocast(device, "fp32" if bf16_params(t, device) else t.precision):
        for i in range(0, min(len(data.val_idx), t.val_batches * t.batch_size), t.batch_size):
            codes, cond = data.batch(data.val_idx[i:i + t.batch_size], device)
            _, metrics = run.loss_mod(codes, cond)
            total += float(metrics["image_loss"]) * codes.shape[0]
            n += codes.shape[0]
    run.loss_mod.train()
    return total / n


def evaluate_infill(run: Run, data: TrainData, device) -> dict:
    """CogLM runs: ``{"val_infill_loss": ...}``, the mean loss (nats/code) of the masked cells of
    regions drawn with a fixed seed, over the batches :func:`evaluate` reads; else ``{}`` (also
    under FSDP, where the model is only called through its wrapper)."""
    model, t = run.model, run.cfg.train
    if getattr(model.config, "coglm_mix", 0.0) <= 0 or t.fsdp:
        return {}
    g = torch.Generator().manual_seed(t.seed + 1)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad(), autocast(device, t.precision):
        for i in range(0, min(len(data.val_idx), t.val_batches * t.batch_size), t.batch_size):
            codes, cond = data.batch(data.val_idx[i:i + t.batch_size], device)  # (B, N), cond
            region = model.patch_regions(codes.shape[0], generator=g, device=device)  # (B, N)
            _, metrics = model.coglm_loss(codes, cond, region)
            cells = int(region.sum())
            total += float(metrics.get("infill_loss", metrics["image_loss"])) * cells
            n += cells
    model.train(was_training)
    return {"val_infill_loss": total / max(n, 1)}


def _full_state(run: Run) -> dict:
    """The full (gathered) model state dict, on rank 0; collective under FSDP."""
    full = fsdp.full_state(run.loss_mod)
    return {k.removeprefix("model."): v for k, v in full.items()}


def _rng_states(run: Run) -> list:
    """Every rank's RNG state, in rank order (collective when distributed)."""
    if not dist.is_initialized():
        return [rng_state()]
    rngs = [None] * run.env.world_size
    dist.all_gather_object(rngs, rng_state())
    return rngs


def _position(run: Run, run_dir: Path) -> dict:
    """Where the run is (collective for streamed data: each rank's loader position, in rank order)."""
    from vqgen.data.stream import position_state

    return {"batches": position_state(run.batches), "step": run.step, "skipped": run.skipped,
            "global_batch": run.global_batch, "metrics_bytes": metrics_bytes(run_dir)}


def checkpoint_sharded(run: Run, run_dir: Path) -> None:
    """Write ``checkpoints/step-N/dcp/``: each rank its shard of the weights and optimizer state
    (DCP), rank 0 the model config and ``resume.pt``; no rank gathers the whole model."""
    local_ok = all(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in run.model.parameters())
    ok = torch.tensor([float(local_ok)])
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if not ok.item():
        raise VqgenError(f"step {run.step}: weights are not finite; no checkpoint written")
    shards = {"model": fsdp.model_state(run.model), "optim": fsdp.optim_state(run.model, run.opt)}
    resume = {**_position(run, run_dir), "rng": _rng_states(run)}
    save_sharded_checkpoint(run_dir, run.step, lambda where: fsdp.save_sharded(where, shards), {"model": run.model},
                            resume, run.env.is_main)


def checkpoint(run: Run, run_dir: Path) -> None:
    """Write ``checkpoints/step-N`` (all ranks take part: FSDP gathers, every rank's RNG is kept)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if run.cfg.train.fsdp:
        return checkpoint_sharded(run, run_dir)
    full = _full_state(run)
    optim = get_optimizer_state_dict(run.loss_mod, run.opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rngs = _rng_states(run)
    position = _position(run, run_dir)
    if run.env.is_main:
        if not all(torch.isfinite(v).all() for v in full.values() if v.is_floating_point()):
            raise VqgenError(f"step {run.step}: weights are not finite; no checkpoint written")
        comps = {"model": _plain_copy(run.cfg, full)}
        if run.ema is not None:
            comps["ema"] = run.ema
        save_checkpoint(run_dir, run.step, comps, {"optimizer": optim, "rng": rngs, **position})
    if run.env.distributed:
        dist.barrier()


# ----------------------------------------------------------------------------- the loop
def train(codes_dir: str | Path, run_dir: str | Path, preset: str | None = None, overrides: list[str] | None = None,
          steps: int | None = None, text_tokenizer: str | Path | None = None, show_progress: bool = True) -> TrainResult:
    """Train (or resume) a token transformer on CODES into RUN; returns the final figures."""
    run_dir = Path(run_dir)
    cfg, resuming = resolve_config(run_dir, preset, overrides or [], steps)
    env = init_distributed(cfg.train.device, group=cfg.train.fsdp)
    try:
        from vqgen.data.stream import is_stream_source

        streaming = is_stream_source(codes_dir)
        fit = prepare_stream if streaming else prepare
        cfg, data, info, text_tok = fit(cfg, codes_dir, run_dir, resuming, _text_tokenizer(cfg, resuming, text_tokenizer))
        held = data.val if streaming else data  # validation records, in memory
        if resuming:
            cfg, _ = resolve_run_config(run_dir, cfg)  # the codes must still fit the saved model
        t, device = cfg.train, env.device
        if t.fsdp and t.ema_decay > 0:
            raise ConfigError("train.ema_decay with train.fsdp=true is not supported")
        if env.is_main:
            save_run_config(cfg, run_dir)
            if text_tok is not None:
                text_tok.save(run_dir / "tokenizer.json")
        if not streaming:  # a stream is counted as it is read (below)
            report_skips(run_dir, codes_dir, len(data.codes), {}, env.is_main)
        run = build_run(cfg, env, run_dir, text_tok, data if streaming else len(data.train_idx))
        logger = RunLogger(run_dir, enabled=env.is_main)
        grids = _sample_grids(cfg, env, info, held, logger)
        train_codes = data.probe_train if streaming else data.codes[data.train_idx]
        uni = unigram_loss(train_codes, held.codes[held.val_idx], cfg.model.codebook_size)
        tokens_per_row = held.codes.shape[1] + (cfg.model.text.max_len if cfg.model.family == "unified" else 0)

        batches = iter(run.batches)
        bar = progress(total=t.steps, initial=run.step, desc="train", enabled=env.is_main and show_progress)
        last_ckpt, t0, seen = run.step, time.perf_counter(), 0
        while run.step < t.steps:
            row, ok, rows = train_step(run, data, batches, device)
            seen += rows * tokens_per_row * env.world_size
            bar.update(1)
            if env.is_main and (run.step % max(1, t.log_every) == 0 or run.step == t.steps):
                logger.log(run.step, {**row, "tokens_per_s": seen / max(time.perf_counter() - t0, 1e-9)})
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                t0, seen = time.perf_counter(), 0
            if t.val_every and run.step % t.val_every == 0 and run.step != t.steps:
                val = evaluate(run, held, device)
                logger.log(run.step, {"val_loss": val, "unigram_val_loss": uni, **evaluate_infill(run, held, device)})
            if grids is not None and t.sample_every and run.step % t.sample_every == 0:
                grids(run.model, run.step, device)
            if ok and t.ckpt_every and run.step % t.ckpt_every == 0 and run.step != t.steps:
                checkpoint(run, run_dir)
                last_ckpt = run.step
        bar.close()
        if last_ckpt != run.step:
            checkpoint(run, run_dir)
        if streaming and env.is_main:  # rank 0's share of the stream, like stage 1
            from vqgen.data.stream import report_stream

            report_stream(run_dir, codes_dir, run.batches, env.distributed)
        val = evaluate(run, held, device)  # logged after the last checkpoint: a re-run logs it once
        logger.log(run.step, {"val_loss": val, "unigram_val_loss": uni, **evaluate_infill(run, held, device)})
        _save_final_model(run, run_dir, text_tok, grids)
        logger.close()
        return TrainResult(run_dir=run_dir, step=run.step, val_loss=val, unigram_val_loss=uni, skipped_steps=run.skipped)
    finally:
        cleanup_distributed()


def _text_tokenizer(cfg: RunConfig, resuming: bool, given: str | Path | None) -> str | Path | None:
    """The BPE to use: the one given, else ``init_from``'s (its token ids are what its weights learnt),
    unless the text side starts fresh (``init_text=false``: a new BPE is trained on the captions)."""
    if given or resuming or not cfg.train.init_from or not cfg.train.init_text:
        return given
    path = model_dir(cfg.train.init_from) / "tokenizer.json"
    return path if path.is_file() else None


def _sample_grids(cfg: RunConfig, env: DistInfo, info: dict, data: TrainData, logger: RunLogger) -> SampleGrids | None:
    """Sample grids on the main rank; none from a sharded model, nor from a text-after-image scorer."""
    if env.is_main and cfg.train.fsdp:
        print("vqgen: no sample grids with train.fsdp=true (the model is sharded)")
    if not env.is_main or cfg.train.fsdp or getattr(cfg.model, "image_first", False):
        return None
    return SampleGrids(info, data, cfg.train.sample_rows, logger)


def _save_final_model(run: Run, run_dir: Path, text_tok, grids: SampleGrids | None) -> None:
    """``RUN/model``: the EMA if kept, else the trained weights (gathered from every rank)."""
    full = _full_state(run) if run.ema is None else None  # collective under FSDP
    if run.env.is_main:
        final = run.ema if run.ema is not None else _plain_copy(run.cfg, full)
        final.text_tokenizer = text_tok if hasattr(final, "tokenize") else None
        if grids is not None:
            grids(final.to(run.env.device), run.step, run.env.device)
        save_final(final, run_dir / "model")
    if run.env.distributed:
        dist.barrier()


def _plain_copy(cfg: RunConfig, state: dict) -> TokenModel:
    """A CPU model holding ``state`` (a full state dict gathered from any wrapper). Built on the
    meta device, so it neither initialises weights twice nor draws from the RNG."""
    with torch.device("meta"):
        model = build_model(cfg.model)
    model.load_state_dict({k: v.detach().cpu().clone() for k, v in state.items()}, strict=True, assign=True)
    return model.eval()
