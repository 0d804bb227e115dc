"""The README's "train your own" path, end to end with tiny presets and a few steps each, through
the real command-line entry point: data → tokenizer → codes → transformer → reranker → pipeline
(build, clusters) → generate → eval. Each command is the README's, only smaller."""
from __future__ import annotations

import json

import pytest

from vqgen.cli import main


def run(*argv: str) -> None:
    assert main([*argv]) == 0, " ".join(argv)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    w = tmp_path_factory.mktemp("readme")
    run("data", "shapes", "--out", str(w / "shapes"), "--num", "48", "--size", "16", "--seed", "0", "--no-progress")
    run("tokenizer", "train", "--data", str(w / "shapes"), "--preset", "tiny", "--out", str(w / "tok"),
        "--steps", "4", "--no-progress")
    run("tokenizer", "encode", str(w / "tok"), "--data", str(w / "shapes"), "--out", str(w / "codes"), "--no-progress")
    run("train", "--codes", str(w / "codes"), "--preset", "parti-tiny", "--out", str(w / "t2i"), "--steps", "4",
        "--no-progress")
    run("rerank", "train", "--data", str(w / "shapes"), "--preset", "tiny", "--out", str(w / "rerank"),
        "--steps", "4", "--no-progress")
    run("pipeline", "build", "--tokenizer", str(w / "tok"), "--transformer", str(w / "t2i"),
        "--reranker", str(w / "rerank"), "--out", str(w / "pipe"), "--set", "guidance_scale=2", "--set", "rerank=2")
    run("pipeline", "clusters", str(w / "pipe"), "--num", "8")
    return w


def test_trained_pipeline_generates_and_is_evaluated(pipeline_dir, capsys):
    w = pipeline_dir
    meta = json.loads((w / "pipe" / "pipeline.json").read_text())
    assert meta["pipeline_type"] == "text_to_image" and meta["stages"] == {"reranker": "clip"}
    assert meta["sampling"]["rerank"] == 2 and meta["clusters"] == "clusters.safetensors"
    capsys.readouterr()
    run("generate", "a red circle", "--model", str(w / "pipe"), "--cluster", "4", "-n", "3", "--grid",
        "--out", str(w / "out"), "--no-progress")
    assert len(list((w / "out").glob("a-red-circle-s0-*.png"))) == 4  # 3 images and the grid
    run("eval", "shapes", "--model", str(w / "pipe"), "--per-category", "1", "--samples", "1", "--rerank", "2",
        "--out", str(w / "report"), "--no-images", "--no-progress")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sampling"]["cluster"] == 0 and summary["settings"]["g2-best2"]["n"] == 8  # one prompt a category
