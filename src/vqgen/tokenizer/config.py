"""The tokenizer training config and its presets (family ``tokenizer``).

Presets run from ``tiny`` (tests, seconds on a CPU) through ``emoji`` / ``emoji-cnn`` (64x64
images on a CPU in minutes) to the seed's Small / Base / Large ViT-VQGAN (its Table 2: 8/12/32
blocks, 8/12/16 heads, width 512/768/1280, MLP 2048/3072/5120; 256x256 images, 8x8 patches,
32x32 = 1024 tokens, 8192 codes) for a GPU. ``vit`` and ``cnn`` hold both architectures' model
configs; ``arch`` picks the one that is trained.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from vqgen.config import register_preset, require
from vqgen.tokenizer.cnn_vqgan import CNNVQGANConfig
from vqgen.tokenizer.discriminator import DiscriminatorConfig
from vqgen.tokenizer.losses import LossConfig
from vqgen.tokenizer.quantizer import QuantizerConfig
from vqgen.tokenizer.vit_vqgan import ViTConfig, ViTVQGANConfig

FAMILY = "tokenizer"


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"  # sgd: plain steps, linear in the gradient (equivalence tests)
    batch_size: int = 32  # per process: the global batch is batch_size x world size
    lr: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.99)
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0  # 0 disables
    disc_lr: float = 1e-4

    def __post_init__(self):
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.lr > 0 and self.disc_lr > 0, "lr", "learning rates must be > 0")
        require(len(self.betas) == 2, "betas", "must be two numbers")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")


@dataclass(frozen=True)
class CodebookConfig:
    """Codebook health tracking during training, and the optional dead-code restart."""

    dead_after: int = 100  # a code unused for this many steps is dead
    restart_dead: bool = False  # re-seed dead codes from encoder outputs (off: measure its effect)
    restart_every: int = 100

    def __post_init__(self):
        require(self.dead_after >= 1 and self.restart_every >= 1, "dead_after", "dead_after and restart_every must be >= 1")


@dataclass(frozen=True)
class TokenizerTrainConfig:
    arch: Literal["vit_vqgan", "cnn_vqgan"] = "vit_vqgan"
    vit: ViTVQGANConfig = field(default_factory=ViTVQGANConfig)
    cnn: CNNVQGANConfig = field(default_factory=CNNVQGANConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    steps: int = 1000
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    fsdp: bool = False  # shard with FSDP2 (fully_shard) under torchrun, the model built on the meta device
    activation_checkpointing: bool = False  # recompute the encoder/decoder blocks' activations in backward
    holdout_every: int = 10  # every n-th image of the folder is held out for evaluation (0: none)
    stream_workers: int = 2  # DataLoader workers per rank when the data are streamed shards
    shuffle_buffer: int = 1000  # streamed shards: samples in the shuffle buffer of each reader
    time_limit_min: float = 0.0  # stop (and checkpoint) after this many wall-clock minutes; 0: no limit
    cpu_limit_min: float = 0.0  # stop after this many minutes of this process's CPU time (equal-budget runs)
    log_every: int = 20
    sample_every: int = 200
    ckpt_every: int = 500
    eval_every: int = 0  # held-out eval every n steps (0: only at the end)
    eval_batches: int = 8  # held-out batches for periodic evals
    init_from: str = ""  # start from this tokenizer model directory's weights (same architecture)
    decoder_only: bool = False  # train the decoder only: codes stay those of init_from (stage 2 stays valid)

    def __post_init__(self):
        require(self.steps >= 0, "steps", "must be >= 0")
        require(self.holdout_every >= 0 and self.holdout_every != 1, "holdout_every", "must be 0 or >= 2")
        for name in ("stream_workers", "shuffle_buffer"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("log_every", "sample_every", "ckpt_every"):
            require(getattr(self, name) >= 1, name, "must be >= 1")
        require(not self.decoder_only or bool(self.init_from), "decoder_only", "needs init_from (a trained tokenizer)")
        require(not (self.decoder_only and self.codebook.restart_dead), "decoder_only",
                "cannot be combined with codebook.restart_dead (the codebook is frozen)")
        require(not (self.fsdp and self.codebook.restart_dead), "fsdp",
                "cannot be combined with codebook.restart_dead (the codebook is sharded)")

    @property
    def model(self) -> ViTVQGANConfig | CNNVQGANConfig:
        """The config of the architecture being trained."""
        return self.vit if self.arch == "vit_vqgan" else self.cnn

    @property
    def image_size(self) -> int:
        return self.model.image_size


# ----------------------------------------------------------------------------- presets
def _vit_size(name: str) -> ViTConfig:
    """The seed's Table 2 shapes."""
    return {"small": ViTConfig(width=512, depth=8, heads=8, mlp_dim=2048),
            "base": ViTConfig(width=768, depth=12, heads=12, mlp_dim=3072),
            "large": ViTConfig(width=1280, depth=32, heads=16, mlp_dim=5120)}[name]


