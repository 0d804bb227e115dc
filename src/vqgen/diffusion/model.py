"""Imagen's text-conditional U-Net: one model class for the base model (text → image) and the
super-resolution models (text + low-resolution image → image), built on diffusers'
``UNet2DConditionModel`` blocks.

Text enters twice, as in Imagen: the whole sequence of (layer-normed) text embeddings through
cross-attention at the resolutions ``cross_attention`` marks and in the middle block, and their
masked mean (layer-normed) added to the timestep embedding (diffusers' ``projection`` class
embedding: an MLP of the pooled vector summed with the timestep embedding). The text embeddings
come from a frozen pretrained encoder (``text.encoder=pretrained``, e.g. MiniLM from its local
package directory) or from a small BPE transformer trained with the model (``trained``).

A super-resolution model (``sr_scale`` 2 or 4) also takes the low-resolution image, corrupted
by forward-process noise at an augmentation level ``aug_level`` in [0, 1]
(:func:`augment_low_res`; level 0 leaves it as it is), upsampled bicubically and concatenated to
its noisy input; the level is embedded like a timestep and joins the pooled text vector in the
class embedding (Imagen's noise-conditioning augmentation). ``self_attention=false`` keeps only
the text cross-attention in the attention blocks (Imagen's SR models drop self-attention).

    model = DiffusionUNet(get_preset("diffusion", "tiny"))
    text, mask = model.encode_prompts(["a red circle"])
    eps = model(x_t, t, text, mask)                         # (B, 3, S, S)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.config import register_preset, require
from vqgen.errors import VqgenError
from vqgen.io import PretrainedMixin, register_model
from vqgen.transformer.base import TextModelMixin
from vqgen.transformer.config import TextConfig

FAMILY = "diffusion"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass(frozen=True)
class DiffusionConfig:
    """A U-Net of ``len(channels)`` resolution levels (each halves the size, the last excepted)."""

    image_size: int = 32  # side of the images the model writes
    sr_scale: int = 1  # 1: base model (text → image); 2 or 4: super-resolution from image_size // sr_scale
    channels: tuple[int, ...] = (32, 64)
    cross_attention: tuple[bool, ...] = (False, True)  # per level: attention blocks with text cross-attention
    self_attention: bool = True  # false: attention blocks hold cross-attention only (Imagen's SR U-Nets)
    layers_per_block: int = 1
    heads: int = 4
    cond_dim: int = 64  # width of the projected text sequence and of the pooled text vector
    norm_groups: int = 8
    text: TextConfig = field(default_factory=lambda: TextConfig(max_len=24))
    text_dim: int = 64  # trained text encoder: width
    text_depth: int = 1  # trained text encoder: transformer layers
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"

    def __post_init__(self):
        require(self.image_size >= 8, "image_size", "must be >= 8")
        require(self.sr_scale in (1, 2, 4), "sr_scale", "must be 1 (base model), 2 or 4 (super-resolution)")
        require(self.image_size % self.sr_scale == 0, "sr_scale", "must divide image_size")
        require(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "channels", "must be positive")
        require(len(self.cross_attention) == len(self.channels), "cross_attention", "needs one flag per level")
        require(self.image_size % 2 ** (len(self.channels) - 1) == 0, "image_size",
                f"must be divisible by {2 ** (len(self.channels) - 1)} ({len(self.channels)} levels)")
        require(all(c % self.norm_groups == 0 for c in self.channels), "norm_groups", "must divide every width")
        require(all(c % self.heads == 0 for c in self.channels), "heads", "must divide every width")
        require(self.layers_per_block >= 1, "layers_per_block", "must be >= 1")
        require(self.cond_dim >= 1 and self.text_dim >= 1, "cond_dim", "must be >= 1")
        require(self.text_dim % 4 == 0, "text_dim", "must be a multiple of 4 (4 heads)")
        require(self.text_depth >= 1, "text_depth", "must be >= 1")
        require(self.num_train_timesteps >= 2, "num_train_timesteps", "must be >= 2")
        require(self.beta_schedule in BETA_SCHEDULES, "beta_schedule", f"must be one of {', '.join(BETA_SCHEDULES)}")

    @property
    def low_res_size(self) -> int:
        return self.image_size // self.sr_scale


@register_preset(FAMILY, "tiny")
def _tiny() -> DiffusionConfig:
    """32 px, two levels of 32/64 channels (~1M parameters): the fresh-clone path and tests."""
    return DiffusionConfig()


@register_preset(FAMILY, "base-small")
def _base_small() -> DiffusionConfig:
    """32 px, three levels of 32/64/96 channels, cross-attention at 16 and 8 px (~2.8M parameters);
    48 text tokens (the suite's long descriptions run to ~45)."""
    return DiffusionConfig(channels=(32, 64, 96), cross_attention=(False, True, True), text=TextConfig(max_len=48))


@register_preset(FAMILY, "base-64")
def _base_64() -> DiffusionConfig:
    """64 px, four levels of 32/64/96/128 channels (the Imagen base resolution)."""
    return DiffusionConfig(image_size=64, channels=(32, 64, 96, 128), cross_attention=(False, False, True, True),
                           text=TextConfig(max_len=48))


@register_preset(FAMILY, "sr-tiny")
def _sr_tiny() -> DiffusionConfig:
    """x2 super-resolution 32 → 64 px, cross-attention only (no self-attention), for tests and CPU runs."""
    return DiffusionConfig(image_size=64, sr_scale=2, channels=(32, 32, 64), cross_attention=(False, False, True),
                           self_attention=False)


@register_preset(FAMILY, "sr-128")
def _sr_128() -> DiffusionConfig:
    """x2 super-resolution 64 → 128 px (Imagen's first SR stage, scaled down)."""
    return DiffusionConfig(image_size=128, sr_scale=2, channels=(32, 32, 64, 96),
                           cross_attention=(False, False, False, True), self_attention=False)


def aug_alpha_bar(level: torch.Tensor) -> torch.Tensor:
    """Signal fraction ᾱ of noise-augmentation ``level`` in [0, 1]: cos²(π/2 · level) (the cosine
    forward process, continuous in the level; exactly 1 at level 0, 0 at level 1)."""
    return torch.cos(level.float().clamp(0, 1) * (math.pi / 2)) ** 2


def augment_low_res(low: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward-process corruption of low-resolution images (B, 3, h, w) in [-1, 1] at per-row
    ``level`` (B,): √ᾱ · low + √(1 − ᾱ) · noise. Level 0 returns ``low`` unchanged."""
    a = aug_alpha_bar(level).to(low)[:, None, None, None]  # (B, 1, 1, 1)
    return a.sqrt() * low + (1 - a).sqrt() * noise  # (B, 3, h, w)


class TrainedTextEncoder(nn.Module):
    """The fallback text encoder: BPE ids → embeddings + positions → a small transformer."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, depth: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, L, D)
        return self.layers(x, src_key_padding_mask=~attend)  # (B, L, D)


@register_model("diffusion_unet")
class DiffusionUNet(TextModelMixin, nn.Module, PretrainedMixin):
    """ε-prediction U-Net: ``(x_t (B, 3, S, S), t (B,), text, mask[, low_res, aug_level]) → ε̂``."""

    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel

        from vqgen.text.encoder import pretrained_hidden_size

        self.config = c = config
        if c.text.encoder == "pretrained":
            hidden = pretrained_hidden_size(c.text.pretrained_dir)
            self.text_encoder = None
        else:
            hidden = c.text_dim
            self.text_encoder = TrainedTextEncoder(c.text.vocab_size, c.text.max_len, c.text_dim, c.text_depth)
        self.text_norm = nn.LayerNorm(hidden)  # Imagen: layer norm on the text embeddings (attention...)
        self.text_proj = nn.Linear(hidden, c.cond_dim)
        self.pool_norm = nn.LayerNorm(hidden)  # ... and on the pooled vector
        self.pool_proj = nn.Linear(hidden, c.cond_dim)
        sr = c.sr_scale > 1
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in c.cross_attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(c.cross_attention))
        self.unet = UNet2DConditionModel(
            sample_size=c.image_size, in_channels=6 if sr else 3, out_channels=3, down_block_types=down,
            up_block_types=up, block_out_channels=tuple(c.channels), layers_per_block=c.layers_per_block,
            norm_num_groups=c.norm_groups, cross_attention_dim=c.cond_dim, attention_head_dim=c.heads,
            only_cross_attention=not c.self_attention, mid_block_only_cross_attention=not c.self_attention,
            class_embed_type="projection", projection_class_embeddings_input_dim=c.cond_dim * (2 if sr else 1))

    # -- text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, texts: list[str | None], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → (text, mask): frozen-encoder hidden states (B, L, H) float, or BPE ids (B, L)
        long for the trained encoder; mask (B, L) bool. None/"" is the null text (mask all False)."""
        ids, mask = self.tokenize(texts)  # (B, L) x2
        device = device if device is not None else self.device
        ids, mask = ids.to(device), mask.to(device)
        if self.text_encoder is None:
            return self.frozen_encoder(ids, mask), mask  # (B, L, H)
        return ids, mask

    def share_text_encoder(self, other: "DiffusionUNet") -> None:
        """Use ``other``'s frozen encoder (loaded once, one memo): the EMA copy in training."""
        if self.config.text.encoder == "pretrained":
            self.__dict__["_frozen_encoder"] = other.frozen_encoder

    def null_text(self, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The null text (classifier-free guidance's unconditional input) shaped like ``text``."""
        return torch.zeros_like(text), torch.zeros_like(mask)

    def text_features(self, text: torch.Tensor, mask: torch.Tensor):
        """(sequence (B, L, cond_dim), pooled (B, cond_dim), attention mask (B, L)). Null rows
        (mask all False) become zeros before the norms and attend to their first slot only."""
        attend = mask.clone()
        attend[~mask.any(1), 0] = True  # (B, L): a row must attend to something
        hidden = self.text_encoder(text, attend) if self.text_encoder is not None else text.float()  # (B, L, H)
        hidden = hidden * mask[..., None]  # (B, L, H)
        pooled = hidden.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, H)
        seq = self.text_proj(self.text_norm(hidden))  # (B, L, cond_dim)
        return seq, self.pool_proj(self.pool_norm(pooled)), attend

    # -- the network --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def aug_features(self, level: torch.Tensor) -> torch.Tensor:
        """Sinusoidal embedding (B, cond_dim) of the augmentation level in [0, 1] (as a timestep in [0, 1000])."""
        from diffusers.models.embeddings import get_timestep_embedding

        return get_timestep_embedding(level.float() * 1000, self.config.cond_dim, flip_sin_to_cos=True)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                low_res: torch.Tensor | None = None, aug_level: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ (B, 3, S, S) for noisy images ``sample`` at ``timesteps`` (B,); an SR model also takes
        the (already augmented) low-resolution images (B, 3, s, s) in [-1, 1] and their levels (B,)."""
        seq, pooled, attend = self.text_features(text, mask)
        x, cls = sample, pooled
        if self.config.sr_scale > 1:
            if low_res is None or aug_level is None:
                raise VqgenError("a super-resolution model needs low_res images and their aug_level")
            up = F.interpolate(low_res, size=sample.shape[-2:], mode="bicubic", align_corners=False)  # (B, 3, S, S)
            x = torch.cat([sample, up.to(sample)], 1)  # (B, 6, S, S)
            cls = torch.cat([pooled, self.aug_features(aug_level).to(pooled)], -1)  # (B, 2*cond_dim)
        return self.unet(x, timesteps, encoder_hidden_states=seq, class_labels=cls,
                         encoder_attention_mask=attend).sample  # (B, 3, S, S)
