"""What the ViT and CNN tokenizers share: the interface, decoder conditioning and the output head.

Both families map images (B, 3, H, W) in [0, 1] to a grid of codes (B, h, w) and back. The
decoder predicts, per pixel, the mean (through a sigmoid) and the log-scale of a logit-Laplace
distribution; the reconstruction is that mean mapped back to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vqgen.config import require
from vqgen.errors import VqgenError
from vqgen.io import PretrainedMixin
from vqgen.tokenizer.losses import logit_laplace_nll, mean_from_logits
from vqgen.tokenizer.quantizer import QuantizerOutput, VectorQuantizer


@dataclass(frozen=True)
class CondConfig:
    """Optional decoder conditioning (the patent's claims 31-43): a class label or a text embedding."""

    kind: Literal["none", "class", "text"] = "none"
    num_classes: int = 0  # for kind=class
    text_dim: int = 0  # for kind=text: width of the (pooled or per-token) text embedding

    def __post_init__(self):
        require(self.kind != "class" or self.num_classes > 0, "cond.num_classes", "must be > 0 for kind=class")
        require(self.kind != "text" or self.text_dim > 0, "cond.text_dim", "must be > 0 for kind=text")


class CondEmbedding(nn.Module):
    """Turns a condition into tokens (B, T, W): a label (B,) long, or a text embedding (B, Dt) / (B, T, Dt)."""

    def __init__(self, cfg: CondConfig, width: int):
        super().__init__()
        self.kind = cfg.kind
        if cfg.kind == "class":
            self.proj = nn.Embedding(cfg.num_classes, width)
        else:
            self.proj = nn.Linear(cfg.text_dim, width)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if self.kind == "class":
            if cond.dtype not in (torch.int32, torch.int64) or cond.dim() != 1:
                raise VqgenError("a class-conditioned tokenizer needs cond = labels (B,) of integers")
            if cond.numel() and (cond.min() < 0 or cond.max() >= self.proj.num_embeddings):
                raise VqgenError(f"class label out of range [0, {self.proj.num_embeddings})")
            return self.proj(cond)[:, None]  # (B, 1, W)
        if not cond.is_floating_point() or cond.dim() not in (2, 3):
            raise VqgenError("a text-conditioned tokenizer needs cond = a text embedding (B, D) or (B, T, D)")
        tokens = self.proj(cond)  # (B, W) or (B, T, W)
        return tokens[:, None] if tokens.dim() == 2 else tokens  # (B, T, W)


@dataclass
class TokenizerOutput:
    """What ``forward`` returns; ``losses`` are unweighted (``vq``, ``l2``, ``logit_laplace``)."""

    reconstruction: torch.Tensor  # (B, 3, H, W) in [0, 1]
    codes: torch.Tensor  # (B, h, w) long
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    lookup: torch.Tensor | None = None  # (B, h*w, d) encoded vectors in the lookup space


class VQTokenizer(nn.Module, PretrainedMixin):
    """Base of the ViT-VQGAN and CNN-VQGAN tokenizers.

    Subclasses build ``self.quantizer`` and ``self.cond_embed`` (or None) and implement
    ``encode_features(x (B,3,H,W) in [-1,1]) -> (B, h*w, D_enc)`` and
    ``decode_features(q (B, h*w, D_dec), cond_tokens (B,T,W) | None) -> (B, 6, H, W)``
    (3 mean logits, 3 log-scales).
    """

    quantizer: VectorQuantizer
    cond_embed: CondEmbedding | None
    # parameters that decide the codes (encoder, lookup projection, codebook): frozen by decoder-only training
    ENCODER_SIDE = ("enc_pos", "patch_embed.", "encoder.", "quantizer.codebook", "quantizer.down.")

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Freeze everything that decides the codes; return the rest (decoder, up-projection, condition)."""
        trainable = []
        for name, p in self.named_parameters():
            p.requires_grad_(not name.startswith(self.ENCODER_SIDE))
            if p.requires_grad:
                trainable.append(p)
        return trainable

    @property
    def grid_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
            raise VqgenError(f"expected images (B, 3, {size}, {size}), got {tuple(images.shape)}")

    def _cond_tokens(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        if self.cond_embed is None:
            if cond is not None:
                raise VqgenError("this tokenizer was not trained with a condition; pass cond=None")
            return None
        if cond is None:
            raise VqgenError(f"this tokenizer's decoder is conditioned on a {self.config.cond.kind}; pass cond")
        return self.cond_embed(cond)

    def codebook_embeddings(self) -> torch.Tensor:
        """The lookup vectors (K, d), l2-normalized when the quantizer normalizes."""
        return self.quantizer.codebook_embeddings()

    def _quantize(self, images: torch.Tensor) -> QuantizerOutput:
        self._check_images(images)
        h = self.encode_features(images * 2.0 - 1.0)  # (B, N, D_enc)
        return self.quantizer(h)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] → codes (B, h, w) long. The encoder ignores ``cond``."""
        self._check_images(images)
        z = self.quantizer.to_lookup(self.encode_features(images * 2.0 - 1.0))  # (B, N, d)
        return self.quantizer.nearest(z).reshape(images.shape[0], *self.grid_size)  # (B, h, w)

    def decode_logits(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (B, h, w) → decoder output (B, 6, H, W): mean logits and log-scales."""
        if codes.dim() != 3 or tuple(codes.shape[1:]) != self.grid_size:
            raise VqgenError(f"expected codes (B, {self.grid_size[0]}, {self.grid_size[1]}), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.quantizer.codebook_size):
            raise VqgenError(f"codes out of range [0, {self.config.quantizer.codebook_size})")
        q = self.quantizer.embed_codes(codes.reshape(codes.shape[0], -1).long())  # (B, N, D_dec)
        return self.decode_features(q, self._cond_tokens(cond))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (B, h, w) long → images (B, 3, H, W) in [0, 1]."""
        return mean_from_logits(self.decode_logits(codes, cond)[:, :3].float())

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> TokenizerOutput:
        """Encode, quantize, decode; returns the reconstruction, codes and unweighted losses."""
        qo = self._quantize(images)
        out = self.decode_features(qo.quantized, self._cond_tokens(cond)).float()  # (B, 6, H, W)
        mean_logits, log_scale = out[:, :3], out[:, 3:]
        recon = mean_from_logits(mean_logits)  # (B, 3, H, W)
        target = images.float()
        losses = {
            "vq": qo.loss,
            "l2": (recon - target).pow(2).mean(),
            "logit_laplace": logit_laplace_nll(mean_logits, log_scale, target),
        }
        codes = qo.codes.reshape(images.shape[0], *self.grid_size)  # (B, h, w)
        return TokenizerOutput(reconstruction=recon, codes=codes, losses=losses, lookup=qo.lookup)

