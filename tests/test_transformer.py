"""Token transformers: causality, KV cache == full forward, conditioning, save/load, presets."""
from pathlib import Path

import pytest
import torch

from vqgen.config import get_preset
from vqgen.errors import ConfigError, VqgenError
from vqgen.io import load_pretrained
from vqgen.transformer import NULL_CLASS, Condition, TextConfig, TransformerConfig, build_model

GRID, K, L = (3, 4), 20, 6


def make(family, **kw):
    base = dict(family=family, dim=32, depth=2, heads=4, mlp_dim=64, dropout=0.0, grid=GRID, codebook_size=K)
    if family == "vim":
        base["num_classes"] = 3
    else:
        base["text"] = TextConfig(vocab_size=50, max_len=L)
    base.update(kw)
    torch.manual_seed(0)
    return build_model(TransformerConfig(**base)).eval()


def cond_for(model, b=2):
    g = torch.Generator().manual_seed(1)
    if model.cond_kind == "class":
        return Condition(class_ids=torch.tensor([0, 2, 1, 0][:b]))
    ids = torch.randint(4, 50, (b, L), generator=g)
    mask = torch.ones(b, L, dtype=torch.bool)
    mask[-1, 4:] = False
    return Condition(text_ids=ids.masked_fill(~mask, 0), text_mask=mask)


FAMILIES = [("vim", {}), ("parti", {}), ("unified", {}), ("unified", {"text_attention_bias": 2.0}),
            ("vim", {"norm": "sandwich"}), ("parti", {"norm": "sandwich"})]


@pytest.mark.parametrize("family,kw", FAMILIES)
def test_changing_a_later_code_never_changes_an_earlier_logit(family, kw):
    model = make(family, **kw)
    cond = cond_for(model)
    codes = torch.randint(0, K, (2, 12), generator=torch.Generator().manual_seed(2))
    out = model(codes, cond).logits  # (2, 12, K)
    for j in (0, 5, 11):
        changed = codes.clone()
        changed[:, j] = (changed[:, j] + 1) % K
        out2 = model(changed, cond).logits
        torch.testing.assert_close(out[:, : j + 1], out2[:, : j + 1], rtol=0, atol=1e-6)  # logit i sees codes < i
        if j < 11:
            assert (out[:, j + 1:] - out2[:, j + 1:]).abs().max() > 1e-4


@pytest.mark.parametrize("family,kw", FAMILIES)
@pytest.mark.parametrize("prefix", [0, 4])
def test_kv_cache_steps_match_the_full_forward(family, kw, prefix):
    model = make(family, **kw)
    cond = cond_for(model)
    codes = torch.randint(0, K, (2, 12), generator=torch.Generator().manual_seed(3))
    full = model(codes, cond).logits  # (2, 12, K)
    cache = model.new_cache(2)
    step_cond = Condition(class_ids=cond.class_ids, text_ids=cond.text_ids, text_mask=cond.text_mask,
                          prefix_codes=codes[:, :prefix] if prefix else None)
    logits = model.prefill(step_cond, cache)
    torch.testing.assert_close(logits, full[:, prefix], rtol=1e-4, atol=1e-5)
    for i in range(prefix, 12):
        logits = model.decode_step(codes[:, i], cache)  # the last call is allowed (cache holds a full image)
        if i + 1 < 12:
            torch.testing.assert_close(logits, full[:, i + 1], rtol=1e-4, atol=1e-5)


def test_cache_reset_reuses_buffers():
    model = make("unified")
    cond = cond_for(model)
    cache = model.new_cache(2)
    first = model.prefill(cond, cache)
    model.decode_step(torch.tensor([1, 2]), cache)
    cache.reset()
    torch.testing.assert_close(model.prefill(cond, cache), first)


@pytest.mark.parametrize("family", ["vim", "parti", "unified"])
def test_condition_changes_the_output_and_null_condition_is_accepted(family):
    model = make(family)
    cond = cond_for(model)
    codes = torch.randint(0, K, (2, 12), generator=torch.Generator().manual_seed(4))
    a = model(codes, cond).logits
    b = model(codes, cond.null()).logits
    assert (a - b).abs().max() > 1e-3
    if family == "vim":
        c = model(codes, Condition(class_ids=torch.tensor([1, 1]))).logits
        assert (a[0] - c[0]).abs().max() > 1e-3
    else:
        other = Condition(text_ids=cond.text_ids.flip(0), text_mask=cond.text_mask.flip(0))
        assert (model(codes, other).logits[0] - a[0]).abs().max() > 1e-3
    # the null condition gives finite logits and matches the model's own empty condition
    assert torch.isfinite(b).all()
    torch.testing.assert_close(model(codes, model.empty_condition(2)).logits, b)


