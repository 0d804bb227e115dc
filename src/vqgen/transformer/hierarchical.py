"""CogView2's super-resolution transformer: text + low-resolution codes → a high-resolution code grid.

One model serves both of CogView2's super-resolution steps. The stream is::

    [t_0 .. t_{L-1}] [l_0 .. l_{n-1}] [h_0 .. h_{N-1}]
     text (BPE)       low grid (8x8)   high grid (16x16): a code, or [MASK] where it is to be written

and attention is the ``cross_res`` kind of :mod:`vqgen.transformer.masks`: text tokens see the
text; low-resolution tokens see the text and the whole low grid; a high-resolution token sees the
text, the low tokens within ``low_window`` of the low cell under its centre, and the high tokens
within ``window`` of itself (2D local attention, bidirectional). The head predicts the code of
every high cell; the loss counts the masked ones. Each high token's input is its code (or
``[MASK]``, id ``codebook_size``) + its 2D position + the embedding of the low code under its
centre (``parent_embed``: a direct path from the cell's own parent, so a small model on a CPU
budget learns the copy-and-refine part of the task early; the attention still reaches the
neighbours).

Training (``compute_loss``) masks, per sample, every cell with probability ``mask_all`` (direct
super-resolution: one pass from the low codes), else a uniform random fraction in
``[mask_min, 1]`` of the cells (the states LoPAR meets when it rewrites re-masked cells).
Sampling: :mod:`vqgen.sampling.direct_sr` (one pass) and :mod:`vqgen.sampling.lopar`
(re-mask, then local parallel autoregression).

A model may carry its low-resolution stage (``low``, any text-conditioned token model with the
``low_grid`` and ``low_codebook_size`` of this one, sharing its BPE text tokenizer): saved in the
sub-folder ``low/`` of the model's directory, so one ``transformer/`` folder of a pipeline holds
the whole text → 8x8 → 16x16 hierarchy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.config import register_preset, require
from vqgen.errors import VqgenError
from vqgen.io import PretrainedMixin, load_pretrained, register_model
from vqgen.transformer.base import Condition, TextModelMixin, TokenModel, TokenOutput
from vqgen.transformer.config import RunConfig, TextConfig, TrainConfig, TransformerConfig
from vqgen.transformer.layers import Block, PosEmbed, init_weights
from vqgen.transformer.masks import MaskSpec, parent_cells

LOW_DIR = "low"


@dataclass(frozen=True)
class HierarchicalConfig(TransformerConfig):
    """The shared fields (``grid`` and ``codebook_size`` are the high-resolution tokenizer's) plus
    ``low_grid`` / ``low_codebook_size`` (the low-resolution tokenizer's), the local windows
    (``window``: odd side of the high-resolution 2D window; ``low_window``: odd side of the
    cross-resolution window in the low grid), ``parent_embed`` and the training masks
    (``mask_all``: probability that a sample masks every cell; otherwise a uniform fraction in
    ``[mask_min, 1]``)."""

    family_name: ClassVar[str] = "hierarchical"
    family: str = "hierarchical"
    grid: tuple[int, ...] = (16, 16)
    codebook_size: int = 512
    text: TextConfig = field(default_factory=lambda: TextConfig(max_len=32))
    low_grid: tuple[int, ...] = (8, 8)
    low_codebook_size: int = 256
    window: int = 5
    low_window: int = 3
    parent_embed: bool = True
    mask_all: float = 0.3
    mask_min: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        require(len(self.low_grid) == len(self.grid) and all(1 <= a <= b for a, b in zip(self.low_grid, self.grid)),
                "low_grid", f"must have the grid's axes, none larger than the grid {tuple(self.grid)}")
        require(self.low_codebook_size >= 2, "low_codebook_size", "must be >= 2")
        for name in ("window", "low_window"):
            k = getattr(self, name)
            require(isinstance(k, int) and k >= 1 and k % 2 == 1, name, f"must be an odd width >= 1, got {k!r}")
        require(0.0 <= self.mask_all <= 1.0, "mask_all", "must be a probability in [0, 1]")
        require(0.0 < self.mask_min <= 1.0, "mask_min", "must be in (0, 1]")
        require(self.text.encoder == "trained", "text.encoder", "the super-resolution stream uses BPE text tokens")


@register_model("hierarchical")
class HierarchicalSR(TextModelMixin, TokenModel, PretrainedMixin):
    """The super-resolution transformer (see the module doc), optionally carrying its ``low`` stage."""

    config_class = HierarchicalConfig

    def __init__(self, config: HierarchicalConfig, low: TokenModel | None = None):
        super().__init__()
        if not isinstance(config, HierarchicalConfig):
            raise VqgenError(f"HierarchicalSR needs a HierarchicalConfig, got family {config.family!r}")
        self.config = config
        self.cond_kind = "text"
        c, d = config, config.dim
        self.text_len = c.text.max_len
        self.text_emb = nn.Embedding(c.text.vocab_size, d)
        self.text_pos = nn.Parameter(torch.zeros(c.text.max_len, d))
        self.low_emb = nn.Embedding(c.low_codebook_size, d)
        self.low_pos = PosEmbed(c.low_grid, d)
        self.tok_emb = nn.Embedding(c.codebook_size + 1, d)  # the last id is [MASK]
        self.pos_emb = PosEmbed(c.grid, d)
        self.parent_emb = nn.Embedding(c.low_codebook_size, d) if c.parent_embed else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(d, c.heads, c.mlp_dim, c.dropout, c.norm) for _ in range(c.depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, c.codebook_size, bias=False)
        init_weights(self, c.depth)
        nn.init.normal_(self.text_pos, 0.0, 0.02)
        self.spec = MaskSpec("cross_res", tuple(c.grid), text_len=self.text_len, window=c.window,
                             low_grid=tuple(c.low_grid), low_window=c.low_window)
        self.register_buffer("parent", parent_cells(tuple(c.grid), tuple(c.low_grid)), persistent=False)  # (N,)
        self._masks: dict[str, torch.Tensor] = {}
        self.low: TokenModel | None = None
        if low is not None:
            self.attach_low(low)

    # -- facts --------------------------------------------------------------------------------
    @property
    def mask_id(self) -> int:
        """The input id of a cell still to be written."""
        return self.config.codebook_size

    @property
    def low_seq_len(self) -> int:
        return math.prod(self.config.low_grid)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def attach_low(self, low: TokenModel) -> "HierarchicalSR":
        """Make ``low`` this model's low-resolution stage (checked: grid, codebook, text, tokenizer)."""
        c = self.config
        if getattr(low, "cond_kind", None) != "text":
            raise VqgenError(f"the low-resolution stage must be text-conditioned, got {type(low).__name__}")
        if tuple(low.grid) != tuple(c.low_grid) or low.codebook_size != c.low_codebook_size:
            raise VqgenError(f"the low-resolution stage writes {tuple(low.grid)} codes of {low.codebook_size}, this "
                             f"model reads {tuple(c.low_grid)} codes of {c.low_codebook_size}")
        lt = low.config.text
        if lt.encoder != "trained" or lt.max_len != c.text.max_len or lt.vocab_size != c.text.vocab_size:
            raise VqgenError("the low-resolution stage must use the same BPE text tokens as this model "
                             f"(max_len {c.text.max_len}, vocab {c.text.vocab_size})")
        mine, theirs = self.text_tokenizer, getattr(low, "text_tokenizer", None)
        if mine is not None and theirs is not None and mine.tok.to_str() != theirs.tok.to_str():
            raise VqgenError("the low-resolution stage has another text tokenizer than this model")
        if mine is None:
            self.text_tokenizer = theirs
        self.low = low
        return self

    # -- the network ------------------------------------------------------------------------
    def _mask(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._masks:
            self._masks[key] = self.spec.dense(device)  # (T + n + N, T + n + N) bool
        return self._masks[key]

    def sr_logits(self, low: torch.Tensor, high: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        """Logits (B, N, V) of every high cell from the text, the low codes ``low`` (B, n) or
        (B, *low_grid) and the high inputs ``high`` (B, N) or (B, *grid): codes, ``mask_id`` where masked."""
        low, high = self._flat(low, self.config.low_grid), self._flat(high, self.grid)
        b = high.shape[0]
        cond = self.with_text(cond, b, high.device)
        if cond.text_ids.shape[1] != self.text_len:
            raise VqgenError(f"text must have exactly text.max_len={self.text_len} tokens, got {cond.text_ids.shape[1]}")
        dev = high.device
        text = self.text_emb(cond.text_ids) + self.text_pos  # (B, L, D)
        lo = self.low_emb(low) + self.low_pos(torch.arange(low.shape[1], device=dev))  # (B, n, D)
        hi = self.tok_emb(high) + self.pos_emb(torch.arange(high.shape[1], device=dev))  # (B, N, D)
        if self.parent_emb is not None:
            hi = hi + self.parent_emb(low[:, self.parent])  # (B, N, D): the low code under each cell
        x = self.drop(torch.cat([text, lo, hi], 1))  # (B, L + n + N, D)
        mask = self._mask(dev)
        for blk in self.blocks:
            x = blk(x, mask=mask)
        return self.head(self.norm(x[:, self.spec.grid_start:])).float()  # (B, N, V)

    def _flat(self, codes: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(grid)
        if codes.dim() > 2:
            codes = codes.flatten(1)
        if codes.dim() != 2 or codes.shape[1] != n:
            raise VqgenError(f"codes must be (B, {', '.join(map(str, grid))}) or (B, {n}), got {tuple(codes.shape)}")
        return codes.long()

    def forward(self, codes: torch.Tensor, cond: Condition | None = None, low: torch.Tensor | None = None) -> TokenOutput:
        """Logits of every high cell given ``low`` codes and the high inputs ``codes`` (mask ids allowed)."""
        if low is None:
            raise VqgenError("the super-resolution model needs the low-resolution codes (low=...)")
        return TokenOutput(logits=self.sr_logits(low, codes, cond))

    def training_mask(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Random masked cells (B, N) bool: every cell with probability ``mask_all``, else a uniform
        fraction in ``[mask_min, 1]`` of them (at least one per row)."""
        c, n = self.config, self.image_seq_len
        every = torch.rand(batch, generator=generator) < c.mask_all  # (B,)
        frac = c.mask_min + (1 - c.mask_min) * torch.rand(batch, generator=generator)  # (B,)
        u = torch.rand(batch, n, generator=generator)  # (B, N)
        masked = (u < frac[:, None]) | every[:, None] | (u == u.min(1, keepdim=True).values)  # (B, N)
        return masked.to(device)

    def compute_loss(self, codes: torch.Tensor, cond: Condition | None = None, low: torch.Tensor | None = None,
                     masked: torch.Tensor | None = None, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, dict]:
        """Cross-entropy over the masked cells (``masked`` (B, N) bool, random by default);
        metrics ``image_loss`` and, over the rows with every cell masked, ``dsr_loss``."""
        if low is None:
            raise VqgenError("the super-resolution loss needs the low-resolution codes (low=...)")
        codes = self._flat(codes, self.grid)
        if masked is None:
            masked = self.training_mask(codes.shape[0], generator, codes.device)
        masked = masked.reshape(codes.shape).bool()
        logits = self.sr_logits(low, codes.masked_fill(masked, self.mask_id), cond)  # (B, N, V)
        nll = F.cross_entropy(logits.transpose(1, 2), codes, reduction="none")  # (B, N)
        loss = (nll * masked).sum() / masked.sum().clamp(min=1)
        metrics = {"image_loss": loss.detach()}
        full = masked.all(1)  # (B,)
        if bool(full.any()):
            metrics["dsr_loss"] = nll[full].mean().detach()
        return loss, metrics

    # -- not an autoregressive model ----------------------------------------------------------
    def prefill(self, cond, cache):
        raise VqgenError("a hierarchical model samples with the lopar or direct_sr decoder, not token by token")

    decode_step = prefill

    # -- save / load ------------------------------------------------------------------------------
    def save_pretrained(self, directory):
        """The super-resolution weights (``config.json``, ``model.safetensors``, ``tokenizer.json``)
        and, when attached, the low-resolution stage in ``low/``."""
        low = self._modules.pop("low", None)
        self.low = None
        try:
            directory = super().save_pretrained(directory)
        finally:
            self.low = low
        if low is not None:
            low.save_pretrained(Path(directory) / LOW_DIR)
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        model = super().from_pretrained(directory, device=device)
        sub = Path(directory) / LOW_DIR
        if sub.is_dir():
            model.attach_low(load_pretrained(sub, device=device))
        return model


# -- presets: ``vqgen hierarchical train --preset NAME`` ---------------------------------------------
PRESETS = "hierarchical"


@register_preset(PRESETS, "tiny")
def _tiny() -> RunConfig:
    return RunConfig(model=TransformerConfig(family="hierarchical", dim=32, depth=1, heads=2, mlp_dim=64, dropout=0.0,
                                             grid=(4, 4), codebook_size=64, low_grid=(2, 2), low_codebook_size=16,
                                             window=3, low_window=1, text=TextConfig(vocab_size=64, max_len=32)),
                     train=TrainConfig(steps=20, batch_size=4, lr=1e-3, warmup_steps=2, val_every=10, ckpt_every=10,
                                       log_every=5, cond_dropout=0.0))


@register_preset(PRESETS, "small")
def _small() -> RunConfig:
    return RunConfig(model=TransformerConfig(family="hierarchical", dim=128, depth=4, heads=4, mlp_dim=512, dropout=0.0,
                                             text=TextConfig(vocab_size=512, max_len=32)),
                     train=TrainConfig(steps=1000, batch_size=32, lr=1e-3, warmup_steps=50, val_every=100,
                                       ckpt_every=100, log_every=10, cond_dropout=0.0))
