"""Caption diversity of the shapes data and the wording hold-out suite."""
import json
import re

import numpy as np
import pytest

from vqgen.errors import VqgenError
from vqgen.shapes.captions import caption_of, paraphrase_of
from vqgen.shapes.dataset import ShapesDataset, write_shapes_dataset
from vqgen.shapes.scenes import sample_spec
from vqgen.shapes.suite import (HOLDOUT_PATH, HOLDOUT_SIZES, build_holdout_suite, held_out_wordings, load_suite)
from vqgen.shapes.vocabulary import CATEGORIES, category_of, validate_spec
from vqgen.shapes.wording import (HELD_OUT, TRAIN, caption_variant, caption_variants, held_out_phrases,
                                  parse_caption, same_scene, typo)


def words(text: str) -> str:
    """Lower-case words separated by single spaces, padded, for whole-phrase search."""
    return " " + " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()) + " "


@pytest.fixture(scope="module")
def training_texts() -> list[str]:
    """Every caption of 600 scenes with 6 captions each, over three seeds (no typos: they could
    coincide with a held-out word by chance)."""
    return [t for seed in (0, 1, 2) for i in range(200)
            for t in ShapesDataset(200, 32, seed=seed, captions=6).scene(i).texts]


def test_held_out_words_and_templates_never_appear_in_training_captions(training_texts):
    joined = "|".join(words(t) for t in training_texts)
    for phrase in held_out_phrases():
        assert words(phrase) not in joined, phrase
    train_words = {w for t in training_texts for w in words(t).split()}
    for kind in ("color", "shape", "size", "relation"):  # the training part is really used
        for forms in TRAIN[kind].values():
            for f in forms:
                assert set((f[0] if kind == "shape" else f).split()) <= train_words, f


def test_word_lists_of_the_two_parts_do_not_overlap():
    for kind in TRAIN:
        for value in TRAIN[kind]:
            train, held = TRAIN[kind][value], HELD_OUT[kind][value]
            if kind == "shape":
                train, held = [f for pair in train for f in pair], [f for pair in held for f in pair]
            assert not set(train) & set(held), (kind, value)


def test_every_caption_parses_back_to_its_spec():
    rng = np.random.default_rng(5)
    for category in CATEGORIES:
        for _ in range(150):
            spec = sample_spec(rng, category)
            texts = [caption_of(spec), paraphrase_of(spec), caption_variant(spec, rng, "held_out")]
            texts += caption_variants(spec, 5, rng)
            for text in texts:
                assert same_scene(parse_caption(text), spec), (text, spec)


def test_same_scene_sees_order_and_direction_but_not_attributes():
    a = {"objects": [{"shape": "circle", "color": "red", "count": 1, "size": None},
                     {"shape": "square", "color": "blue", "count": 1, "size": "small"}],
         "relations": [{"a": 0, "relation": "above", "b": 1}]}
    b = {"objects": a["objects"][::-1], "relations": [{"a": 0, "relation": "below", "b": 1}]}
    assert same_scene(a, b)
    assert not same_scene(a, {**b, "relations": [{"a": 0, "relation": "above", "b": 1}]})
    assert not same_scene(a, {**a, "objects": [a["objects"][0], {**a["objects"][1], "size": "large"}]})
    with pytest.raises(VqgenError, match="names no shape"):
        parse_caption("a crimson blob")


def test_captions_are_deterministic_and_leave_scenes_unchanged():
    one, many = ShapesDataset(30, 32, seed=4), ShapesDataset(30, 32, seed=4, captions=4, typo_rate=0.1)
    again = ShapesDataset(30, 32, seed=4, captions=4, typo_rate=0.1)
    for i in range(30):
        s, m = one.scene(i), many.scene(i)
        assert (m.caption, m.spec, m.objects) == (s.caption, s.spec, s.objects)
        assert m.texts == again.scene(i).texts and len(m.texts) == 4 and m.texts[0] == s.caption
        assert s.texts == (s.caption,)
    assert "texts" not in one[0].meta and many[0].meta["texts"] == list(many.scene(0).texts)
    assert many[0].text == one[0].text
    assert np.array_equal(np.asarray(many[0].image), np.asarray(one[0].image))


def test_training_wordings_never_equal_a_suite_prompt_or_paraphrase(training_texts):
    assert not set(training_texts) & held_out_wordings()


def test_typos_are_seeded_and_spare_short_words():
    text = "a small crimson circle to the left of three blue squares"
    assert typo(text, np.random.default_rng(0), 0.5) == typo(text, np.random.default_rng(0), 0.5)
    noisy = typo(text, np.random.default_rng(0), 0.99)
    assert noisy != text and len(noisy.split()) == len(text.split())
    for w, n in zip(text.split(), noisy.split()):
        assert n == w if len(w) < 4 else abs(len(n) - len(w)) <= 1


