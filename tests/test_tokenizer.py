"""ViT-VQGAN / CNN-VQGAN models, the quantizer, losses and the discriminator on tiny configs."""
import dataclasses

import pytest
import torch

from vqgen.config import apply_overrides, get_preset
from vqgen.errors import ConfigError, VqgenError
from vqgen.io import load_pretrained
from vqgen.tokenizer.base import CondConfig
from vqgen.tokenizer.cnn_vqgan import CNNVQGAN
from vqgen.tokenizer.discriminator import StyleGANDiscriminator
from vqgen.tokenizer.losses import (LossConfig, ReconstructionLoss, VGGPerceptualLoss, logit_laplace_nll,
                                    mean_from_logits, vgg16_features)
from vqgen.tokenizer.quantizer import (CodebookMonitor, QuantizerConfig, VectorQuantizer, code_histogram,
                                       codebook_stats)
from vqgen.tokenizer.train import build_tokenizer
from vqgen.tokenizer.vit_vqgan import ViTVQGAN


def _tiny(arch="vit_vqgan", **cond):
    cfg = get_preset("tokenizer", "tiny")
    cfg = dataclasses.replace(cfg, arch=arch)
    if cond:
        c = CondConfig(**cond)
        cfg = dataclasses.replace(cfg, vit=dataclasses.replace(cfg.vit, cond=c), cnn=dataclasses.replace(cfg.cnn, cond=c))
    return cfg


@pytest.mark.parametrize("arch", ["vit_vqgan", "cnn_vqgan"])
def test_encode_decode_shapes_and_interface(arch, seeded):
    model = build_tokenizer(_tiny(arch)).eval()
    x = torch.rand(3, 3, 16, 16)
    codes = model.encode(x)
    assert codes.shape == (3, *model.grid_size) == (3, 4, 4) and codes.dtype == torch.long
    assert int(codes.max()) < model.config.codebook_size
    y = model.decode(codes)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    out = model(x)
    assert out.reconstruction.shape == x.shape and out.codes.shape == (3, 4, 4)
    assert set(out.losses) == {"vq", "l2", "logit_laplace"}
    assert torch.equal(out.codes, codes)  # forward and encode choose the same codes
    emb = model.codebook_embeddings()
    assert emb.shape == (64, 8)
    assert torch.allclose(emb.norm(dim=1), torch.ones(64), atol=1e-5)  # l2-normalized lookup vectors


@pytest.mark.parametrize("lookup_dim,l2", [(8, True), (None, False), (4, False)])
def test_quantize_codebook_vector_returns_its_index(lookup_dim, l2, seeded):
    q = VectorQuantizer(QuantizerConfig(codebook_size=128, lookup_dim=lookup_dim, l2_normalize=l2), in_width=16)
    e = q.codebook_embeddings()  # (K, d)
    assert torch.equal(q.nearest(e), torch.arange(128))
    if lookup_dim is None:  # no factorization: a codebook vector fed as encoder output maps to itself
        out = q(e[None])
        assert torch.equal(out.codes[0], torch.arange(128))
        assert torch.allclose(out.quantized[0], e)
        assert float(out.loss.detach()) < 1e-10


def test_straight_through_and_commitment(seeded):
    q = VectorQuantizer(QuantizerConfig(codebook_size=16, lookup_dim=4, beta=0.25), in_width=8)
    h = torch.randn(2, 5, 8, requires_grad=True)
    out = q(h)
    out.quantized.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0  # gradients reach the encoder
    z = q.to_lookup(h.detach())
    e = q.codebook_embeddings()[out.codes]
    expected = ((e - z) ** 2).mean() * 1.25  # codebook term + beta * commitment term
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_codebook_stats_and_monitor():
    counts = torch.tensor([4, 4, 0, 0])
    s = codebook_stats(counts)
    assert s["codebook_usage"] == 0.5 and s["dead_codes"] == 2 and abs(s["perplexity"] - 2.0) < 1e-9
    assert torch.equal(code_histogram(torch.tensor([[0, 3], [3, 3]]), 4), torch.tensor([1, 0, 0, 3]))
    m = CodebookMonitor(4, window=2)
    m.update(0, torch.tensor([1, 1, 0, 0]))
    m.update(1, torch.tensor([1, 0, 0, 0]))
    m.update(5, torch.tensor([0, 0, 0, 1]))
    assert m.dead(5).tolist() == [True, True, True, False]
    state = m.state_dict()
    m2 = CodebookMonitor(4, window=2)
    m2.load_state_dict(state)
    assert torch.equal(m2.last_used, m.last_used)


def test_dead_code_restart_reseeds_from_candidates(seeded):
    q = VectorQuantizer(QuantizerConfig(codebook_size=8, lookup_dim=4), in_width=4)
    cand = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    dead = torch.tensor([True, False] * 4)
    before = q.codebook.detach().clone()
    assert q.restart_codes(dead, cand, torch.Generator().manual_seed(0)) == 4
    assert torch.equal(q.codebook[~dead], before[~dead])
    for row in q.codebook[dead]:
        assert any(torch.allclose(row, c) for c in cand)


@pytest.mark.parametrize("arch", ["vit_vqgan", "cnn_vqgan"])
def test_save_load_identical_outputs(arch, tmp_path, seeded):
    model = build_tokenizer(_tiny(arch)).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert type(loaded) is type(model)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.encode(x), loaded.encode(x))
    codes = model.encode(x)
    assert torch.equal(model.decode(codes), loaded.decode(codes))


