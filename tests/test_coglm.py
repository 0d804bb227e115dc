"""CogLM (CogView2's objective) on the unified stream: the batched mask, the loss of both sample
kinds, masked cells unseen by their predictors, a tiny model that learns to fill a region, and
one trained checkpoint that samples, fills and scores captions; `vqgen train` with it resumes."""
import json

import pytest
import torch

from vqgen.cli import main as cli_main
from vqgen.errors import ConfigError, VqgenError
from vqgen.io import load_pretrained
from vqgen.sampling import SamplingConfig, generate
from vqgen.transformer.base import Condition
from vqgen.transformer.config import TextConfig, TransformerConfig
from vqgen.transformer.masks import MaskSpec, coglm_mask
from vqgen.transformer.unified import Unified

from tests.test_train import crash_after, make_codes, weights


def tiny(seed: int = 0, **kw) -> Unified:
    torch.manual_seed(seed)
    fields = dict(family="unified", dim=32, depth=2, heads=4, mlp_dim=64, dropout=0.0, grid=(4, 4),
                  codebook_size=16, text=TextConfig(vocab_size=16, max_len=4), coglm_mix=0.5, coglm_patch=2)
    return Unified(TransformerConfig(**{**fields, **kw}))


def batch(b: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (b, 16), generator=g)  # (B, N)
    cond = Condition(text_ids=torch.randint(4, 16, (b, 4), generator=g), text_mask=torch.ones(b, 4, dtype=torch.bool))
    return codes, cond


BOX = torch.zeros(4, 4, dtype=torch.bool)
BOX[1:3, 1:3] = True  # cells 5, 6, 9, 10


def test_the_model_mask_is_the_mask_spec_row_by_row():
    spec = MaskSpec("coglm", grid=(4, 4), text_len=4, region=(((1, 3), (1, 3)),))
    masked = torch.cat([torch.tensor([False, True, True, True]), BOX.flatten()])  # (L + N,)
    assert torch.equal(spec.masked(), masked)
    assert torch.equal(coglm_mask(masked[None].repeat(2, 1)), spec.dense()[None].repeat(2, 1, 1))


@pytest.mark.parametrize("bias", [0.0, 2.0])
def test_every_cell_masked_is_the_plain_stream(bias):
    model = tiny(text_attention_bias=bias).eval()
    codes, cond = batch()
    plain = model(codes, cond)
    img, txt = model.coglm_logits(codes, cond, torch.ones(3, 16, dtype=torch.bool))  # (B, N, V), (B, L - 1, Vt)
    assert torch.allclose(img, plain.logits, atol=1e-5) and torch.allclose(txt, plain.text_logits, atol=1e-5)


def test_the_loss_backpropagates_for_both_sample_kinds():
    model = tiny().train()
    codes, cond = batch()
    for region in (torch.ones(3, 16, dtype=torch.bool), BOX.flatten()[None].repeat(3, 1)):
        model.zero_grad()
        loss, metrics = model.coglm_loss(codes, cond, region)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
        assert model.tok_emb.weight.grad.abs().sum() > 0 and model.text_head.weight.grad.abs().sum() > 0
        assert ("infill_loss" in metrics) == (not bool(region.all()))
    # the training mix draws both kinds; evaluation is the plain next-token loss
    torch.manual_seed(0)
    _, metrics = tiny(coglm_mix=1.0).train().compute_loss(codes, cond)
    assert "infill_loss" in metrics
    model.eval()
    loss, metrics = model.compute_loss(codes, cond)
    assert "infill_loss" not in metrics
    assert torch.allclose(loss, model.coglm_loss(codes, cond, torch.ones(3, 16, dtype=torch.bool))[0], atol=1e-5)


def test_masked_cells_never_see_their_own_codes():
    model = tiny().eval()
    codes, cond = batch()
    region = BOX.flatten()[None].repeat(3, 1)  # (B, N)
    cells = region[0].nonzero().flatten().tolist()  # [5, 6, 9, 10]
    img, txt = model.coglm_logits(codes, cond, region)
    for j, cell in enumerate(cells):
        changed = codes.clone()
        changed[:, cell] = (changed[:, cell] + 7) % 16
        img2, txt2 = model.coglm_logits(changed, cond, region)
        same = cells[: j + 1]  # the cell itself and the masked cells before it
        assert torch.equal(img[:, same], img2[:, same]), cell
        assert torch.equal(txt, txt2)
        if j + 1 < len(cells):  # later masked cells are predicted from it (raster order)
            assert not torch.equal(img[:, cells[j + 1:]], img2[:, cells[j + 1:]])
    changed = codes.clone()
    changed[:, 0] = (changed[:, 0] + 7) % 16  # a context cell: every prediction may use it
    assert not torch.equal(img[:, cells[:1]], model.coglm_logits(changed, cond, region)[0][:, cells[:1]])