def test_classifier_free_guidance_batching_of_cond_and_null_rows():
    model = make("parti")
    cond = cond_for(model)
    both = Condition.cat([cond, cond.null()])
    cache = model.new_cache(4)
    logits = model.prefill(both, cache)  # (4, K)
    alone = model.prefill(cond.null(), model.new_cache(2))
    torch.testing.assert_close(logits[2:], alone, rtol=1e-4, atol=1e-5)


def test_condition_null_drop_and_errors():
    cond = Condition(class_ids=torch.arange(10000) % 7, prefix_codes=torch.zeros(10000, 3, dtype=torch.long))
    null = cond.null()
    assert (null.class_ids == NULL_CLASS).all() and null.prefix_codes is cond.prefix_codes
    dropped = cond.drop(0.25, generator=torch.Generator().manual_seed(0))
    is_null = dropped.class_ids == NULL_CLASS
    assert abs(is_null.float().mean().item() - 0.25) < 0.02
    assert (dropped.class_ids[~is_null] == cond.class_ids[~is_null]).all()
    text = Condition(text_ids=torch.randint(1, 9, (4000, 5)), text_mask=torch.ones(4000, 5, dtype=torch.bool))
    td = text.drop(0.1, generator=torch.Generator().manual_seed(1))
    rows_null = ~td.text_mask.any(1)
    assert abs(rows_null.float().mean().item() - 0.1) < 0.02
    assert (td.text_ids[rows_null] == 0).all() and (td.text_ids[~rows_null] == text.text_ids[~rows_null]).all()
    with pytest.raises(VqgenError):
        Condition(class_ids=torch.zeros(2), text_ids=torch.zeros(3, 4), text_mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(VqgenError):
        Condition(text_ids=torch.zeros(3, 4))


def test_bad_inputs_are_clear_errors():
    model = make("vim")
    with pytest.raises(VqgenError, match="class id 5"):
        model(torch.zeros(1, 12, dtype=torch.long), Condition(class_ids=torch.tensor([5])))
    with pytest.raises(VqgenError, match="grid"):
        model(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(VqgenError, match="unconditional"):
        make("vim", num_classes=0)(torch.zeros(1, 12, dtype=torch.long), Condition(class_ids=torch.tensor([0])))
    with pytest.raises(ConfigError, match="divisible"):
        TransformerConfig(dim=30, heads=4)
    with pytest.raises(ConfigError, match="text_attention_bias"):
        TransformerConfig(family="vim", text_attention_bias=1.0)


@pytest.mark.parametrize("family", ["vim", "parti", "unified"])
def test_save_load_identical(tmp_path, family):
    from vqgen.text.bpe import TextTokenizer

    model = make(family, dropout=0.1)
    if family != "vim":
        model.text_tokenizer = TextTokenizer.train(["a red circle", "two blue squares", "a green star"] * 5,
                                                   vocab_size=50)
    model.save_pretrained(tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    cond = cond_for(model)
    codes = torch.randint(0, K, (2, 12))
    torch.testing.assert_close(model(codes, cond).logits, loaded(codes, cond).logits, rtol=0, atol=0)
    if family != "vim":
        ids, mask = loaded.tokenize(["a red star", None])
        assert ids.shape == (2, L) and mask[0].any() and not mask[1].any()


def test_features_from_any_block():
    for family in ("vim", "parti", "unified"):
        model = make(family)
        codes = torch.randint(0, K, (3, *GRID))
        for layer in (1, 2):
            f = model.features(codes, layer)
            assert f.shape == (3, 12, 32)
        with pytest.raises(VqgenError, match="layer"):
            model.features(codes, 3)


def test_presets_up_to_20b_instantiate_on_meta_with_the_seed_sizes():
    expected = {"vim-base": (0.6e9, 0.75e9), "vim-large": (1.6e9, 1.9e9), "parti-350m": (0.33e9, 0.42e9),
                "parti-750m": (0.7e9, 0.85e9), "parti-3b": (2.8e9, 3.3e9), "parti-20b": (19e9, 22e9)}
    for name, (lo, hi) in expected.items():
        with torch.device("meta"):
            model = build_model(get_preset("transformer", name).model)
        n = sum(p.numel() for p in model.parameters())
        assert lo <= n <= hi, (name, n)


def test_deep_init_scales_residual_projections():
    model = make("vim", depth=8, dim=64, mlp_dim=128)
    std_proj = model.blocks[0].attn.proj.weight.std().item()
    std_qkv = model.blocks[0].attn.qkv.weight.std().item()
    assert std_proj == pytest.approx(0.02 / 4, rel=0.15) and std_qkv == pytest.approx(0.02, rel=0.1)


def test_text_after_image_model_scores_captions_and_cannot_sample():
    model = make("unified", image_first=True)
    cond = cond_for(model)
    codes = torch.randint(0, K, (2, *GRID), generator=torch.Generator().manual_seed(2))
    out = model(codes, cond)
    n = GRID[0] * GRID[1]
    assert out.logits.shape == (2, n - 1, K) and out.text_logits.shape == (2, L, 50)
    # causal: the caption never changes the image logits; the image changes the caption's
    other = Condition(text_ids=cond.text_ids.roll(1, 1), text_mask=cond.text_mask)
    assert torch.equal(model(codes, other).logits, out.logits)
    changed = codes.clone()
    changed[:, 0, 0] = (changed[:, 0, 0] + 1) % K
    assert not torch.allclose(model(changed, cond).text_logits, out.text_logits)
    # caption_nll = the text loss over each row's own caption tokens
    nll = model.caption_nll(codes, cond)
    logp = out.text_logits.log_softmax(-1).gather(-1, cond.text_ids[..., None])[..., 0]  # (2, L)
    want = -(logp * cond.text_mask).sum(1) / cond.text_mask.sum(1)
    assert torch.allclose(nll, want, atol=1e-5)
    loss, parts = model.compute_loss(codes, cond)
    assert torch.isfinite(loss) and {"image_loss", "text_loss"} <= set(parts)
    with pytest.raises(VqgenError, match="cannot sample"):
        model.prefill(cond, model.new_cache(2))
    with pytest.raises(VqgenError, match="image_first"):
        make("unified").caption_nll(codes, cond)
    with pytest.raises(ConfigError, match="image_first"):
        make("parti", image_first=True)


# -- code grids with a time axis (t, h, w) ---------------------------------------------------
def make_video(**kw):
    torch.manual_seed(0)
    cfg = TransformerConfig(family="vim", dim=32, depth=2, heads=4, mlp_dim=64, dropout=0.0, grid=(2, 4, 4),
                            codebook_size=K, num_classes=3, **kw)
    return build_model(cfg)


def test_a_vim_on_a_time_grid_trains_a_step():
    model = make_video().train()
    assert model.grid == (2, 4, 4) and model.image_seq_len == 32
    codes = torch.randint(0, K, (3, 2, 4, 4), generator=torch.Generator().manual_seed(0))  # (B, t, h, w)
    cond = Condition(class_ids=torch.tensor([0, 1, NULL_CLASS]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.pos_emb.frame.detach().clone()
    loss, _ = model.compute_loss(codes, cond)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(model.pos_emb.frame, before)  # the time axis learns
    assert model(codes, cond).logits.shape == (3, 32, K)
    with pytest.raises(VqgenError, match=r"\(2, 4, 4\)"):
        model(torch.zeros(1, 4, 4, 2, dtype=torch.long))


@pytest.mark.parametrize("prefix", [0, 16])
def test_time_grid_kv_cache_steps_match_the_full_forward(prefix):
    model = make_video().eval()
    cond = Condition(class_ids=torch.tensor([2, 0]))
    codes = torch.randint(0, K, (2, 2, 4, 4), generator=torch.Generator().manual_seed(3)).flatten(1)  # (2, 32)
    full = model(codes, cond).logits  # (2, 32, K)
    cache = model.new_cache(2)
    logits = model.prefill(Condition(class_ids=cond.class_ids, prefix_codes=codes[:, :prefix] if prefix else None),
                           cache)
    torch.testing.assert_close(logits, full[:, prefix], rtol=1e-4, atol=1e-5)
    for i in range(prefix, 31):
        logits = model.decode_step(codes[:, i], cache)
        torch.testing.assert_close(logits, full[:, i + 1], rtol=1e-4, atol=1e-5)


def test_grid_positions_sum_one_table_per_axis():
    from vqgen.transformer.layers import PosEmbed

    torch.manual_seed(0)
    flat = PosEmbed((3, 4), 8)
    assert [n for n, _ in flat.named_parameters()] == ["row", "col"]  # saved 2-D models keep their names
    for t in (flat.row, flat.col):
        torch.nn.init.normal_(t)
    idx = torch.arange(12)
    assert torch.equal(flat(idx), flat.row[idx // 4] + flat.col[idx % 4])
    video = PosEmbed((2, 3, 4), 8)
    for t in (video.frame, video.row, video.col):
        torch.nn.init.normal_(t)
    idx = torch.arange(24)
    torch.testing.assert_close(video(idx), video.frame[idx // 12] + video.row[(idx // 4) % 3] + video.col[idx % 4])
    with pytest.raises(ConfigError, match="grid"):
        TransformerConfig(family="vim", grid=(2, 2, 2, 2))


# -- one config per family, beside its model ----------------------------------------------------
def test_each_family_has_its_own_config_beside_its_model():
    from vqgen.transformer.parti import PartiConfig
    from vqgen.transformer.unified import UnifiedConfig
    from vqgen.transformer.vim import VIM, VIMConfig

    assert type(TransformerConfig()) is VIMConfig and VIM.config_class is VIMConfig
    assert type(TransformerConfig(family="parti", encoder_depth=3)) is PartiConfig
    assert type(TransformerConfig(family="unified", image_first=True)) is UnifiedConfig
    assert not hasattr(PartiConfig(), "num_classes") and not hasattr(VIMConfig(), "text")
    with pytest.raises(ConfigError, match="'encoder_depth' does not apply to the vim family"):
        TransformerConfig(family="vim", encoder_depth=3)
    with pytest.raises(ConfigError, match="unknown transformer family 'clip_reranker'"):
        TransformerConfig(family="clip_reranker")


def test_overrides_and_presets_follow_the_family():
    from vqgen.config import apply_overrides, from_dict, to_dict
    from vqgen.transformer import RunConfig

    run = get_preset("transformer", "vim-tiny")
    assert type(run.model).__name__ == "VIMConfig"
    moved = apply_overrides(run, ["model.family=unified", "model.image_first=true", "model.grid=2,4,4"])
    assert type(moved.model).__name__ == "UnifiedConfig" and moved.model.image_first and moved.model.grid == (2, 4, 4)
    assert from_dict(RunConfig, to_dict(moved)) == moved
    with pytest.raises(ConfigError, match="model.image_first"):
        apply_overrides(run, ["model.image_first=true"])


# The config.json of the bundled model before 2026-12-03 (the one-config layout: every family's fields).
OLD_LAYOUT_PARTI = {"model_type": "parti", "family": "parti", "dim": 32, "depth": 1, "heads": 4, "mlp_dim": 64,
                    "dropout": 0.0, "norm": "prenorm", "grid": [8, 8], "codebook_size": 256, "num_classes": 0,
                    "encoder_depth": 2, "text": {"encoder": "trained", "vocab_size": 112, "max_len": 32,
                                                 "pretrained_dir": None},
                    "text_loss_weight": 0.125, "text_attention_bias": 0.0}


def test_configs_saved_in_the_one_config_layout_still_load(tmp_path):
    """A config.json saved before the split (the bundled model's until 2026-12-03) carries every family's fields."""
    import json
    import warnings

    from vqgen.config import from_dict

    data = dict(OLD_LAYOUT_PARTI)
    assert {"num_classes", "text_attention_bias"} <= set(data)  # written by the old layout
    saved = build_model(from_dict(TransformerConfig, data)).save_pretrained(tmp_path / "old")
    (Path(saved) / "config.json").write_text(json.dumps(data))  # exactly the old file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_pretrained(saved)
    assert type(model.config).__name__ == "PartiConfig" and model.config.grid == (8, 8)
    old_vim = dict(family="vim", dim=32, depth=1, heads=4, mlp_dim=64, dropout=0.0, norm="prenorm", grid=[3, 4],
                   codebook_size=K, num_classes=2, encoder_depth=2, text_loss_weight=0.125, text_attention_bias=0.0,
                   text={"encoder": "trained", "vocab_size": 1024, "max_len": 128, "pretrained_dir": None})
    cfg = from_dict(TransformerConfig, old_vim)
    assert type(cfg).__name__ == "VIMConfig" and cfg.num_classes == 2
