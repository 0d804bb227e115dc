"""Train a CLIP-style reranker on an image folder or WebDataset shards with captions (``vqgen rerank train``).

The run trains a BPE tokenizer on the training captions (``RUN/tokenizer.json``; none with a
frozen pretrained text tower, ``--set model.text_encoder=pretrained --set model.pretrained_dir=DIR``,
which reads the encoder's own tokenizer), then the dual encoder with a symmetric InfoNCE loss
and a learned temperature. Pairs with identical captions in a batch count as positives of each
other (soft targets), so repeated captions are not pushed apart. With ``hard_negatives`` > 0 each image also meets one-edit perturbations of its caption
(:func:`~vqgen.shapes.negatives.perturb_caption`) as extra texts in the image → text softmax.

Every ``holdout_every``-th pair is held out: ``metrics.jsonl`` gets the held-out caption → image
R@1 among ``retrieval_group`` images and the hard-negative accuracy. The final model goes to
``RUN/model/``; the same command again on the same RUN continues from the latest checkpoint.

An image folder is read into memory. Shards (:func:`~vqgen.data.stream.is_stream_source`) stream
through a :class:`~vqgen.data.stream.StreamLoader` (split by rank and worker, a shuffle buffer, the
position in each checkpoint): the pairs whose key hashes to the held-out split
(:func:`~vqgen.tokenizer.data.heldout_key`, at most :data:`HELDOUT_LIMIT`) are read into memory
for evaluation, and the BPE is trained on the captions of the first :data:`PROBE` training pairs.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from vqgen.config import get_preset, register_preset, require
from vqgen.data.captions import CaptionBank, caption_lists, pick_texts
from vqgen.data.stream import StreamLoader, is_stream_source, load_position, position_state, report_stream
from vqgen.data.webdataset import ShardDataset
from vqgen.errors import VqgenError
from vqgen.io import load_pretrained, make_dir
from vqgen.rerank.clip import FAMILY as MODEL_FAMILY
from vqgen.rerank.clip import ClipConfig, ClipReranker, check_reranker
from vqgen.shapes.rerank_eval import hard_negative_accuracy, retrieval_at_1
from vqgen.shapes.negatives import perturb_caption
from vqgen.runtime import (EpochBatches, Limits, RunLogger, cleanup_distributed, init_distributed, latest_checkpoint,
                           load_weights, lr_factor, metrics_bytes, progress, report_skips, resolve_run_config,
                           resume_from, rng_state, save_checkpoint, save_final, save_run_config, seed_everything,
                           set_lr, set_rng_state)
from vqgen.text.bpe import TOKENIZER_NAME, TextTokenizer
from vqgen.tokenizer.data import heldout_key, image_stream, load_heldout_shards

FAMILY = "rerank"
HELDOUT_LIMIT = 1024  # held-out pairs of streamed shards read into memory for evaluation
PROBE = 4096  # training pairs at the front of streamed shards whose captions train the BPE


@dataclass(frozen=True)
class RerankTrainConfig:
    model: ClipConfig = field(default_factory=ClipConfig)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0  # 0 disables
    hard_negatives: int = 1  # perturbed captions per image added to the image → text softmax (0: off)
    augment: float = 0.0  # fraction of training images blurred and noised like generated ones (0: off)
    bpe_vocab_size: int = 512  # at most; the model's vocab_size becomes the trained tokenizer's size
    steps: int = 2000
    seed: int = 0
    device: str = "auto"
    holdout_every: int = 10  # every n-th pair is held out (>= 2; shards: by a hash of the key)
    stream_workers: int = 2  # DataLoader workers per rank when the data are streamed shards
    shuffle_buffer: int = 1000  # streamed shards: samples in the shuffle buffer of each reader
    retrieval_group: int = 32  # held-out R@1 is caption → image among this many
    time_limit_min: float = 0.0  # stop (and save) after this many minutes; 0: no limit
    cpu_limit_min: float = 0.0  # stop after this many minutes of this process's CPU time; 0: no limit
    log_every: int = 20
    eval_every: int = 200
    ckpt_every: int = 500
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: plain steps, linear in the gradient (equivalence tests)

    def __post_init__(self):
        require(self.batch_size >= 2, "batch_size", "must be >= 2 (contrastive)")
        require(self.lr > 0, "lr", "must be > 0")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        require(self.hard_negatives >= 0, "hard_negatives", "must be >= 0")
        require(0 <= self.augment <= 1, "augment", "must be in [0, 1]")
        require(self.steps >= 0, "steps", "must be >= 0")
        require(self.holdout_every >= 2, "holdout_every", "must be >= 2")
        require(self.retrieval_group >= 2, "retrieval_group", "must be >= 2")
        for name in ("stream_workers", "shuffle_buffer"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("log_every", "eval_every", "ckpt_every"):
            require(getattr(self, name) >= 1, name, "must be >= 1")


@register_preset(FAMILY, "tiny")
def _train_tiny() -> RerankTrainConfig:
    """The tiny model, batch 8, 30 steps: for tests."""
    return RerankTrainConfig(model=get_preset(MODEL_FAMILY, "tiny"), batch_size=8, lr=2e-3, warmup_steps=5,
                             bpe_vocab_size=128, steps=30, device="cpu", retrieval_group=4, log_every=5, eval_every=10, ckpt_every=10)


@register_preset(FAMILY, "small")
def _train_small() -> RerankTrainConfig:
    """The small model (64x64 images), batch 64: a few minutes on a CPU core for shapes."""
    return RerankTrainConfig(model=get_preset(MODEL_FAMILY, "small"))


# ----------------------------------------------------------------------------- data
@dataclass
class PairSet:
    """Images (N, 3, S, S) uint8 and their captions, split into training and held-out indices;
    ``captions``: every record's caption list when some hold several (``meta["texts"]``)."""

    images: torch.Tensor
    texts: list[str]
    train_idx: torch.Tensor
    heldout_idx: torch.Tensor
    skipped: Counter = field(default_factory=Counter)
    captions: list[list[str]] | None = None


