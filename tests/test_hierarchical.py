"""Hierarchical text-to-image (issue 13 items 3, 5): the super-resolution model's cross-resolution
and local attention, its training loss, save/load with its low stage, the pipeline end to end
(Python, `vqgen hierarchical train/build`, `vqgen generate`, `vqgen eval shapes`)."""
from __future__ import annotations

import json

import pytest
import torch

from vqgen.cli import main
from vqgen.config import apply_overrides, get_preset
from vqgen.errors import ConfigError, VqgenError
from vqgen.sampling import SamplingConfig


def tiny_hierarchical(seed: int = 0, **model):
    """A random tiny hierarchy: a unified low stage (2x2 codes of 16) and a super-resolution model
    (4x4 codes of 64, the tiny tokenizer's grid), sharing one BPE, plus that tokenizer."""
    from tests.tiny import tiny_components
    from vqgen.transformer import build_model
    from vqgen.transformer.hierarchical import HierarchicalSR

    parts = tiny_components("unified")
    torch.manual_seed(seed)
    low_run = apply_overrides(get_preset("transformer", "unified-tiny"),
                              ["model.grid=2,2", "model.codebook_size=16", "model.dim=32", "model.mlp_dim=64",
                               "model.depth=1"])
    low = build_model(low_run.model).eval()
    low.text_tokenizer = parts["transformer"].text_tokenizer
    over = [f"model.text.vocab_size={low.config.text.vocab_size}"] + [f"model.{k}={v}" for k, v in model.items()]
    sr = HierarchicalSR(apply_overrides(get_preset("hierarchical", "tiny"), over).model, low=low).eval()
    return parts["tokenizer"], sr


def tiny_pipe(**sampling):
    from vqgen.pipelines.hierarchical import HierarchicalTextToImagePipeline

    tok, sr = tiny_hierarchical()
    return HierarchicalTextToImagePipeline(tok, sr, sampling=SamplingConfig(decoder="lopar", lopar_window=2, **sampling))


def test_cross_resolution_and_local_attention_limit_what_a_cell_sees():
    _, sr = tiny_hierarchical(window=3, low_window=1)  # one block: a cell's logits read its windows only
    cond = sr.text_condition(["a red circle"])
    low = torch.randint(0, 16, (1, 2, 2))
    high = torch.randint(0, 64, (1, 4, 4))
    base = sr.sr_logits(low, high, cond)[0, 0]  # cell (0, 0): low window = low cell (0, 0), high window (0..1, 0..1)
    far_low, far_high, near_low = low.clone(), high.clone(), low.clone()
    far_low[0, 1, 1] = (low[0, 1, 1] + 1) % 16
    far_high[0, 3, 3] = (high[0, 3, 3] + 1) % 64
    near_low[0, 0, 0] = (low[0, 0, 0] + 1) % 16
    assert torch.equal(sr.sr_logits(far_low, high, cond)[0, 0], base)
    assert torch.equal(sr.sr_logits(low, far_high, cond)[0, 0], base)
    assert not torch.allclose(sr.sr_logits(near_low, high, cond)[0, 0], base)
    other = sr.sr_logits(low, high, sr.text_condition(["two blue squares"]))[0, 0]
    assert not torch.allclose(other, base)  # the text is always visible
    assert sr.parent.tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]


def test_loss_counts_masked_cells_only():
    _, sr = tiny_hierarchical()
    cond = sr.text_condition(["a red circle"] * 2)
    low, high = torch.randint(0, 16, (2, 4)), torch.randint(0, 64, (2, 16))
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[:, :3] = True
    loss, _ = sr.compute_loss(high, cond, low=low, masked=masked)
    changed = high.clone()
    changed[:, :3] = (changed[:, :3] + 1) % 64  # masked cells are inputs as [MASK]: only their targets change
    other, _ = sr.compute_loss(changed, cond, low=low, masked=masked)
    logits = sr.sr_logits(low, high.masked_fill(masked, sr.mask_id), cond)
    want = torch.nn.functional.cross_entropy(logits[:, :3].flatten(0, 1), high[:, :3].flatten())
    assert torch.allclose(loss, want) and not torch.allclose(other, loss)
    full = sr.training_mask(64, torch.Generator().manual_seed(0))
    assert full.any(1).all() and full.all(1).any()  # every row masks something; some rows mask everything


def test_save_load_keeps_low_stage_and_outputs(tmp_path):
    from vqgen.io import load_pretrained
    from vqgen.pipelines import Pipeline

    pipe = tiny_pipe()
    out = pipe(["a red circle", "two blue squares"], num_images=2, generator=torch.Generator().manual_seed(3),
               output_type="codes")
    assert out.codes.shape == (4, 4, 4)
    pipe.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "pipeline.json").read_text())["pipeline_type"] == "hierarchical_text_to_image"
    assert (tmp_path / "p" / "transformer" / "low" / "model.safetensors").is_file()
    again = Pipeline.from_pretrained(tmp_path / "p")
    assert type(again) is type(pipe)
    same = again(["a red circle", "two blue squares"], num_images=2, generator=torch.Generator().manual_seed(3),
                 output_type="codes")
    assert torch.equal(out.codes, same.codes)
    sr = load_pretrained(tmp_path / "p" / "transformer")
    assert sr.low is not None and type(sr.low).__name__ == "Unified"