@register_preset(FAMILY, "tiny")
def _tiny() -> TokenizerTrainConfig:
    """16x16 images, 4x4 patches, 64 codes: for tests (seconds)."""
    q = QuantizerConfig(codebook_size=64, lookup_dim=8)
    vit = ViTConfig(width=32, depth=1, heads=2, mlp_dim=64)
    return TokenizerTrainConfig(
        vit=ViTVQGANConfig(image_size=16, patch_size=4, encoder=vit, decoder=vit, quantizer=q),
        cnn=CNNVQGANConfig(image_size=16, channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, width=32,
                           mid_attention=False, quantizer=q),
        disc=DiscriminatorConfig(image_size=16, channels=8, max_channels=32),
        optim=OptimConfig(batch_size=4, lr=1e-3, disc_lr=1e-3),
        codebook=CodebookConfig(dead_after=10, restart_every=10),
        steps=20, log_every=5, sample_every=10, ckpt_every=10, device="cpu")


@register_preset(FAMILY, "tiny-cnn")
def _tiny_cnn() -> TokenizerTrainConfig:
    return replace(_tiny(), arch="cnn_vqgan")


def _emoji(codebook: QuantizerConfig) -> TokenizerTrainConfig:
    vit = ViTConfig(width=128, depth=2, heads=4, mlp_dim=256)
    return TokenizerTrainConfig(
        vit=ViTVQGANConfig(image_size=64, patch_size=4, encoder=vit, decoder=vit, quantizer=codebook),
        cnn=CNNVQGANConfig(image_size=64, channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, width=128,
                           mid_attention=True, quantizer=codebook),
        loss=LossConfig(l2=1.0, logit_laplace=0.01, ms_ssim=0.1),
        disc=DiscriminatorConfig(image_size=64, channels=16, max_channels=128),
        optim=OptimConfig(batch_size=16, lr=1e-3, warmup_steps=100, min_lr_ratio=1.0, disc_lr=2e-4),
        codebook=CodebookConfig(dead_after=200, restart_every=100),
        steps=2000, log_every=25, sample_every=250, ckpt_every=250, eval_every=250, eval_batches=4)


@register_preset(FAMILY, "emoji")
def _emoji_vit() -> TokenizerTrainConfig:
    """64x64 emoji on a CPU: ViT 2+2 blocks of width 128, 4x4 patches (16x16 codes), 8192 codes in 32-d."""
    return _emoji(QuantizerConfig(codebook_size=8192, lookup_dim=32, l2_normalize=True))


@register_preset(FAMILY, "emoji-plain")
def _emoji_plain() -> TokenizerTrainConfig:
    """``emoji`` without factorized or l2-normalized codes: lookup at width 128, Euclidean."""
    return _emoji(QuantizerConfig(codebook_size=8192, lookup_dim=None, l2_normalize=False))


@register_preset(FAMILY, "emoji-cnn")
def _emoji_cnn() -> TokenizerTrainConfig:
    """``emoji`` with the CNN-VQGAN baseline (same quantizer, losses, grid and optimiser)."""
    return replace(_emoji_vit(), arch="cnn_vqgan")


def _paper(enc: str, dec: str) -> TokenizerTrainConfig:
    q = QuantizerConfig(codebook_size=8192, lookup_dim=32, l2_normalize=True)
    return TokenizerTrainConfig(
        vit=ViTVQGANConfig(image_size=256, patch_size=8, encoder=_vit_size(enc), decoder=_vit_size(dec), quantizer=q),
        cnn=CNNVQGANConfig(image_size=256, channels=128, channel_mult=(1, 1, 2, 2), num_res_blocks=2, width=256,
                           quantizer=q),
        loss=LossConfig(l2=1.0, logit_laplace=0.01, ms_ssim=0.1, gan=0.1, gan_start=50_000),
        disc=DiscriminatorConfig(image_size=256, channels=64, max_channels=512),
        optim=OptimConfig(batch_size=32, lr=1e-4, warmup_steps=5000, min_lr_ratio=0.0, disc_lr=1e-4),
        codebook=CodebookConfig(dead_after=1000, restart_every=1000),
        steps=500_000, log_every=100, sample_every=2000, ckpt_every=5000, eval_every=10_000, eval_batches=16)


@register_preset(FAMILY, "small")
def _small() -> TokenizerTrainConfig:
    """ViT-VQGAN Small-Small (seed Table 2): 8 blocks, 8 heads, width 512, MLP 2048; 256px, 8x8 patches."""
    return _paper("small", "small")


@register_preset(FAMILY, "base")
def _base() -> TokenizerTrainConfig:
    """ViT-VQGAN Base-Base: 12 blocks, 12 heads, width 768, MLP 3072."""
    return _paper("base", "base")


@register_preset(FAMILY, "large")
def _large() -> TokenizerTrainConfig:
    """ViT-VQGAN Large-Large: 32 blocks, 16 heads, width 1280, MLP 5120."""
    return _paper("large", "large")


@register_preset(FAMILY, "small-large")
def _small_large() -> TokenizerTrainConfig:
    """Small encoder, Large decoder (the seed's best Table 1 row)."""
    return _paper("small", "large")