def load_pairs(data_dir: str | Path, size: int, holdout_every: int, show_progress: bool = True) -> PairSet:
    """Read an image folder or WebDataset shards with captions into memory (records without text
    are skipped and counted). Shards hold out the pairs a streamed run holds out (by key)."""
    from vqgen.tokenizer.data import load_image_set

    try:
        data = load_image_set(data_dir, size, require_text=True)
    except VqgenError as e:
        raise VqgenError(f"{data_dir} holds no image with a caption ({e})") from None
    idx = torch.arange(len(data))
    if is_stream_source(data_dir):
        held = torch.tensor([heldout_key(k, holdout_every) for k in data.keys], dtype=torch.bool)  # (N,)
    else:
        held = idx % holdout_every == holdout_every - 1
    alts = caption_lists(list(data.texts), list(data.metas))
    return PairSet(data.images, list(data.texts), idx[~held], idx[held], data.skipped,
                   alts if any(len(a) > 1 for a in alts) else None)


def load_heldout_pairs(source, size: int, holdout_every: int) -> PairSet:
    """The held-out pairs of streamed shards (at most :data:`HELDOUT_LIMIT`) in memory, as a
    :class:`PairSet` with no training pairs."""
    held = load_heldout_shards(source, size, holdout_every, HELDOUT_LIMIT, require_text=True)
    if held is None:
        raise VqgenError(f"{source}: no held-out pair with a caption (holdout_every={holdout_every})")
    return PairSet(held.images, list(held.texts), torch.zeros(0, dtype=torch.long), torch.arange(len(held)))


def stream_captions(source, holdout_every: int) -> list[str]:
    """Every caption (``meta["texts"]`` too) of the first :data:`PROBE` training pairs of shards: the BPE's corpus."""
    ds = ShardDataset(source, require_text=True, rank=0, world_size=1)
    front = [r for _, r in itertools.islice(ds.samples(exclude=partial(heldout_key, every=holdout_every)), PROBE)]
    return [t for c in caption_lists([r.text for r in front], [r.meta for r in front]) for t in c]


def degrade_batch(images: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Blur (Gaussian, sigma 0.3–1.2 px at 64 px) and noise (std up to 0.05) a random ``prob`` of
    images (B, 3, S, S) in [0, 1], as a tokenizer's reconstructions look; the rest pass unchanged."""
    b, _, s, _ = images.shape
    chosen = torch.rand(b, generator=gen) < prob  # (B,)
    if not chosen.any():
        return images
    x = images[chosen]  # (b', 3, S, S)
    sigma = (0.3 + 0.9 * torch.rand(len(x), generator=gen)) * s / 64  # (b',)
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)  # (K,)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)  # (b', K)
    k = (k / k.sum(1, keepdim=True)).to(x.device)
    n = len(x)
    y = x.reshape(1, n * 3, s, s)
    kx = k.repeat_interleave(3, 0)  # (b'*3, K)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kx[:, None, None, :], groups=n * 3)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kx[:, None, :, None], groups=n * 3)
    y = y.reshape(n, 3, s, s)
    noise = 0.05 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(y.shape, generator=gen)  # (b', 3, S, S)
    out = images.clone()
    out[chosen] = (y + noise.to(y.device)).clamp(0, 1)
    return out