def test_write_shapes_dataset_stores_texts(tmp_path):
    stats = write_shapes_dataset(tmp_path / "d", num=6, size=32, seed=2, progress=False, captions=3)
    rows = [json.loads(line) for line in (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()]
    assert stats["captions"] == 3 and stats["distinct_texts"] >= 12
    for row in rows:
        assert row["texts"][0] == row["text"] and len(row["texts"]) == 3
        assert all(same_scene(parse_caption(t), row["spec"]) for t in row["texts"])
    with pytest.raises(VqgenError, match="captions"):
        ShapesDataset(3, captions=0)
    with pytest.raises(VqgenError, match="typo rate"):
        ShapesDataset(3, captions=2, typo_rate=1.0)


def test_holdout_file_is_the_built_suite_and_uses_held_out_wording_only():
    assert HOLDOUT_PATH.is_file(), "run vqgen.shapes.suite.write_holdout_suite()"
    suite = load_suite("holdout")
    assert suite == load_suite(HOLDOUT_PATH) == build_holdout_suite()
    assert len(suite) >= 250 and {item["category"] for item in suite} == set(CATEGORIES)
    assert len({item["prompt"] for item in suite}) == len(suite)
    assert max(len(item["prompt"]) for item in suite) <= 200  # the default pipeline's max_prompt_length
    train_words = {w for kind in ("color", "size") for forms in TRAIN[kind].values() for f in forms
                   for w in f.split()} | {f[0] for forms in TRAIN["shape"].values() for f in forms}
    for category, num in HOLDOUT_SIZES.items():
        items = [item for item in suite if item["category"] == category]
        plain, misspelt = items[:num], items[num:]
        assert len(misspelt) == len(plain[::5])
        for item, copy in zip(plain[::5], misspelt):
            assert copy["spec"] == item["spec"] and copy["prompt"] != item["prompt"]
        for item in plain:
            assert validate_spec(item["spec"]) == item["spec"] and category_of(item["spec"]) == category
            assert same_scene(parse_caption(item["prompt"]), item["spec"]), item["prompt"]
            rest = words(item["prompt"])
            for phrase in sorted(held_out_phrases(), key=len, reverse=True):
                rest = rest.replace(words(phrase), " ")
            assert not set(rest.split()) & train_words, item["prompt"]  # e.g. "square" only in "square shape"


def test_holdout_file_ships_inside_the_package():
    from importlib.resources import files
    from pathlib import Path

    resource = files("vqgen").joinpath("prompts", HOLDOUT_PATH.name)
    assert resource.is_file() and Path(str(resource)).resolve() == HOLDOUT_PATH


# ----------------------------------------------------------------------------- one caption per step
def caption_codes(out, n: int = 24):
    """Codes whose records hold three captions each (``meta["texts"]``, the canonical one first)."""
    import torch

    from vqgen.data.codes import CodeShardWriter

    g = torch.Generator().manual_seed(0)
    data = ShapesDataset(n, 32, seed=0, captions=3)
    metas = [data[i].meta for i in range(n)]
    with CodeShardWriter(out, (4, 4), 32, shard_size=10) as w:
        w.add(torch.randint(0, 32, (n, 4, 4), generator=g), texts=[m["texts"][0] for m in metas], metas=metas)
    return out, metas


def test_transformer_training_reads_one_seeded_caption_per_record_and_step(tmp_path):
    import torch

    from vqgen.data.captions import pick_captions
    from vqgen.transformer.config import RunConfig  # noqa: F401  (the trainer's config module loads)
    from vqgen.transformer.train import prepare, resolve_config

    codes, metas = caption_codes(tmp_path / "codes")
    cfg, _ = resolve_config(tmp_path / "run", "parti-tiny", [], 2)
    cfg, data, _, tok = prepare(cfg, codes, tmp_path / "run", False)
    assert data.captions is not None and data.captions.count.tolist() == [3] * 24
    idx = torch.arange(24)
    _, plain = data.batch(idx, "cpu")
    assert torch.equal(plain.text_ids, data.text_ids)  # evaluation reads each record's text
    _, a = data.batch(idx, "cpu", draw=(5, 0))
    _, b = data.batch(idx, "cpu", draw=(5, 0))
    _, c = data.batch(idx, "cpu", draw=(6, 0))
    assert torch.equal(a.text_ids, b.text_ids) and not torch.equal(a.text_ids, c.text_ids)
    picks = pick_captions(data.captions.count, data.seed, 5, 0)
    want, _ = tok.encode([m["texts"][int(k)] for m, k in zip(metas, picks)], cfg.model.text.max_len)
    assert torch.equal(a.text_ids, want)
    seen = torch.stack([pick_captions(torch.full((2000,), 3), 0, s) for s in range(3)])
    assert set(seen.unique().tolist()) == {0, 1, 2} and abs(float((seen == 0).float().mean()) - 1 / 3) < 0.03


def test_canonical_share_reads_the_canonical_caption_that_often(tmp_path):
    import torch

    from vqgen.data.captions import pick_captions, pick_texts
    from vqgen.transformer.train import prepare, resolve_config

    counts = torch.full((20000,), 4)
    assert torch.equal(pick_captions(counts, 0, 3), pick_captions(counts, 0, 3, canonical=0.0))  # 0 = as before
    half = pick_captions(counts, 0, 3, canonical=0.5)
    assert abs(float((half == 0).float().mean()) - (0.5 + 0.5 / 4)) < 0.02  # share + (1 - share) / K
    assert set(half.unique().tolist()) == {0, 1, 2, 3}
    assert (pick_captions(counts, 0, 3, canonical=1.0) == 0).all()

    codes, metas = caption_codes(tmp_path / "codes")
    cfg, _ = resolve_config(tmp_path / "run", "parti-tiny", ["train.canonical_share=1.0"], 2)
    cfg, data, _, tok = prepare(cfg, codes, tmp_path / "run", False)
    idx = torch.arange(24)
    _, every = data.batch(idx, "cpu", draw=(5, 0))
    assert torch.equal(every.text_ids, data.text_ids)  # the canonical caption each time: each record's text
    texts = [m["texts"][0] for m in metas]
    assert pick_texts(texts, metas, 0, 5, canonical=1.0) == texts  # the streamed path picks alike


def test_training_on_several_captions_resumes_bit_identically(tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    from tests.test_train import crash_after
    from vqgen.transformer.train import train

    codes, _ = caption_codes(tmp_path / "codes")
    sets = ["train.batch_size=8", "train.ckpt_every=3", "model.dropout=0.0"]
    straight, resumed = tmp_path / "a", tmp_path / "b"
    train(codes, straight, preset="parti-tiny", steps=6, overrides=sets, show_progress=False)
    shutil.copytree(straight, resumed)
    crash_after(resumed, 3)
    train(codes, resumed, steps=6, show_progress=False)
    a, b = (load_file(str(r / "model" / "model.safetensors")) for r in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reranker_training_reads_one_caption_per_pair_and_step_and_resumes_identically(tmp_path, monkeypatch):
    import shutil
    from dataclasses import replace

    import torch
    from safetensors.torch import load_file

    import vqgen.rerank.train as rtrain
    from vqgen.config import get_preset
    from tests.test_train import crash_after

    data = tmp_path / "data"
    write_shapes_dataset(data, 40, 32, seed=0, progress=False, captions=3)
    pairs = rtrain.load_pairs(data, 32, 10, show_progress=False)
    assert pairs.captions is not None and all(len(c) == 3 for c in pairs.captions)
    read: list[list[str]] = []
    real = rtrain.contrastive_loss
    monkeypatch.setattr(rtrain, "contrastive_loss", lambda img, txt, scale, texts, neg: (read.append(texts),
                                                                                       real(img, txt, scale, texts, neg))[1])
    cfg = replace(get_preset(rtrain.FAMILY, "tiny"), steps=6, ckpt_every=3, eval_every=100)
    rtrain.train_reranker(cfg, data, tmp_path / "a", show_progress=False)
    assert {t for texts in read for t in texts} - set(pairs.texts)  # not only the canonical captions
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    crash_after(tmp_path / "b", 3)
    straight = read[3:]
    read.clear()
    rtrain.train_reranker(cfg, data, tmp_path / "b", show_progress=False)
    assert read == straight  # the resumed run reads the same captions
    a, b = (load_file(str(r / "model" / "model.safetensors")) for r in (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_data_shapes_captions(tmp_path, capsys):
    from vqgen.cli import main

    out = tmp_path / "d"
    assert main(["data", "shapes", "--out", str(out), "--num", "4", "--size", "32", "--captions", "3",
                 "--typo-rate", "0.1", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["captions"] == 3 and summary["typo_rate"] == 0.1
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["texts"] for r in rows] == [list(ShapesDataset(4, 32, 0, 3, 0.1).scene(i).texts) for i in range(4)]
    with pytest.raises(SystemExit):
        main(["data", "shapes", "--out", str(tmp_path / "e"), "--typo-rate", "1.5"])