def constant_images(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 16): each image one code everywhere, so a region is known from any visible cell."""
    return torch.randint(0, 16, (n, 1), generator=g).repeat(1, 16)


def test_a_tiny_model_learns_to_fill_a_region_from_its_context():
    model = tiny(coglm_mix=0.5).train()
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    null = model.empty_condition(32)
    for _ in range(150):
        loss, _ = model.compute_loss(constant_images(32, g), null)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    codes = constant_images(64, g)  # (B, N)
    region = torch.zeros(64, 16, dtype=torch.bool)
    region[:, :2] = True
    region[:, 4:6] = True  # the top-left 2x2 box: first in raster order, nothing before it
    filled = model.infill(codes, region, model.empty_condition(64), temperature=0)
    acc = (filled[region] == codes[region]).float().mean().item()
    ar = model(codes, model.empty_condition(64)).logits.argmax(-1)  # (B, N): left-to-right guesses
    ar_acc = (ar[:, 0] == codes[:, 0]).float().mean().item()  # cell 0 from the (null) text only
    assert acc > 0.9 and ar_acc < 0.4, (acc, ar_acc)  # chance is 1/16
    assert torch.equal(filled[~region], codes[~region])


@pytest.fixture(scope="module")
def coglm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("coglm")
    codes = make_codes(root / "codes")
    run = root / "run"
    rc = cli_main(["train", "--codes", str(codes), "--preset", "unified-tiny", "--out", str(run), "--steps", "8",
                   "--no-progress", "--set", "model.coglm_mix=0.5", "--set", "model.coglm_patch=2",
                   "--set", "train.ckpt_every=4", "--set", "train.batch_size=8", "--set", "train.val_every=4"])
    assert rc == 0
    return codes, run


def test_one_checkpoint_samples_fills_and_scores_captions(coglm_run):
    _, run = coglm_run
    model = load_pretrained(run / "model")
    assert model.config.coglm_mix == 0.5 and model.scores_captions
    cond = model.text_condition(["a red square", "a blue square"])
    # (a) autoregressive sampling, the causal path
    codes = generate(model, cond, num=2, config=SamplingConfig(), generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 4, 4) and 0 <= int(codes.min()) and int(codes.max()) < 32
    # (b) fill a box given the text and the rest of the image
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[:, 1:3, 2:4] = True
    filled = model.infill(codes, region, cond, generator=torch.Generator().manual_seed(1))
    again = model.infill(codes, region, cond, generator=torch.Generator().manual_seed(1))
    assert filled.shape == codes.shape and torch.equal(filled[~region], codes[~region]) and torch.equal(filled, again)
    # (c) caption perplexity from the text head, each caption token seeing the whole image
    nll = model.caption_nll(codes, cond)
    assert nll.shape == (2,) and torch.isfinite(nll).all()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_infill_loss" in r for r in rows)


def test_vqgen_train_with_coglm_resumes_bit_identically(coglm_run, tmp_path):
    import shutil

    codes, run = coglm_run
    resumed = tmp_path / "b"
    shutil.copytree(run, resumed)
    crash_after(resumed, 4)
    assert cli_main(["train", "--codes", str(codes), "--out", str(resumed), "--steps", "8", "--no-progress"]) == 0
    a, b = weights(run), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "config.json").read_text())["model"]["coglm_mix"] == 0.5


def test_coglm_settings_are_checked_and_plain_models_refuse():
    with pytest.raises(ConfigError, match="'coglm_mix'"):
        tiny(coglm_mix=1.5)
    with pytest.raises(ConfigError, match="'coglm_mix'"):
        tiny(image_first=True)
    with pytest.raises(ConfigError, match="'coglm_patch'"):
        tiny(coglm_patch=0)
    plain = tiny(coglm_mix=0.0).eval()
    codes, cond = batch()
    with pytest.raises(VqgenError, match="coglm_mix > 0"):
        plain.infill(codes, torch.ones(3, 16, dtype=torch.bool), cond)
    with pytest.raises(VqgenError, match="caption perplexity"):
        plain.caption_nll(codes, cond)


def test_patch_regions_are_seeded_unions_of_boxes():
    model = tiny(grid=(8, 8), coglm_patch=4, coglm_patches=0.8)  # round(0.8 * 64 / 16) = 3 boxes of 4x4
    a = model.patch_regions(16, generator=torch.Generator().manual_seed(0))  # (B, N)
    assert torch.equal(a, model.patch_regions(16, generator=torch.Generator().manual_seed(0)))
    counts = a.sum(1)
    assert a.shape == (16, 64) and (counts >= 16).all() and (counts <= 48).all()
    assert tiny(grid=(2, 2), coglm_patch=4).patch_regions(2).all()  # a box larger than the grid is clipped