# ----------------------------------------------------------------------------- loss
def _soft_targets(texts: list[str], device) -> torch.Tensor:
    """Row-normalised caption-equality matrix (B, B): identical captions are shared positives."""
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    key = torch.tensor([ids[t] for t in texts], device=device)
    same = (key[:, None] == key[None, :]).float()  # (B, B)
    return same / same.sum(1, keepdim=True)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, texts: list[str],
                     neg: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE on unit embeddings img (B, E), txt (B, E); ``neg`` (B, M, E) are extra
    negatives of each image only. Returns the loss and in-batch image → text accuracy."""
    targets = _soft_targets(texts, img.device)  # (B, B)
    logits = scale * img @ txt.T  # (B, B)
    i2t = logits
    if neg is not None:
        neg_logits = scale * torch.einsum("be,bme->bm", img, neg)  # (B, M)
        i2t = torch.cat([logits, neg_logits], dim=1)  # (B, B + M)
        targets_i2t = torch.cat([targets, torch.zeros_like(neg_logits)], dim=1)
    else:
        targets_i2t = targets
    loss_i2t = -(targets_i2t * F.log_softmax(i2t, dim=1)).sum(1).mean()
    loss_t2i = -(targets * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    acc = (targets_i2t.gather(1, i2t.argmax(1, keepdim=True)) > 0).float().mean()
    return (loss_i2t + loss_t2i) / 2, acc


# ----------------------------------------------------------------------------- training
class Embed(torch.nn.Module):
    """What DDP wraps: one forward that embeds a batch's images, captions and perturbed captions."""

    def __init__(self, model: ClipReranker):
        super().__init__()
        self.model = model

    def forward(self, images, ids, mask, neg_texts: list[str] | None):
        img = self.model.encode_images(images)  # (B, E)
        txt = self.model.encode_ids(ids, mask)  # (B, E)
        neg = self.model.encode_texts(neg_texts) if neg_texts else None  # (B * M, E)
        return img, txt, neg


