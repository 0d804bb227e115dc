"""Pipelines on tiny randomly initialised components: text, class and unconditional types, the
stage registries (decoder, reranker, upsampler), pipeline.json, clusters, image completion."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.errors import ConfigError, VqgenError
from vqgen.pipelines import (DECODERS, ClassConditionalPipeline, Pipeline, PipelineOutput, TextToImagePipeline,
                             UnconditionalPipeline)
from vqgen.pipelines.base import PIPELINE_NAME
from vqgen.sampling import SamplingConfig
from tests.tiny import tiny_components, tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(sampling=SamplingConfig(guidance_scale=2.0), max_prompt_length=60)


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
    assert meta["sampling"]["guidance_scale"] == 2.0 and meta["sampling"]["decoder"] == "autoregressive"
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
    parts = tiny_components(reranker="clip")
    tok, model, reranker = parts["tokenizer"], parts["transformer"], parts["reranker"]
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
    assert again.reranker is not None and again.stage_names == {"reranker": "clip"}
    assert json.loads((tmp_path / "p" / PIPELINE_NAME).read_text())["stages"] == {"reranker": "clip"}

    # a default rerank applies when a call gives none; rerank=1 turns it off
    ranked = TextToImagePipeline(tok, model, reranker=reranker, sampling=SamplingConfig(rerank=3))
    by_default = ranked(["a red circle", "two blue squares"], num_images=2, generator=torch.Generator().manual_seed(0),
                        output_type="pt")
    assert torch.equal(by_default.codes, out.codes)
    plain = ranked(["a red circle", "two blue squares"], num_images=2, rerank=1,
                   generator=torch.Generator().manual_seed(0), output_type="pt")
    unranked = pipe(["a red circle", "two blue squares"], num_images=2, generator=torch.Generator().manual_seed(0),
                    output_type="pt")
    assert plain.scores is None and torch.equal(plain.codes, unranked.codes)
    ranked.save_pretrained(tmp_path / "ranked")
    assert TextToImagePipeline.from_pretrained(tmp_path / "ranked").sampling.rerank == 3
    with pytest.raises(ConfigError, match="rerank: reranking needs a pipeline with a reranker"):
        TextToImagePipeline(tok, model, sampling=SamplingConfig(rerank=3))


def test_class_conditional_pipeline(tmp_path):
    parts = tiny_components("vim", num_classes=3)
    tok, model = parts["tokenizer"], parts["transformer"]
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
    assert pipe(["2", " one "], output_type="codes").prompts == ["two", "one"]  # an index typed as text, a name
    with pytest.raises(VqgenError, match="conditioned on 'text'"):
        TextToImagePipeline(tok, model)
    assert isinstance(Pipeline.from_pretrained(tmp_path / "c"), ClassConditionalPipeline)  # any type by its json
    with pytest.raises(VqgenError, match="expected 'text_to_image'"):
        TextToImagePipeline.from_pretrained(tmp_path / "c")


def test_caption_perplexity_post_selection(tmp_path):
    parts = tiny_components(reranker="caption")
    scorer = parts["reranker"]
    pipe = TextToImagePipeline(**parts)
    prompts = ["a red circle", "two blue squares"]
    out = pipe(prompts, num_images=2, rerank=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    cands = pipe(prompts, num_images=6, rerank=1, generator=torch.Generator().manual_seed(0), output_type="pt")
    nll = scorer.caption_nll(cands.codes, scorer.text_condition(cands.prompts)).view(4, 3)
    assert torch.allclose(out.scores, -nll.min(1).values, atol=1e-5)  # the least caption perplexity is kept
    pipe.save_pretrained(tmp_path / "p")
    again = TextToImagePipeline.from_pretrained(tmp_path / "p")
    assert again.reranker.config.image_first and again.stage_names == {"reranker": "caption_perplexity"}
    with pytest.raises(VqgenError, match="cannot be a reranker"):
        TextToImagePipeline.from_components(tmp_path / "p" / "tokenizer", tmp_path / "p" / "transformer",
                                            reranker=tmp_path / "p" / "transformer")


def test_load_reranker_takes_either_kind_and_refuses_others(tmp_path):
    from vqgen.rerank.train import load_reranker

    parts = tiny_components(reranker="caption")
    model, scorer = parts["transformer"], parts["reranker"]
    scorer.save_pretrained(tmp_path / "run" / "model")
    assert load_reranker(tmp_path / "run").config.image_first
    model.save_pretrained(tmp_path / "parti")
    with pytest.raises(VqgenError, match="not a reranker"):
        load_reranker(tmp_path / "parti")


# ----------------------------------------------------------------------------- stages and new paths
def reversed_greedy(model, cond, *, num, config, generator, progress, clusters, guidance):
    """A stand-in decoder for the registry test: the greedy codes, flipped left to right."""
    from dataclasses import replace

    from vqgen.sampling import generate

    codes = generate(model, cond, num=num, config=replace(config, temperature=0.0), guidance=guidance)
    return codes.flip(-1)  # (B, h, w)


def test_a_new_decoder_is_one_registry_entry(pipe, monkeypatch):
    monkeypatch.setitem(DECODERS, "reversed_greedy", "tests.test_pipeline:reversed_greedy")
    greedy = pipe("a red circle", num_images=2, temperature=0.0, output_type="codes")
    flipped = pipe("a red circle", num_images=2, decoder="reversed_greedy", output_type="codes")
    assert torch.equal(flipped.codes, greedy.codes.flip(-1))
    naive = pipe("a red circle", num_images=2, decoder="naive", generator=torch.Generator().manual_seed(3),
                 output_type="codes")
    cached = pipe("a red circle", num_images=2, generator=torch.Generator().manual_seed(3), output_type="codes")
    assert torch.equal(naive.codes, cached.codes)  # the reference decoder agrees with the cached one
    with pytest.raises(ConfigError, match="decoder: unknown decoder 'nope'"):
        pipe("a red circle", decoder="nope")


def test_settings_are_checked_once_with_the_field_named(pipe):
    for kwargs, field in ((dict(guidance_scale=-1.0), "guidance_scale"), (dict(rerank=10_000), "rerank"),
                          (dict(top_k=-3), "top_k"), (dict(guidance_scale=[1.0, float("nan")]), "guidance_scale"),
                          (dict(cluster=4), "cluster")):
        prompts = ["a red circle", "two blue squares"]
        with pytest.raises(ConfigError, match=field) as e:
            pipe(prompts, **kwargs)
        assert "\n" not in str(e.value)
    settings = SamplingConfig(guidance_scale=3.0, top_k=20)
    a = pipe("a red circle", settings=settings, generator=torch.Generator().manual_seed(1), output_type="codes")
    b = pipe("a red circle", guidance_scale=3.0, top_k=20, generator=torch.Generator().manual_seed(1),
             output_type="codes")
    assert torch.equal(a.codes, b.codes)


def test_pipeline_json_names_its_stages_and_refuses_paths_outside(tmp_path):
    p = tiny_pipeline(reranker="clip", upsampler=True, sampling=SamplingConfig(rerank=2))
    d = p.save_pretrained(tmp_path / "p")
    meta = json.loads((d / PIPELINE_NAME).read_text())
    assert meta["stages"] == {"reranker": "clip", "upsampler": "conv"}
    assert meta["components"] == {k: k for k in ("tokenizer", "transformer", "reranker", "upsampler")}
    loaded = TextToImagePipeline.from_pretrained(d)
    out = loaded("a red circle", super_resolution=True, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert out.images[0].shape == (3, 32, 32) and loaded.upsample_scale == 2
    (tmp_path / "outside").mkdir()
    p.transformer.save_pretrained(tmp_path / "outside" / "model")
    (d / PIPELINE_NAME).write_text(json.dumps({**meta, "components": {**meta["components"],
                                                                       "transformer": "../outside/model"}}))
    with pytest.raises(VqgenError, match="points outside"):
        TextToImagePipeline.from_pretrained(d)
    (d / PIPELINE_NAME).write_text(json.dumps({**meta, "stages": {**meta["stages"], "upsampler": "magic"}}))
    with pytest.raises(VqgenError, match="unknown upsampler 'magic'"):
        TextToImagePipeline.from_pretrained(d)


def test_the_first_pipeline_json_layout_still_loads(pipe, tmp_path):
    d = pipe.save_pretrained(tmp_path / "p")
    (d / PIPELINE_NAME).write_text(json.dumps({
        "pipeline_type": "text_to_image", "components": {"tokenizer": "tokenizer", "transformer": "transformer"},
        "defaults": {"guidance_scale": 2.5, "temperature": 0.5, "top_k": None, "top_p": None,
                     "max_prompt_length": 60, "rerank": 1}, "vqgen_version": "0.1.0"}))
    old = TextToImagePipeline.from_pretrained(d)
    assert old.sampling == SamplingConfig(guidance_scale=2.5, temperature=0.5) and old.max_prompt_length == 60


def test_cluster_sampling_is_a_pipeline_setting(tmp_path):
    from vqgen.sampling import fit_clusters

    p = tiny_pipeline()
    with pytest.raises(ConfigError, match="no codebook clusters"):
        p("a red circle", cluster=2)
    clusters = fit_clusters(p.tokenizer.codebook_embeddings(), num_clusters=8)
    clustered = p.with_components(clusters=clusters, sampling=SamplingConfig(cluster=1, temperature=0.0))
    out = clustered(["a red circle", "two blue squares"], num_images=3, output_type="codes")
    assert out.codes.shape == (6, 4, 4)
    d = clustered.save_pretrained(tmp_path / "c")
    again = TextToImagePipeline.from_pretrained(d)
    assert torch.equal(again.clusters, clusters) and again.sampling.cluster == 1
    assert json.loads((d / PIPELINE_NAME).read_text())["clusters"] == "clusters.safetensors"
    with pytest.raises(ConfigError, match="at most 8 clusters"):
        again("a red circle", cluster=9)


def test_unconditional_generation_and_image_completion(tmp_path):
    p = tiny_pipeline("vim")
    assert isinstance(p, UnconditionalPipeline)
    out = p(num_images=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.codes.shape == (3, 4, 4) and out.prompts == ["", "", ""]
    with pytest.raises(VqgenError, match="takes no prompt"):
        p("a red circle")
    with pytest.raises(ConfigError, match="guidance_scale"):
        p(guidance_scale=2.0)
    source = out.images[0]  # (3, 16, 16)
    done = p(num_images=4, prefix_image=source, prefix_rows=2, generator=torch.Generator().manual_seed(1),
             output_type="codes")
    want = p.tokenizer.encode(source[None]).flatten(1)[:, :8]  # the first two code rows
    assert torch.equal(done.codes.flatten(1)[:, :8], want.expand(4, -1))
    assert not torch.equal(done.codes[0], done.codes[1])  # the rest is sampled
    pil = Image.fromarray((source.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    from_pil = p(num_images=1, prefix_image=pil, prefix_rows=2, output_type="codes")
    assert torch.equal(from_pil.codes.flatten(1)[:, :8], want)
    with pytest.raises(VqgenError, match="prefix_rows must be 1..3"):
        p(prefix_image=source, prefix_rows=4)
    p.save_pretrained(tmp_path / "u")
    assert isinstance(Pipeline.from_pretrained(tmp_path / "u"), UnconditionalPipeline)


def test_text_prompts_can_complete_an_image_too(pipe):
    source = pipe("a red circle", output_type="pt", generator=torch.Generator().manual_seed(0)).images[0]
    done = pipe("a red circle", num_images=2, prefix_image=source, prefix_rows=1, output_type="codes")
    assert torch.equal(done.codes[:, 0], pipe.tokenizer.encode(source[None])[:, 0].expand(2, -1))


def test_a_class_conditioned_tokenizer_decoder_gets_each_rows_class():
    p = tiny_pipeline("vim", num_classes=3, tokenizer_classes=3, class_names=["a", "b", "c"])
    out = p(["a", "c"], num_images=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    images = torch.stack(out.images)  # (4, 3, 16, 16)
    by_hand = p.tokenizer.decode(out.codes, torch.tensor([0, 0, 2, 2]))
    torch.testing.assert_close(images, by_hand, rtol=0, atol=0)
    other = p.tokenizer.decode(out.codes, torch.tensor([1, 1, 1, 1]))
    assert not torch.equal(images, other)  # the class reaches the decoder


def test_the_bundled_model_loads_and_draws_what_it_is_asked():
    """The bundled default model end to end: load, sample (reranked by default), score the result."""
    from vqgen.pipelines import load_pipeline
    from vqgen.shapes import load_suite, score

    p = load_pipeline()
    assert isinstance(p, TextToImagePipeline) and p.sampling.rerank == 8 and p.stage_names == {"reranker": "clip"}
    item = next(it for it in load_suite() if it["category"] == "single")
    out = p(item["prompt"], num_images=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images[0].shape == (64, 64, 3) and out.scores.shape == (2,)
    assert sum(score(im, item["spec"]).passed for im in out.images) >= 1  # single objects pass 0.97 of the time
    assert p.clusters.shape == (256,) and int(p.clusters.max()) == 31  # cluster sampling works out of the box
    clustered = p(item["prompt"], rerank=1, cluster=4, generator=torch.Generator().manual_seed(0), output_type="codes")
    assert clustered.codes.shape == (1, 8, 8)


# ----------------------------------------------------------------------------- the commands
def test_generate_command_with_the_bundled_model(tmp_path, capsys):
    """`vqgen generate` end to end: PNGs and a grid; batches do not change the images; the images
    are those the server gives for the same seed (one generator per image from (seed, index))."""
    from vqgen.cli import main
    from vqgen.pipelines import load_pipeline
    from vqgen.sampling import image_generators

    args = ["generate", "a blue square", "-n", "3", "--rerank", "1", "--seed", "5", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a"), "--batch-size", "2", "--grid"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("3 images of 'a blue square'")
    files = sorted((tmp_path / "a").glob("*.png"))
    assert [f.name for f in files] == [f"a-blue-square-s5-{i}.png" for i in range(3)] + ["a-blue-square-s5-grid.png"]
    assert main(args + ["--out", str(tmp_path / "b"), "--batch-size", "3"]) == 0
    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / f"a-blue-square-s5-{i}.png")),
                              np.asarray(Image.open(tmp_path / "b" / f"a-blue-square-s5-{i}.png")))
    pipe = load_pipeline()
    direct = pipe(["a blue square"] * 3, rerank=1, generator=image_generators(5, 3), output_type="np")
    assert np.array_equal(direct.images[2], np.asarray(Image.open(files[2])))


def test_generate_command_for_class_and_unconditional_pipelines(tmp_path, capsys):
    from vqgen.cli import main

    classes = tiny_pipeline("vim", num_classes=3, class_names=["cat", "dog", "owl"]).save_pretrained(tmp_path / "c")
    assert main(["generate", "--model", str(classes), "--class", "owl", "-n", "2", "--out", str(tmp_path / "o1"),
                 "--no-progress"]) == 0
    assert sorted(f.name for f in (tmp_path / "o1").glob("*.png")) == ["owl-s0-0.png", "owl-s0-1.png"]
    assert main(["generate", "dog", "--model", str(classes), "-n", "1", "--out", str(tmp_path / "o1"),
                 "--no-progress"]) == 0
    assert main(["generate", "--model", str(classes), "--class", "emu", "--out", str(tmp_path / "o1")]) == 2
    assert "unknown class 'emu'" in capsys.readouterr().err
    plain = tiny_pipeline("vim").save_pretrained(tmp_path / "u")
    assert main(["generate", "--model", str(plain), "-n", "2", "--out", str(tmp_path / "o2"), "--no-progress"]) == 0
    first = tmp_path / "o2" / "image-s0-0.png"
    assert main(["generate", "--model", str(plain), "-n", "2", "--prefix-image", str(first), "--prefix-rows", "2",
                 "--out", str(tmp_path / "o3"), "--no-progress"]) == 0
    assert len(list((tmp_path / "o3").glob("*.png"))) == 2
    assert main(["generate", "a cat", "--model", str(plain), "--out", str(tmp_path / "o2")]) == 2
    assert "unconditional" in capsys.readouterr().err


def test_pipeline_build_and_clusters_commands(tmp_path, capsys):
    from vqgen.cli import main

    parts = tiny_components(reranker="clip")
    for name, model in parts.items():
        model.save_pretrained(tmp_path / name / "model")  # a training run keeps its model in model/
    assert main(["pipeline", "build", "--tokenizer", str(tmp_path / "tokenizer"),
                 "--transformer", str(tmp_path / "transformer"), "--reranker", str(tmp_path / "reranker"),
                 "--out", str(tmp_path / "p"), "--set", "guidance_scale=2", "--set", "rerank=2"]) == 0
    built = TextToImagePipeline.from_pretrained(tmp_path / "p")
    assert built.sampling.rerank == 2 and built.sampling.guidance_scale == 2.0 and built.clusters is None
    assert main(["pipeline", "clusters", str(tmp_path / "p"), "--num", "6"]) == 0
    clustered = TextToImagePipeline.from_pretrained(tmp_path / "p")
    assert clustered.clusters.shape == (64,) and int(clustered.clusters.max()) == 5
    capsys.readouterr()
    assert main(["generate", "a red circle", "--model", str(tmp_path / "p"), "--cluster", "2", "-n", "1",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert main(["pipeline", "build", "--tokenizer", str(tmp_path / "tokenizer"), "--transformer",
                 str(tmp_path / "transformer"), "--out", str(tmp_path / "q"), "--set", "rerank=0"]) == 2
    assert "rerank" in capsys.readouterr().err


def test_save_never_replaces_a_folder_that_is_not_a_pipeline(pipe, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(VqgenError, match="not a pipeline directory"):
        pipe.save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(VqgenError, match="not a pipeline directory"):
        pipe.save_pretrained(tmp_path / "afile")
    pipe.save_pretrained(tmp_path / "p")
    pipe.save_pretrained(tmp_path / "p")  # a pipeline directory is replaced whole
    (tmp_path / "empty").mkdir()
    pipe.save_pretrained(tmp_path / "empty")


def test_a_saved_pipeline_folder_honours_the_umask(pipe, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        d = pipe.save_pretrained(tmp_path / "p")
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert stat.S_IMODE((d / "pipeline.json").stat().st_mode) == 0o644


def test_a_coglm_model_reranks_by_caption_perplexity():
    """A text-first unified model trained with the CogLM objective scores captions, so it can be a
    pipeline's reranker (and its transformer)."""
    from vqgen.config import apply_overrides, get_preset
    from vqgen.transformer import build_model
    from tests.tiny import TINY_MODEL

    parts = tiny_components()
    run = apply_overrides(get_preset("transformer", "unified-tiny"), TINY_MODEL + ["model.coglm_mix=0.5"])
    coglm = build_model(run.model).eval()
    coglm.text_tokenizer = parts["transformer"].text_tokenizer
    pipe = TextToImagePipeline(parts["tokenizer"], parts["transformer"], reranker=coglm)
    assert pipe.stage_names == {"reranker": "caption_perplexity"}
    out = pipe("a red circle", num_images=2, rerank=3, generator=torch.Generator().manual_seed(0), output_type="codes")
    assert out.scores.shape == (2,) and bool(torch.isfinite(out.scores).all())
    both = TextToImagePipeline(parts["tokenizer"], coglm, reranker=coglm)  # one checkpoint, both roles
    assert both("a red circle", rerank=2, output_type="codes").codes.shape == (1, 4, 4)
