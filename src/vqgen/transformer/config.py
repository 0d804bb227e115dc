"""Configs and named presets for the token transformers and their training runs.

``TransformerConfig`` holds what every family (``vim``, ``parti``, ``unified``) shares and builds
the family's own config (beside its model); ``TrainConfig`` the optimisation; ``RunConfig`` both
(what ``vqgen train --preset NAME`` starts from). The data set
fixes ``grid``, ``codebook_size`` and ``num_classes`` at train time; the values here are the
seed's defaults (32x32 codes of an 8192-entry codebook) so parameter counts read like the paper's.

    cfg = get_preset("transformer", "parti-350m")
    cfg = apply_overrides(cfg, ["train.lr=3e-4", "model.depth=4"])
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from vqgen.config import register_preset, require
from vqgen.errors import ConfigError

FAMILY = "transformer"


@dataclass(frozen=True)
class TextConfig:
    """How text enters the model.

    ``encoder``: ``trained`` (BPE tokens through an encoder trained with the model; for the unified
    stream, text tokens in the stream itself) or ``pretrained`` (a frozen Hugging Face encoder
    loaded from ``pretrained_dir``, a local directory; its hidden states feed cross-attention).
    """

    encoder: Literal["trained", "pretrained"] = "trained"
    vocab_size: int = 1024          # BPE vocabulary (trained); set from the tokenizer
    max_len: int = 128              # text tokens, padded/truncated (the seed uses 128)
    pretrained_dir: str | None = None

    def __post_init__(self):
        require(self.vocab_size >= 8, "text.vocab_size", "must be >= 8")
        require(self.max_len >= 2, "text.max_len", "must be >= 2")
        require(self.encoder != "pretrained" or bool(self.pretrained_dir), "text.pretrained_dir",
                "is required when text.encoder=pretrained")


@dataclass(frozen=True)
class TransformerConfig:
    """What every token transformer family shares. Each family's config lives beside its model
    and adds its own fields: ``VIMConfig`` (vim.py), ``PartiConfig`` (parti.py), ``UnifiedConfig``
    (unified.py); the family name is also the model's ``model_type`` in the one model registry.

    ``TransformerConfig(family=..., **fields)`` and ``from_dict`` build the family's config (a
    field another family owns is a ConfigError naming it). ``depth`` counts decoder blocks;
    ``norm``: ``prenorm`` or ``sandwich`` (CogView's extra LayerNorm after each sub-layer, for
    stable reduced-precision training). ``grid``: the code grid, ``(h, w)`` or ``(t, h, w)`` for
    video (frames slowest in the raster order).
    """

    family: str = "vim"
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 256
    dropout: float = 0.1
    norm: Literal["prenorm", "sandwich"] = "prenorm"
    grid: tuple[int, ...] = (32, 32)
    codebook_size: int = 8192

    def __new__(cls, *args, **kwargs):
        if cls is TransformerConfig:  # the base stands for the family the fields name
            cls = family_config(kwargs.get("family", "vim"))
            own = {f.name for f in fields(cls)}
            for name in kwargs:
                if name not in own:
                    raise ConfigError(f"config field {name!r} does not apply to the {cls.family_name} family")
        return object.__new__(cls)

    @classmethod
    def config_for(cls, data: dict) -> type:
        """The family config a dict describes (by its ``family``; default: this class's own)."""
        family = data.get("family", getattr(cls, "family_name", "vim"))
        return family_config(family)

    def __post_init__(self):
        require(self.family == getattr(type(self), "family_name", self.family), "family",
                f"{type(self).__name__} is the {getattr(type(self), 'family_name', '?')} family's config")
        require(self.dim > 0 and self.dim % self.heads == 0, "dim", f"{self.dim} must be divisible by heads={self.heads}")
        require(self.depth >= 1, "depth", "must be >= 1")
        require(self.mlp_dim >= 1, "mlp_dim", "must be >= 1")
        require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        require(len(self.grid) in (2, 3) and min(self.grid) >= 1, "grid",
                "must be (h, w) or (t, h, w) with every size >= 1")
        require(self.codebook_size >= 2, "codebook_size", "must be >= 2")

    @property
    def cond_kind(self) -> str:
        return "text"


def family_config(family: str) -> type:
    """The config class of a transformer family, found through the model registry."""
    from vqgen.io import MODELS, model_class

    cls = model_class(family).config_class if family in MODELS else None
    if cls is None or not issubclass(cls, TransformerConfig):
        known = sorted(n for n, e in MODELS.items() if ".transformer." in (e if isinstance(e, str) else e.__module__))
        raise ConfigError(f"config field 'family': unknown transformer family {family!r} (known: {', '.join(known)})")
    return cls


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping. ``batch_size`` is per process and per micro-step; the
    global batch is ``batch_size * grad_accum * world_size``."""

    steps: int = 1000
    condition: Literal["auto", "none", "class", "text"] = "auto"  # auto: vim takes classes when labelled
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: Literal["cosine", "exponential", "constant"] = "cosine"
    decay_start: int = 0            # exponential: decay begins here (the seed: 85k of 450k)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.96             # the seed's second-moment decay
    optimizer: Literal["adamw", "adafactor", "sgd"] = "adamw"  # sgd: plain steps (linear in the gradient)
    grad_clip: float = 4.0          # the seed clips the gradient norm to 4.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    cond_dropout: float = 0.1       # rows replaced by the null condition (classifier-free guidance)
    ema_decay: float = 0.0          # 0 = no EMA of weights
    compile: bool = False
    fsdp: bool = False              # shard parameters with FSDP2 (fully_shard) under torchrun; built on meta
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"  # FSDP gradient reduction under bf16 precision
    stream_workers: int = 2         # DataLoader workers per rank when CODES are streamed shards
    shuffle_buffer: int = 1000      # streamed shards: samples in the shuffle buffer of each reader
    val_fraction: float = 0.05
    val_every: int = 200
    val_batches: int = 20
    log_every: int = 10
    ckpt_every: int = 500
    sample_every: int = 0           # 0 = only at the end
    sample_rows: int = 4
    max_bad_steps: int = 20         # consecutive non-finite steps before the run stops
    seed: int = 0
    device: str = "auto"
    init_from: str = ""             # start from this saved model directory (or run) with the same architecture
    canonical_share: float = 0.0    # records with several captions: share of steps reading the canonical one
                                    # (``text``, the first); the rest pick uniformly (0 = uniform throughout)
    init_text: bool = True          # with init_from: False = a fresh text side (new BPE on this data, new text
                                    # encoder weights); only the image decoder comes from init_from (Parti)
    freeze: tuple[str, ...] = ()    # parameter-name glob patterns kept frozen, e.g. "blocks.*.attn.*"

    def __post_init__(self):
        require(self.steps >= 1, "train.steps", "must be >= 1")
        require(self.init_text or bool(self.init_from), "train.init_text", "false needs train.init_from")
        require(0 <= self.canonical_share <= 1, "train.canonical_share", "must be in [0, 1]")
        require(all(isinstance(p, str) and p.strip() for p in self.freeze), "train.freeze",
                "must be non-empty parameter-name patterns")
        require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        require(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        require(self.lr > 0, "train.lr", "must be > 0")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        require(0 <= self.cond_dropout < 1, "train.cond_dropout", "must be in [0, 1)")
        require(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1)")
        require(0 < self.val_fraction < 1, "train.val_fraction", "must be in (0, 1)")
        require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = no clipping)")
        require(self.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
        for name in ("val_every", "log_every", "ckpt_every", "warmup_steps", "decay_start", "sample_every",
                     "stream_workers", "shuffle_buffer"):
            require(getattr(self, name) >= 0, f"train.{name}", "must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    model: TransformerConfig = field(default_factory=TransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _run(model: TransformerConfig, **train) -> RunConfig:
    return RunConfig(model=model, train=TrainConfig(**train))


_TINY = dict(dim=64, depth=2, heads=4, mlp_dim=256, dropout=0.0, grid=(8, 8), codebook_size=64)


# -- tiny: tests and CPU demos (seconds) ------------------------------------------------------
@register_preset(FAMILY, "vim-tiny")
def _vim_tiny():
    return _run(TransformerConfig(family="vim", **_TINY), steps=200, batch_size=16, lr=1e-3,
                warmup_steps=20, val_every=100, ckpt_every=100)


@register_preset(FAMILY, "parti-tiny")
def _parti_tiny():
    return _run(TransformerConfig(family="parti", encoder_depth=1, text=TextConfig(vocab_size=256, max_len=32),
                                  **_TINY),
                steps=200, batch_size=16, lr=1e-3, warmup_steps=20, val_every=100, ckpt_every=100)


@register_preset(FAMILY, "unified-tiny")
def _unified_tiny():
    return _run(TransformerConfig(family="unified", text=TextConfig(vocab_size=256, max_len=32), **_TINY),
                steps=200, batch_size=16, lr=1e-3, warmup_steps=20, val_every=100, ckpt_every=100)


# -- small: a few CPU-minutes on digits / shapes ---------------------------------------------
_SMALL = dict(dim=128, depth=4, heads=4, mlp_dim=512, dropout=0.1, grid=(8, 8), codebook_size=512)


@register_preset(FAMILY, "vim-small")
def _vim_small():
    return _run(TransformerConfig(family="vim", **_SMALL), steps=2000, batch_size=32, lr=1e-3,
                warmup_steps=100, val_every=250, ckpt_every=500)


@register_preset(FAMILY, "parti-small")
def _parti_small():
    return _run(TransformerConfig(family="parti", encoder_depth=2, text=TextConfig(vocab_size=512, max_len=32),
                                  **_SMALL),
                steps=2000, batch_size=32, lr=1e-3, warmup_steps=100, val_every=250, ckpt_every=500)


@register_preset(FAMILY, "unified-small")
def _unified_small():
    return _run(TransformerConfig(family="unified", text=TextConfig(vocab_size=512, max_len=32), **_SMALL),
                steps=2000, batch_size=32, lr=1e-3, warmup_steps=100, val_every=250, ckpt_every=500)


# -- the seed's sizes (Table 2 for VIM; Parti 350M ... 20B), seed hyper-parameters ----------------
_SEED_TRAIN = dict(lr=4.5e-5, warmup_steps=5000, schedule="exponential", decay_start=85000, steps=450000,
                   min_lr_ratio=0.025, optimizer="adafactor", batch_size=8, precision="auto",
                   val_every=5000, ckpt_every=5000)


@register_preset(FAMILY, "vim-base")
def _vim_base():  # ~650M: 24 blocks, 16 heads, dim 1536, MLP 6144, dropout 0.1
    return _run(TransformerConfig(family="vim", dim=1536, depth=24, heads=16, mlp_dim=6144, dropout=0.1,
                                  norm="prenorm"), **_SEED_TRAIN)


@register_preset(FAMILY, "vim-large")
def _vim_large():  # ~1.7B: 36 blocks, 32 heads, dim 2048, MLP 8192
    return _run(TransformerConfig(family="vim", dim=2048, depth=36, heads=32, mlp_dim=8192, dropout=0.1),
                **_SEED_TRAIN)


def _parti(dim, heads, mlp, enc, dec):
    return _run(TransformerConfig(family="parti", dim=dim, heads=heads, mlp_dim=mlp, encoder_depth=enc, depth=dec,
                                  dropout=0.1, text=TextConfig(vocab_size=16000, max_len=128)), **_SEED_TRAIN)


@register_preset(FAMILY, "parti-350m")
def _parti_350m():
    return _parti(1024, 16, 4096, 12, 12)


@register_preset(FAMILY, "parti-750m")
def _parti_750m():
    return _parti(1024, 16, 4096, 12, 36)


@register_preset(FAMILY, "parti-3b")
def _parti_3b():
    return _parti(2048, 32, 8192, 12, 36)


@register_preset(FAMILY, "parti-20b")
def _parti_20b():  # the seed: 16 encoder and 64 decoder layers
    return _parti(4096, 64, 16384, 16, 64)


@register_preset(FAMILY, "unified-1.3b")
def _unified_xl():  # ruDALL-E XL's shape: 24 layers, dim 2048, 128 text + 1024 image tokens
    return _run(TransformerConfig(family="unified", dim=2048, depth=24, heads=16, mlp_dim=8192, dropout=0.1,
                                  norm="sandwich", text=TextConfig(vocab_size=16384, max_len=128)), **_SEED_TRAIN)