def gather_batch(img, txt, neg, texts: list[str]):
    """Under torchrun: every rank's embeddings (autograd flows back to each rank's own rows) and
    captions, so the contrastive loss is the one of the global batch. Every rank computes that
    same loss; the gather's backward sums the ranks' gradients and DDP averages them, which
    gives each parameter the global loss's gradient."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return img, txt, neg, texts
    from torch.distributed.nn.functional import all_gather

    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, texts)
    cat = lambda t: torch.cat(all_gather(t.contiguous()), 0) if t is not None else None  # noqa: E731
    return cat(img), cat(txt), cat(neg), [t for part in everyone for t in part]


def _evaluate(model: ClipReranker, data: PairSet, cfg: RerankTrainConfig) -> dict[str, float]:
    model.eval()
    imgs, texts = data.images[data.heldout_idx], [data.texts[i] for i in data.heldout_idx.tolist()]
    out = {"heldout_r1": retrieval_at_1(model, imgs, texts, cfg.retrieval_group),
           "heldout_r1_chance": 1.0 / cfg.retrieval_group}
    try:
        out["heldout_hard_neg_acc"] = hard_negative_accuracy(model, imgs, texts, seed=cfg.seed)
    except VqgenError:  # captions outside the shapes vocabulary: no hard negatives to test
        pass
    model.train()
    return out


def train_reranker(cfg: RerankTrainConfig, data_dir: str | Path, run_dir: str | Path,
                   show_progress: bool = True) -> tuple[ClipReranker, dict[str, float]]:
    """Train (or resume) a reranker; returns the model and its final held-out metrics. On an
    existing RUN, ``cfg`` may differ from the saved config only in the harmless fields."""
    run_dir = Path(run_dir)
    cfg, _ = resolve_run_config(run_dir, cfg, fitted=("model.vocab_size",))
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, data_dir, run_dir, show_progress, info)
    finally:
        cleanup_distributed()


def _train(cfg: RerankTrainConfig, data_dir, run_dir: Path, show_progress: bool, info):
    """One process's run (DDP under torchrun: each rank its share of every global batch)."""
    import torch.distributed as dist

    device, main = info.device, info.is_main
    seed_everything(cfg.seed)
    streaming = is_stream_source(data_dir)
    if streaming:  # held-out pairs in memory, training pairs streamed (counted as they are read)
        data = load_heldout_pairs(data_dir, cfg.model.image_size, cfg.holdout_every)
    else:
        data = load_pairs(data_dir, cfg.model.image_size, cfg.holdout_every, show_progress)
        report_skips(run_dir, data_dir, len(data.images), data.skipped, main)
    if len(data.heldout_idx) < cfg.retrieval_group:
        raise VqgenError(f"{len(data.heldout_idx)} held-out pairs, fewer than retrieval_group="
                         f"{cfg.retrieval_group}: use more data or --set retrieval_group=N")

    tok_path, tokenizer = run_dir / TOKENIZER_NAME, None
    trained = cfg.model.text_encoder == "trained"  # else the frozen encoder's own tokenizer
    if trained and not tok_path.is_file() and main:  # BPE training differs between processes: rank 0 trains
        if streaming:
            corpus = stream_captions(data_dir, cfg.holdout_every)
        else:
            lists = data.captions or [[x] for x in data.texts]
            corpus = [t for i in data.train_idx.tolist() for t in lists[i]]
        tokenizer = TextTokenizer.train(corpus, vocab_size=cfg.bpe_vocab_size)
        make_dir(run_dir)
        tokenizer.save(tok_path)
    if info.distributed:
        dist.barrier()
    if trained:
        tokenizer = TextTokenizer.load(tok_path)
    if tokenizer is not None:
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=max(tokenizer.vocab_size, 5)))

    model = ClipReranker(cfg.model, tokenizer).to(device)
    encode = model.text_tower.frozen.encode if model.frozen_text else tokenizer.encode
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = (torch.optim.SGD(groups, lr=cfg.lr) if cfg.optimizer == "sgd"
           else torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98)))
    if streaming:
        batches = image_stream(data_dir, cfg.model.image_size, cfg.batch_size, cfg.holdout_every, cfg.seed, info.rank,
                               info.world_size, cfg.stream_workers, cfg.shuffle_buffer, require_text=True, metas=True)
    else:
        batches = EpochBatches(len(data.train_idx), cfg.batch_size, seed=cfg.seed, rank=info.rank,
                               world_size=info.world_size)
    state = resume_from(run_dir, lambda ckpt, _: load_weights(model, ckpt / "reranker"), main)
    streams = None
    if state is not None:
        opt.load_state_dict(state["opt"])
        load_position(batches, state["batches"], info.rank, info.world_size)
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) == info.world_size:  # the same number of ranks: every stream continues where it was
            set_rng_state(rngs[info.rank])
            streams = state["streams"][info.rank] if "streams" in state else state if "neg_rng" in state else None
    elif main:
        save_run_config(cfg, run_dir)
    step = int(state["step"]) if state is not None else 0
    limits = Limits(cfg.time_limit_min, cfg.cpu_limit_min, state)

    offset = cfg.seed * 7919 + step + 104729 * info.rank  # rank 0 draws what one process draws
    neg_rng = np.random.default_rng(offset)  # hard negatives
    aug_gen = torch.Generator().manual_seed(offset)  # augmentation
    if streams is not None:  # continue both streams where they were
        neg_rng.bit_generator.state = streams["neg_rng"]
        aug_gen.set_state(streams["aug_rng"])
    embed = Embed(model)
    if info.distributed:
        embed = torch.nn.parallel.DistributedDataParallel(embed, device_ids=[device] if device.type == "cuda" else None)

    def gathered(obj) -> list:
        if not info.distributed:
            return [obj]
        out = [None] * info.world_size
        dist.all_gather_object(out, obj)
        return out

    def checkpoint(step: int) -> None:
        """Rank 0 writes ``step-N`` with every rank's RNG streams (collective)."""
        mine = {"neg_rng": neg_rng.bit_generator.state, "aug_rng": aug_gen.get_state()}
        rngs, streams_all, position = gathered(rng_state()), gathered(mine), position_state(batches)
        if main:
            save_checkpoint(run_dir, step, {"reranker": model}, {
                "opt": opt.state_dict(), "batches": position, "rng": rngs, "step": step,
                "streams": streams_all, **limits.state_dict(), "metrics_bytes": metrics_bytes(run_dir)})
        if info.distributed:
            dist.barrier()

    next_batch = _streamed_batches(batches, encode, cfg) if streaming else _folder_batches(data, batches, encode, cfg)
    logger = RunLogger(run_dir, enabled=main)
    bar = progress(total=cfg.steps, initial=step, desc="rerank", enabled=show_progress and main)
    model.train()
    try:
        while step < cfg.steps:
            images, texts, ids, mask = next_batch(step)  # (B, 3, S, S) uint8, B captions, (B, L) x2
            images = images.to(device).float() / 255.0  # (B, 3, S, S)
            if cfg.augment > 0:
                images = degrade_batch(images, cfg.augment, aug_gen)
            neg_texts = None
            if cfg.hard_negatives > 0:
                orig = [t for t in texts for _ in range(cfg.hard_negatives)]
                neg_texts = [perturb_caption(t, neg_rng) or t for t in orig]
            img, txt, neg = embed(images, ids.to(device), mask.to(device), neg_texts)  # (B, E) x2, (B*M, E)
            if neg is not None:
                neg = neg.view(len(texts), cfg.hard_negatives, -1)  # (B, M, E)
                keep = torch.tensor([n != t for n, t in zip(neg_texts, orig)],
                                    device=device).view(len(texts), cfg.hard_negatives, 1)
                neg = torch.where(keep, neg, -img[:, None])  # an unperturbable caption adds an easy negative
            img, txt, neg, texts = gather_batch(img, txt, neg, texts)  # the global batch under torchrun
            loss, acc = contrastive_loss(img, txt, model.clamped_scale(), texts, neg)
            lr = set_lr(opt, cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            bar.update(1)
            stop = limits.reached(step if main else None)
            if step % cfg.log_every == 0 or step == cfg.steps or stop:
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc.item():.2f}")
                logger.log(step, {"loss": loss, "batch_acc": acc, "temperature": model.temperature(), "lr": lr})
            if main and step % cfg.eval_every == 0 and step < cfg.steps and not stop:
                logger.log(step, _evaluate(model, data, cfg))
            if stop:
                break
            if step % cfg.ckpt_every == 0 and step < cfg.steps:
                checkpoint(step)
        model.eval()
        checkpoint(step)
        if streaming and main:
            report_stream(run_dir, data_dir, batches, info.distributed)
        metrics = {}
        if main:
            save_final(model, run_dir / "model")
            metrics = _evaluate(model, data, cfg)  # logged after the last checkpoint: a re-run logs it once
            logger.log(step, metrics)
    finally:
        bar.close()
        logger.close()
    return model, metrics