@pytest.mark.parametrize("arch", ["vit_vqgan", "cnn_vqgan"])
def test_decoder_conditioning(arch, seeded):
    model = build_tokenizer(_tiny(arch, kind="class", num_classes=3)).eval()
    x = torch.rand(2, 3, 16, 16)
    codes = model.encode(x)
    a = model.decode(codes, torch.tensor([0, 0]))
    b = model.decode(codes, torch.tensor([2, 2]))
    assert a.shape == x.shape and not torch.allclose(a, b)  # the label changes the decoded image
    with pytest.raises(VqgenError, match="conditioned"):
        model.decode(codes)
    with pytest.raises(VqgenError, match="out of range"):
        model.decode(codes, torch.tensor([0, 3]))
    text = build_tokenizer(_tiny(arch, kind="text", text_dim=5)).eval()
    out = text(x, torch.randn(2, 7, 5))  # per-token text embeddings
    assert out.reconstruction.shape == x.shape
    assert text.decode(codes, torch.randn(2, 5)).shape == x.shape  # pooled embedding
    out.losses["l2"].backward()
    assert text.cond_embed.proj.weight.grad.abs().sum() > 0  # trained with the same losses


def test_bad_inputs_are_clear_errors(seeded):
    model = build_tokenizer(_tiny()).eval()
    with pytest.raises(VqgenError, match="expected images"):
        model.encode(torch.rand(1, 3, 8, 8))
    with pytest.raises(VqgenError, match="expected codes"):
        model.decode(torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(VqgenError, match="out of range"):
        model.decode(torch.full((1, 4, 4), 64))
    with pytest.raises(VqgenError, match="not trained with a condition"):
        model.decode(torch.zeros(1, 4, 4, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ConfigError, match="patch_size"):
        apply_overrides(get_preset("tokenizer", "tiny"), ["vit.patch_size=5"])


def test_presets_match_seed_table2():
    for name, (width, depth, heads, mlp) in {"small": (512, 8, 8, 2048), "base": (768, 12, 12, 3072),
                                             "large": (1280, 32, 16, 5120)}.items():
        cfg = get_preset("tokenizer", name)
        enc = cfg.vit.encoder
        assert (enc.width, enc.depth, enc.heads, enc.mlp_dim) == (width, depth, heads, mlp)
        assert cfg.vit.image_size // cfg.vit.patch_size == 32  # 1024 tokens
        assert cfg.vit.codebook_size == 8192 and cfg.vit.quantizer.lookup_dim == 32
    sl = get_preset("tokenizer", "small-large").vit
    assert (sl.encoder.width, sl.decoder.width) == (512, 1280)


def test_small_preset_parameter_count():
    # The seed's Table 2 lists ViT-VQGAN Small at 32M parameters (encoder + decoder transformer).
    with torch.device("meta"):  # shapes only, no memory
        model = ViTVQGAN(get_preset("tokenizer", "small").vit)
    n = sum(p.numel() for name, p in model.named_parameters() if ".blocks." in name)
    assert 45e6 < n < 55e6  # 2 x 8 blocks of width 512 (~25M each side); heads and embeddings not counted


def test_logit_laplace():
    target = torch.rand(2, 3, 4, 4)
    eps = 0.1
    mu = torch.logit(eps + (1 - 2 * eps) * target)
    # the reconstruction of the exact mean logits is the target
    assert torch.allclose(mean_from_logits(mu), target, atol=1e-5)
    ls = torch.zeros_like(mu)
    best = logit_laplace_nll(mu, ls, target)
    assert best < logit_laplace_nll(mu + 0.5, ls, target)
    assert best > logit_laplace_nll(mu, ls - 1.0, target)  # sharper scale is more likely at the mean


def test_perceptual_loss_needs_weights_and_loads_them(tmp_path, seeded):
    with pytest.raises(ConfigError, match="loss.vgg_path"):
        ReconstructionLoss(LossConfig(perceptual=0.1))
    with pytest.raises(ConfigError, match="not found"):
        ReconstructionLoss(LossConfig(perceptual=0.1, vgg_path=str(tmp_path / "none.pth")))
    state = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    torch.save(state, tmp_path / "vgg16.pth")
    loss = VGGPerceptualLoss.from_file(tmp_path / "vgg16.pth")
    x = torch.rand(2, 3, 32, 32)
    assert float(loss(x, x)) < 1e-8
    assert float(loss(x, torch.rand(2, 3, 32, 32))) > 0
    y = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss(y, x).backward()
    assert y.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())  # VGG stays frozen
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(VqgenError, match="not a VGG16 state dict"):
        VGGPerceptualLoss.from_file(tmp_path / "bad.pth")


def test_discriminator_and_gan_term(seeded):
    cfg = _tiny()
    disc = StyleGANDiscriminator(cfg.disc)
    x = torch.rand(4, 3, 16, 16)
    assert disc(x).shape == (4,)
    model = build_tokenizer(cfg)
    out = model(x)
    lf = ReconstructionLoss(LossConfig(gan=0.1, gan_start=5, ms_ssim=0.1))
    _, before = lf(x, out, step=4, discriminator=disc)
    total, after = lf(x, out, step=5, discriminator=disc)
    assert "gan_g" not in before and "gan_g" in after and "ms_ssim" in after
    total.backward()
    assert model.quantizer.codebook.grad is not None


def test_cnn_config_grid(seeded):
    cfg = get_preset("tokenizer", "emoji-cnn")
    model = CNNVQGAN(cfg.cnn)
    vit = ViTVQGAN(get_preset("tokenizer", "emoji").vit)
    assert model.grid_size == vit.grid_size == (16, 16)  # same code grid for a fair comparison
