"""A small CLIP-style dual encoder that scores how well an image matches a caption.

Image tower: a convolutional stem (stride-2 stages) whose feature map becomes tokens with a
learned 2D position embedding, then a few transformer blocks; the ``[CLS]`` token is projected to
the joint space. Text tower: a BPE tokenizer trained on the captions (:mod:`vqgen.text.bpe`),
token + position embeddings, transformer blocks with a padding mask, masked mean pooling,
projection. With ``text_encoder="pretrained"`` the text tower reads a frozen Hugging Face encoder
instead (``pretrained_dir``, e.g. MiniLM, with its own tokenizer; never trained, never saved):
its hidden states are layer-normed and projected to the tower width, then the same trained blocks,
pooling and projection follow, so unfamiliar words the encoder knows land near their synonyms.
Both embeddings are l2-normalised; the score is their cosine similarity, and training
(:mod:`vqgen.rerank.train`) uses a symmetric InfoNCE loss with a learned temperature.

    reranker = ClipReranker.from_pretrained("RUN/model")       # also reads RUN/model/tokenizer.json
    scores = reranker.score(images, ["a red circle"] * 8)       # (8,)
    best = reranker.select(images, "a red circle", k=2)         # indices of the two best
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.config import register_preset, require
from vqgen.errors import VqgenError
from vqgen.io import PretrainedMixin, register_model
from vqgen.text.bpe import TOKENIZER_NAME, TextTokenizer
from vqgen.transformer.layers import Block, PosEmbed

FAMILY = "clip_reranker"


@dataclass(frozen=True)
class ClipConfig:
    # fields added after rerankers were shipped: their defaults rebuild those models exactly
    quiet_defaults: ClassVar[tuple[str, ...]] = ("text_encoder", "pretrained_dir")
    image_size: int = 64  # images of any size are resized to this
    channels: tuple[int, ...] = (32, 64, 128)  # conv stem: one stride-2 stage per entry
    width: int = 128  # transformer width of both towers
    heads: int = 4
    mlp_dim: int = 256
    image_depth: int = 2
    text_depth: int = 2
    vocab_size: int = 512  # set to the trained BPE tokenizer's size
    max_len: int = 32  # text tokens, [BOS] and [EOS] included
    embed_dim: int = 128  # joint embedding space
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    text_encoder: Literal["trained", "pretrained"] = "trained"  # pretrained: a frozen HF encoder
    pretrained_dir: str | None = None  # its local directory (nothing is downloaded)

    def __post_init__(self):
        require(len(self.channels) >= 1, "channels", "needs at least one stage")
        require(self.image_size % (2 ** len(self.channels)) == 0, "image_size",
                f"must be divisible by 2**len(channels) = {2 ** len(self.channels)}")
        require(self.width % self.heads == 0, "width", "must be divisible by heads")
        require(self.vocab_size > 4, "vocab_size", "must exceed the 4 special tokens")
        require(self.max_len >= 3, "max_len", "must be >= 3")
        require(0 < self.init_temperature < 1, "init_temperature", "must be in (0, 1)")
        require(self.text_encoder != "pretrained" or bool(self.pretrained_dir), "pretrained_dir",
                "is required when text_encoder=pretrained")

    @property
    def grid(self) -> int:
        return self.image_size // (2 ** len(self.channels))


@register_preset(FAMILY, "tiny")
def _tiny() -> ClipConfig:
    """32x32 images, width 32, one block a tower: for tests (seconds)."""
    return ClipConfig(image_size=32, channels=(16, 32), width=32, heads=2, mlp_dim=64, image_depth=1,
                      text_depth=1, vocab_size=128, max_len=24, embed_dim=32)


@register_preset(FAMILY, "small")
def _small() -> ClipConfig:
    """64x64 images → 8x8 tokens, width 128, two blocks a tower (~0.9M parameters): a CPU in minutes."""
    return ClipConfig()


def _group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ImageTower(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        layers, c_in = [], 3
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), _group_norm(c), nn.GELU(),
                       nn.Conv2d(c, c, 3, padding=1), _group_norm(c), nn.GELU()]
            c_in = c
        self.stem = nn.Sequential(*layers)
        self.to_tokens = nn.Conv2d(c_in, cfg.width, 1)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos = PosEmbed((cfg.grid, cfg.grid), cfg.width)
        nn.init.normal_(self.pos.row, std=0.02)
        nn.init.normal_(self.pos.col, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_dim) for _ in range(cfg.image_depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.to_tokens(self.stem(x)).flatten(2).transpose(1, 2)  # (B, g*g, W)
        t = t + self.pos(torch.arange(t.shape[1], device=x.device))  # (B, g*g, W)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)  # (B, 1 + g*g, W)
        for block in self.blocks:
            t = block(t)
        return self.proj(self.norm(t[:, 0]))  # (B, E)


class TextTower(nn.Module):
    """Token embeddings (trained BPE) or the frozen encoder's layer-normed, projected hidden
    states, then trained blocks with a padding mask, masked mean pooling and a projection."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.frozen = None
        if cfg.text_encoder == "pretrained":
            from vqgen.text.encoder import FrozenTextEncoder

            self.frozen = FrozenTextEncoder(cfg.pretrained_dir)  # a plain object: not a submodule
            self.in_norm = nn.LayerNorm(self.frozen.hidden_size)
            self.in_proj = nn.Linear(self.frozen.hidden_size, cfg.width)
        else:
            self.emb = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_dim) for _ in range(cfg.text_depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.frozen is not None:
            t = self.in_proj(self.in_norm(self.frozen(ids, mask)))  # (B, L, W); no gradient reaches the encoder
        else:
            t = self.emb(ids)  # (B, L, W)
        t = t + self.pos[: ids.shape[1]]  # (B, L, W)
        attn = mask[:, None, None, :]  # (B, 1, 1, L): True = attend
        for block in self.blocks:
            t = block(t, mask=attn)
        t = self.norm(t)
        m = mask.unsqueeze(-1).to(t.dtype)  # (B, L, 1)
        pooled = (t * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, W)
        return self.proj(pooled)  # (B, E)


@register_model("clip_reranker")
class ClipReranker(nn.Module, PretrainedMixin):
    """Contrastive text–image scorer. Its text tokenizer (``self.text_tokenizer``) is saved as
    ``tokenizer.json`` beside the weights and restored by ``from_pretrained``; a frozen text
    tower uses the pretrained encoder's own tokenizer instead (no ``tokenizer.json``)."""

    config_class = ClipConfig

    def __init__(self, config: ClipConfig, text_tokenizer: TextTokenizer | None = None):
        super().__init__()
        self.config = config
        self.image_tower = ImageTower(config)
        self.text_tower = TextTower(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.text_tokenizer = text_tokenizer

    # ----------------------------------------------------------------------------- embeddings
    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise VqgenError(f"expected images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        size = self.config.image_size
        x = images.to(self.logit_scale.device, torch.float32)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x * 2.0 - 1.0  # (B, 3, S, S) in [-1, 1]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] → unit embeddings (B, E)."""
        return F.normalize(self.image_tower(self._prepare(images)), dim=-1)

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) and mask (B, L) → unit embeddings (B, E)."""
        return F.normalize(self.text_tower(ids, mask), dim=-1)

    @property
    def frozen_text(self) -> bool:
        """True when the text tower reads a frozen pretrained encoder."""
        return self.text_tower.frozen is not None

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → ids (B, L) long and mask (B, L) bool on the model's device."""
        if self.text_tokenizer is None and not self.frozen_text:
            raise VqgenError("this reranker has no text tokenizer (load it with from_pretrained)")
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise VqgenError("every text to score must be a non-empty string")
        encode = self.text_tower.frozen.encode if self.frozen_text else self.text_tokenizer.encode
        ids, mask = encode(list(texts), self.config.max_len)
        device = self.logit_scale.device
        return ids.to(device), mask.to(device)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Captions → unit embeddings (B, E)."""
        return self.encode_ids(*self.tokenize(texts))

    def temperature(self) -> float:
        return 1.0 / float(self.logit_scale.detach().exp())

    def clamped_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    # ----------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def similarity(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarity of every image with every text: (B_images, B_texts)."""
        return self.encode_images(images) @ self.encode_texts(texts).T  # (B_i, B_t)

    @torch.no_grad()
    def score(self, images: torch.Tensor, texts: str | list[str]) -> torch.Tensor:
        """Cosine similarity of image i with text i (B,), higher = better match.

        ``texts`` is one caption per image, or a single string used for every image.
        """
        if isinstance(texts, str):
            texts = [texts] * images.shape[0]
        if len(texts) != images.shape[0]:
            raise VqgenError(f"score needs one text per image: got {images.shape[0]} images, {len(texts)} texts")
        return (self.encode_images(images) * self.encode_texts(list(texts))).sum(-1)  # (B,)

    @torch.no_grad()
    def select(self, images: torch.Tensor, texts: str | list[str], k: int) -> torch.Tensor:
        """Indices (k,) of the ``k`` best-scoring images, best first."""
        if not 1 <= k <= images.shape[0]:
            raise VqgenError(f"select needs 1 <= k <= {images.shape[0]} (the number of images), got {k}")
        return torch.topk(self.score(images, texts), k).indices  # (k,)

    # ----------------------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        """config.json + model.safetensors + tokenizer.json (none with a frozen text tower)."""
        if self.text_tokenizer is None and not self.frozen_text:
            raise VqgenError("cannot save a reranker without its text tokenizer")
        directory = super().save_pretrained(directory)
        if not self.frozen_text:
            self.text_tokenizer.save(Path(directory) / TOKENIZER_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ClipReranker":
        from vqgen.io import CONFIG_NAME, read_json_object

        path, config = Path(directory) / TOKENIZER_NAME, Path(directory) / CONFIG_NAME
        if config.is_file() and read_json_object(config).get("text_encoder") == "pretrained":  # frozen text tower
            return super().from_pretrained(directory, device=device)
        if not path.is_file():
            raise VqgenError(f"{directory} has no {TOKENIZER_NAME}: not a saved reranker")
        tokenizer = TextTokenizer.load(path)
        model = super().from_pretrained(directory, device=device)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise VqgenError(f"{path} has {tokenizer.vocab_size} tokens, more than the model's "
                             f"vocab_size {model.config.vocab_size}")
        model.text_tokenizer = tokenizer
        return model


def check_reranker(model, where) -> object:
    """``model`` if it can rerank: a :class:`ClipReranker`, or a transformer that scores captions
    (unified with ``image_first=true`` or CogLM-trained: CogView's caption-perplexity
    post-selection); else a one-line error."""
    if isinstance(model, ClipReranker):
        return model
    if getattr(model, "scores_captions", False):  # a text-after-image or CogLM-trained transformer
        return model
    raise VqgenError(f"{where} holds a {type(model).__name__}, not a reranker (a CLIP reranker, or a "
                     "transformer that scores captions: unified with image_first=true or coglm_mix > 0)")
