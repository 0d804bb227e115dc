"""TextToImagePipeline / ClassConditionalPipeline on tiny randomly initialised components."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.config import apply_overrides, get_preset
from vqgen.errors import VqgenError
from vqgen.pipelines import ClassConditionalPipeline, PipelineOutput, TextToImagePipeline
from vqgen.pipelines.text_to_image import PIPELINE_NAME, PipelineDefaults
from vqgen.rerank import ClipReranker
from vqgen.text.bpe import TextTokenizer
from vqgen.tokenizer.config import FAMILY as TOKENIZER_PRESETS
from vqgen.tokenizer.vit_vqgan import ViTVQGAN
from vqgen.transformer import build_model

CAPTIONS = ["a red circle", "two blue squares", "a green triangle above a red circle",
            "a small yellow square", "a purple circle to the left of an orange triangle"] * 4


def tiny_components(family="parti", num_classes=0):
    torch.manual_seed(0)
    tok_cfg = get_preset(TOKENIZER_PRESETS, "tiny").vit  # 16 px, 4 px patches -> 4x4 codes of 64
    tokenizer = ViTVQGAN(tok_cfg).eval()
    run = get_preset("transformer", f"{family}-tiny")
    over = ["model.grid=4,4", "model.codebook_size=64", "model.dim=32", "model.mlp_dim=64", "model.depth=1"]
    if family == "vim":
        over.append(f"model.num_classes={num_classes}")
    model = build_model(apply_overrides(run, over).model).eval()
    if family != "vim":
        model.text_tokenizer = TextTokenizer.train(CAPTIONS, vocab_size=64, min_frequency=1)
    return tokenizer, model


@pytest.fixture(scope="module")
def pipe():
    tok, model = tiny_components()
    return TextToImagePipeline(tok, model, defaults=PipelineDefaults(guidance_scale=2.0, max_prompt_length=60))


def test_call_shapes_and_output_types(pipe):
    out = pipe(["a red circle", "two blue squares"], num_images=3, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, PipelineOutput)
    assert out.codes.shape == (6, 4, 4) and out.codes.dtype == torch.long
    assert out.prompts == ["a red circle"] * 3 + ["two blue squares"] * 3
    assert len(out.images) == 6 and isinstance(out.images[0], Image.Image) and out.images[0].size == (16, 16)
    assert out.scores is None
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    as_np = pipe("a red circle", output_type="np", generator=g())
    as_pt = pipe("a red circle", output_type="pt", generator=g())
    codes = pipe("a red circle", output_type="codes", generator=g())
    assert as_np.images[0].shape == (16, 16, 3) and as_np.images[0].dtype == np.uint8
    assert as_pt.images[0].shape == (3, 16, 16) and 0 <= float(as_pt.images[0].min()) <= float(as_pt.images[0].max()) <= 1
    assert codes.images is None and torch.equal(codes.codes, as_np.codes)
    assert pipe.image_size == 16


def test_save_load_same_images_for_same_seed(pipe, tmp_path):
    a = pipe("a green triangle above a red circle", num_images=2, guidance_scale=3.0, top_k=20,
             generator=torch.Generator().manual_seed(7), output_type="np")
    pipe.save_pretrained(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / PIPELINE_NAME).read_text())
    assert meta["components"] == {"tokenizer": "tokenizer", "transformer": "transformer"}
    assert meta["defaults"]["guidance_scale"] == 2.0
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "p")
    b = loaded("a green triangle above a red circle", num_images=2, guidance_scale=3.0, top_k=20,
               generator=torch.Generator().manual_seed(7), output_type="np")
    assert torch.equal(a.codes, b.codes)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    assert loaded.max_prompt_length == 60


def test_from_pretrained_is_strict(pipe, tmp_path):
    d = pipe.save_pretrained(tmp_path / "p")
    with pytest.raises(VqgenError, match="pipeline.json is missing"):
        TextToImagePipeline.from_pretrained(tmp_path)
    meta = json.loads((d / PIPELINE_NAME).read_text())
    (d / PIPELINE_NAME).write_text(json.dumps({**meta, "surprise": 1}))
    with pytest.raises(VqgenError, match="unknown keys"):
        TextToImagePipeline.from_pretrained(d)
    (d / PIPELINE_NAME).write_text(json.dumps({**meta, "components": {**meta["components"], "reranker": "reranker"}}))
    with pytest.raises(VqgenError, match="folder 'reranker' is missing"):
        TextToImagePipeline.from_pretrained(d)


def test_batched_prompts_match_one_at_a_time(pipe):
    prompts, seeds, scales = ["a red circle", "two blue squares", "a small yellow square"], [3, 11, 5], [1.0, 3.0, 2.0]
    batched = pipe(prompts, num_images=2, guidance_scale=scales,
                   generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="codes")
    single = [pipe(p, num_images=2, guidance_scale=s, generator=torch.Generator().manual_seed(seed),
                   output_type="codes").codes for p, s, seed in zip(prompts, scales, seeds)]
    assert torch.equal(batched.codes, torch.cat(single))
    other = pipe(prompts[0], num_images=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(4),
                 output_type="codes")
    assert not torch.equal(other.codes, single[0])  # the seed matters


@pytest.mark.parametrize("bad, match", [("", "empty"), ("   \n", "empty"), ("x" * 61, "more than the limit"),
                                        (b"a red circle", "must be text"), (42, "must be text"),
                                        ("a red\x00circle", "control")])
def test_bad_prompts_raise_one_line_errors(pipe, bad, match):
    with pytest.raises(VqgenError, match=match) as e:
        pipe(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(VqgenError):
        pipe(["a red circle", bad])


def test_bad_settings(pipe):
    with pytest.raises(VqgenError, match="num_images"):
        pipe("a red circle", num_images=0)
    with pytest.raises(VqgenError, match="output_type"):
        pipe("a red circle", output_type="jpeg")
    with pytest.raises(VqgenError, match="one per prompt"):
        pipe(["a red circle", "a blue square"], guidance_scale=[1.0, 2.0, 3.0])
    with pytest.raises(VqgenError, match="reranker"):
        pipe("a red circle", rerank=4)
    with pytest.raises(VqgenError, match="temperature"):
        pipe("a red circle", temperature=-1.0)


def test_rerank_keeps_the_best_candidate(tmp_path):
    tok, model = tiny_components()
    clip_cfg = apply_overrides(get_preset("clip_reranker", "tiny"), [f"vocab_size={model.text_tokenizer.vocab_size}"])
    reranker = ClipReranker(clip_cfg, model.text_tokenizer).eval()
    pipe = TextToImagePipeline(tok, model, reranker=reranker)
    out = pipe(["a red circle", "two blue squares"], num_images=2, rerank=3, generator=torch.Generator().manual_seed(0),
               output_type="pt")
    assert out.scores.shape == (4,) and out.codes.shape == (4, 4, 4)
    # the kept image of each slot is the arg-max over the 3 candidates drawn for it
    cands = pipe(["a red circle", "two blue squares"], num_images=6, generator=torch.Generator().manual_seed(0),
                 output_type="pt")
    scores = reranker.score(torch.stack(cands.images), cands.prompts).view(4, 3)
    assert torch.allclose(out.scores, scores.max(1).values, atol=1e-5)
    pipe.save_pretrained(tmp_path / "p")
    again = TextToImagePipeline.from_pretrained(tmp_path / "p")
    assert again.reranker is not None

    # a default rerank applies when a call gives none; rerank=1 turns it off
    ranked = TextToImagePipeline(tok, model, reranker=reranker, defaults=PipelineDefaults(rerank=3))
    by_default = ranked(["a red circle", "two blue squares"], num_images=2, generator=torch.Generator().manual_seed(0),
                        output_type="pt")
    assert torch.equal(by_default.codes, out.codes)
    plain = ranked(["a red circle", "two blue squares"], num_images=2, rerank=1,
                   generator=torch.Generator().manual_seed(0), output_type="pt")
    unranked = pipe(["a red circle", "two blue squares"], num_images=2, generator=torch.Generator().manual_seed(0),
                    output_type="pt")
    assert plain.scores is None and torch.equal(plain.codes, unranked.codes)
    ranked.save_pretrained(tmp_path / "ranked")
    assert TextToImagePipeline.from_pretrained(tmp_path / "ranked").defaults.rerank == 3
    with pytest.raises(VqgenError, match="default rerank needs a reranker"):
        TextToImagePipeline(tok, model, defaults=PipelineDefaults(rerank=3))


def test_class_conditional_pipeline(tmp_path):
    tok, model = tiny_components("vim", num_classes=3)
    pipe = ClassConditionalPipeline(tok, model, class_names=["zero", "one", "two"])
    a = pipe(["one", 2], num_images=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="np")
    assert a.codes.shape == (4, 4, 4) and a.prompts == ["one", "one", "two", "two"]
    pipe.save_pretrained(tmp_path / "c")
    b = ClassConditionalPipeline.from_pretrained(tmp_path / "c")(["one", 2], num_images=2, guidance_scale=2.0,
                                                                 generator=torch.Generator().manual_seed(0),
                                                                 output_type="np")
    assert torch.equal(a.codes, b.codes)
    with pytest.raises(VqgenError, match="unknown class"):
        pipe("three")
    with pytest.raises(VqgenError, match="text-conditioned"):
        TextToImagePipeline(tok, model)


def test_caption_perplexity_post_selection(tmp_path):
    tok, model = tiny_components()
    run = get_preset("transformer", "unified-tiny")
    over = ["model.grid=4,4", "model.codebook_size=64", "model.dim=32", "model.mlp_dim=64", "model.depth=1",
            "model.image_first=true"]
    torch.manual_seed(1)
    scorer = build_model(apply_overrides(run, over).model).eval()
    scorer.text_tokenizer = model.text_tokenizer
    pipe = TextToImagePipeline(tok, model, reranker=scorer)
    prompts = ["a red circle", "two blue squares"]
    out = pipe(prompts, num_images=2, rerank=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    cands = pipe(prompts, num_images=6, rerank=1, generator=torch.Generator().manual_seed(0), output_type="pt")
    nll = scorer.caption_nll(cands.codes, scorer.text_condition(cands.prompts)).view(4, 3)
    assert torch.allclose(out.scores, -nll.min(1).values, atol=1e-5)  # the least caption perplexity is kept
    pipe.save_pretrained(tmp_path / "p")
    again = TextToImagePipeline.from_pretrained(tmp_path / "p")
    assert again.reranker.config.image_first
    with pytest.raises(VqgenError, match="text-after-image"):
        TextToImagePipeline.from_components(tmp_path / "p" / "tokenizer", tmp_path / "p" / "transformer",
                                            reranker=tmp_path / "p" / "transformer")


def test_load_reranker_takes_either_kind_and_refuses_others(tmp_path):
    from vqgen.rerank.train import load_reranker

    tok, model = tiny_components()
    run = apply_overrides(get_preset("transformer", "unified-tiny"),
                          ["model.grid=4,4", "model.codebook_size=64", "model.dim=32", "model.mlp_dim=64",
                           "model.depth=1", "model.image_first=true"])
    scorer = build_model(run.model).eval()
    scorer.text_tokenizer = model.text_tokenizer
    scorer.save_pretrained(tmp_path / "run" / "model")
    assert load_reranker(tmp_path / "run").config.image_first
    model.save_pretrained(tmp_path / "parti")
    with pytest.raises(VqgenError, match="not a reranker"):
        load_reranker(tmp_path / "parti")