def test_pipeline_end_to_end_images_and_settings():
    pipe = tiny_pipe()
    out = pipe("a red circle", num_images=3, generator=[torch.Generator().manual_seed(1)], output_type="pt")
    assert len(out.images) == 3 and out.images[0].shape == (3, 16, 16)
    direct = pipe("a red circle", num_images=1, decoder="direct_sr", generator=torch.Generator().manual_seed(1),
                  output_type="codes")
    assert direct.codes.shape == (1, 4, 4)
    with pytest.raises(ConfigError, match="lopar or direct_sr"):
        pipe("a red circle", decoder="autoregressive")


def test_flat_models_and_pipelines_refuse_hierarchical_parts():
    from tests.tiny import tiny_components
    from vqgen.pipelines.hierarchical import HierarchicalTextToImagePipeline
    from vqgen.sampling.lopar import generate_lopar

    parts = tiny_components("unified")
    with pytest.raises(VqgenError, match="hierarchical model"):
        generate_lopar(parts["transformer"], num=1)
    with pytest.raises(VqgenError, match="hierarchical transformer"):
        HierarchicalTextToImagePipeline(parts["tokenizer"], parts["transformer"])
    _, sr = tiny_hierarchical()
    with pytest.raises(VqgenError, match="lopar or direct_sr"):
        sr.prefill(None, None)


def _codes(path, grid, vocab, texts, keys):
    from vqgen.data.codes import CodeShardWriter

    g = torch.Generator().manual_seed(len(grid) * vocab)
    w = CodeShardWriter(path, grid, vocab)
    w.add(torch.randint(0, vocab, (len(texts), *grid), generator=g), texts=texts, keys=keys)
    w.close()


def test_train_build_generate_and_eval_through_the_cli(tmp_path, capsys):
    tok, sr = tiny_hierarchical()
    sr.low.save_pretrained(tmp_path / "stage1")
    tok.save_pretrained(tmp_path / "tok")
    texts = ["a red circle", "two blue squares", "a green triangle above a red circle", "a small yellow square"] * 5
    keys = [f"k{i}" for i in range(len(texts))]
    _codes(tmp_path / "low", (2, 2), 16, texts, keys)
    _codes(tmp_path / "high", (4, 4), 64, texts, keys)
    train = ["hierarchical", "train", "--low-codes", str(tmp_path / "low"), "--high-codes", str(tmp_path / "high"),
             "--stage1", str(tmp_path / "stage1"), "--out", str(tmp_path / "run"), "--no-progress",
             "--set", "train.ckpt_every=3", "--set", "train.val_every=3"]
    assert main(train + ["--preset", "tiny", "--steps", "3"]) == 0
    assert main(train + ["--steps", "5"]) == 0  # resumes from step 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 5
    assert "val_dsr_loss" in capsys.readouterr().out
    bad = list(keys)
    bad[0] = "other"
    _codes(tmp_path / "high2", (4, 4), 64, texts, bad)
    assert main(["hierarchical", "train", "--low-codes", str(tmp_path / "low"), "--high-codes", str(tmp_path / "high2"),
                 "--stage1", str(tmp_path / "stage1"), "--out", str(tmp_path / "run2"), "--preset", "tiny"]) == 2
    assert "same records" in capsys.readouterr().err
    pipe_dir = tmp_path / "pipe"
    assert main(["hierarchical", "build", "--tokenizer", str(tmp_path / "tok"), "--sr", str(tmp_path / "run"),
                 "--stage1", str(tmp_path / "stage1"), "--out", str(pipe_dir), "--sampling", "lopar_window=2",
                 "--sampling", "lopar_remask=0.75"]) == 0
    meta = json.loads((pipe_dir / "pipeline.json").read_text())
    assert meta["sampling"]["decoder"] == "lopar" and meta["sampling"]["lopar_remask"] == 0.75
    assert main(["generate", "two blue squares", "--model", str(pipe_dir), "-n", "2", "--out", str(tmp_path / "img"),
                 "--no-progress"]) == 0
    assert len(list((tmp_path / "img").glob("*.png"))) >= 2
    capsys.readouterr()
    assert main(["eval", "shapes", "--model", str(pipe_dir), "--per-category", "1", "--samples", "1",
                 "--out", str(tmp_path / "report"), "--no-images", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sampling"]["decoder"] == "lopar"


def test_served_like_any_pipeline():
    pytest.importorskip("fastapi", reason="vqgen serve needs fastapi")
    pytest.importorskip("httpx", reason="the serve tests need httpx")
    from fastapi.testclient import TestClient

    from vqgen.serve.app import ServeConfig, create_app

    with TestClient(create_app(tiny_pipe(), ServeConfig(max_n=2))) as client:
        r = client.post("/v1/images/generations", json={"prompt": "a red circle", "n": 2, "seed": 4,
                                                        "response_format": "b64_json"})
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        again = client.post("/v1/images/generations", json={"prompt": "a red circle", "n": 2, "seed": 4,
                                                            "response_format": "b64_json"})
        assert [d["b64_json"] for d in again.json()["data"]] == [d["b64_json"] for d in r.json()["data"]]