def _folder_batches(data: PairSet, batches: EpochBatches, encode, cfg: RerankTrainConfig):
    """``next_batch(step)``: the next in-memory batch as (images (B, 3, S, S) uint8, captions, ids, mask (B, L))."""
    all_ids, all_mask = encode(data.texts, cfg.model.max_len)  # (N, L) x2
    bank = CaptionBank.build(data.captions, encode, cfg.model.max_len) if data.captions else None
    it = iter(batches)

    def next_batch(step: int):
        idx = data.train_idx[next(it)]  # (B,)
        texts = [data.texts[i] for i in idx.tolist()]
        ids, mask = all_ids[idx], all_mask[idx]  # (B, L) x2
        if bank is not None:  # one of each pair's captions, fixed by (seed, step)
            texts = [data.captions[i][k] for i, k in zip(idx.tolist(), bank.choose(idx, cfg.seed, step).tolist())]
            ids, mask = bank.pick(idx, cfg.seed, step)  # (B, L) x2
        return data.images[idx], texts, ids, mask

    return next_batch


def _streamed_batches(batches: StreamLoader, encode, cfg: RerankTrainConfig):
    """``next_batch(step)``: the next streamed batch, one caption per pair picked as in memory (:func:`pick_texts`)."""
    it = iter(batches)

    def next_batch(step: int):
        images, _, texts, metas = next(it)  # (B, 3, S, S) uint8
        texts = pick_texts(list(texts), metas, cfg.seed, step)
        return (images, texts, *encode(texts, cfg.model.max_len))  # ids, mask (B, L)

    return next_batch


def _frozen_text_tower(directory: Path) -> bool:
    """A saved reranker whose text tower reads a frozen encoder (it has no tokenizer.json)."""
    from vqgen.io import read_json_object

    data = read_json_object(directory / "config.json")
    return data.get("model_type") == MODEL_FAMILY and data.get("text_encoder") == "pretrained"


def load_reranker(path: str | Path, device: str | torch.device = "cpu"):
    """A reranker from a saved model directory or a run (``RUN/model``, else its latest checkpoint):
    a :class:`ClipReranker` or a text-after-image transformer (see :func:`check_reranker`)."""
    path = Path(path)
    candidates = [path, path / "model"]
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is not None:
        candidates.append(ckpt / "reranker")
    for c in candidates:
        if all((c / name).is_file() for name in ("config.json", "model.safetensors")) and (
                (c / TOKENIZER_NAME).is_file() or _frozen_text_tower(c)):
            return check_reranker(load_pretrained(c, device=device), c)
    raise VqgenError(f"{path} holds no reranker (looked for a saved model, RUN/model and RUN/checkpoints)")
