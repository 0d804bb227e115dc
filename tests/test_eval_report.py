"""`vqgen eval shapes --model`: the report of a tiny randomly initialised pipeline on a small suite."""
from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch

from vqgen.cli import main
from vqgen.errors import VqgenError
from vqgen.eval.report import ReportSettings, evaluate_pipeline, parse_guidance, select_prompts, setting_rows
from vqgen.pipelines import TextToImagePipeline
from vqgen.sampling import SamplingConfig
from vqgen.shapes.suite import build_suite
from tests.tiny import tiny_pipeline as build_tiny


def tiny_pipeline(with_reranker: bool = True) -> TextToImagePipeline:
    """16 px images from 4x4 codes, a one-block Parti, and a tiny reranker (random weights)."""
    return build_tiny(reranker="clip" if with_reranker else None, captions=[s["prompt"] for s in build_suite()],
                      sampling=SamplingConfig(guidance_scale=3.0))


NUM_CATEGORIES = len({s["category"] for s in build_suite()})  # the five core + the DrawBench categories


@pytest.fixture(scope="module")
def suite():
    return select_prompts(build_suite(), per_category=2)  # two prompts of each category


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return tiny_pipeline().save_pretrained(tmp_path_factory.mktemp("pipe") / "pipeline")


class RenderingPipe:
    """A stand-in pipeline that draws each image right (the prompt's spec) or wrong (another prompt's
    spec) by a coin from the prompt's generator, with an oracle reranker (the exact evaluator): the
    report's accuracies are then known from the renders."""

    device = torch.device("cpu")
    sampling = SamplingConfig()

    def __init__(self, suite: list[dict]):
        self.specs = {s["prompt"]: s["spec"] for s in suite}
        self.others = {s["prompt"]: suite[(i + 1) % len(suite)]["spec"] for i, s in enumerate(suite)}
        self.rerank_stage = self

    def __call__(self, prompts, num_images, guidance_scale, generator, output_type, **_):
        from vqgen.data.image import to_tensor
        from vqgen.shapes.scenes import render_spec

        images, rows = [], []
        for prompt, gen in zip(prompts, generator):
            for _ in range(num_images):
                right = float(torch.rand(1, generator=gen)) < 0.3 + 0.1 * guidance_scale
                spec = self.specs[prompt] if right else self.others[prompt]
                images.append(to_tensor(render_spec(spec, size=32, seed=int(torch.randint(1000, (1,), generator=gen)))))
                rows.append(prompt)
        return type("Out", (), {"images": images, "prompts": rows, "codes": None})

    def rerank_scores(self, images, codes, texts):
        from vqgen.shapes.evaluator import score

        return torch.tensor([float(score(im.permute(1, 2, 0).numpy(), self.specs[t]).passed)
                             for im, t in zip(images, texts)])


def test_accuracies_follow_the_images(suite, tmp_path):
    summary = evaluate_pipeline(RenderingPipe(suite), suite, tmp_path / "r",
                                ReportSettings(guidance=(0.0, 4.0), samples=2, rerank=3), show_progress=False)
    rows = [json.loads(x) for x in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    for name, s in summary["settings"].items():
        kept = setting_rows(rows, name)
        assert s["n"] == len(kept) == 2 * 2 * NUM_CATEGORIES
        assert {c: v["accuracy"] for c, v in s["categories"].items()} == _recount(kept)
        core = [r["passed"] for r in kept if r["category"] in ("single", "count", "relation", "binding", "multi")]
        assert s["core_overall"] == {"n": len(core), "accuracy": round(sum(core) / len(core), 4)}
    g0, g4 = summary["settings"]["g0"]["overall"], summary["settings"]["g4"]["overall"]
    assert 0.1 < g0 < g4  # right with probability 0.3 vs 0.7
    for g in ("g0", "g4"):  # an oracle reranker keeps a passing candidate whenever there is one
        assert summary["settings"][f"{g}-best3"]["overall"] == summary["candidates"][g]["oracle"]
        assert summary["rerank_gain"][g]["overall"] > 0
    assert (tmp_path / "r" / "accuracy_vs_guidance.svg").is_file()


def _recount(rows: list[dict]) -> dict[str, float]:
    by = defaultdict(list)
    for r in rows:
        by[r["category"]].append(r["passed"])
    return {c: round(sum(v) / len(v), 4) for c, v in by.items()}


def test_cli_report_files_and_summary(pipe_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "shapes", "--model", str(pipe_dir), "--per-category", "2", "--samples", "2",
                 "--guidance", "1,3", "--rerank", "3", "--out", str(out), "--batch", "16", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 2 * NUM_CATEGORIES and summary["samples"] == 2 and summary["rerank"] == 3
    assert list(summary["settings"]) == ["g1", "g3", "g1-best3", "g3-best3"]
    assert "--rerank 3" in summary["command"]
    for name in ("report.md", "results.jsonl", "accuracy_vs_guidance.svg"):
        assert (out / name).is_file(), name
    for cat in ("single", "count", "relation", "binding", "multi"):
        assert (out / f"grid_{cat}.png").is_file(), cat
    assert (out / "accuracy_vs_guidance.svg").read_text().startswith("<svg")
    assert "| **overall** |" in (out / "report.md").read_text()
    assert "| overall of the five core categories |" in (out / "report.md").read_text()

    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == summary["images_generated"] == 2 * (2 * NUM_CATEGORIES) * 2 * 3  # guidance x prompts x samples x candidates
    for name, s in summary["settings"].items():
        kept = setting_rows(rows, name)
        assert len(kept) == s["n"] == 2 * 2 * NUM_CATEGORIES
        assert {c: v["accuracy"] for c, v in s["categories"].items()} == _recount(kept)
        assert s["overall"] == round(sum(r["passed"] for r in kept) / len(kept), 4)
    for g in ("g1", "g3"):
        gain = summary["settings"][f"{g}-best3"]["overall"] - summary["settings"][g]["overall"]
        assert summary["rerank_gain"][g]["overall"] == pytest.approx(gain, abs=1e-4)
        cands = [r for r in rows if r["setting"] == g]
        for (p, s) in {(r["prompt_index"], r["sample"]) for r in cands}:  # the best pick has the top score
            group = [r for r in cands if (r["prompt_index"], r["sample"]) == (p, s)]
            best = [r for r in group if r["best_pick"]]
            assert len(best) == 1 and best[0]["rerank_score"] >= max(r["rerank_score"] for r in group) - 1e-5
            assert sum(r["random_pick"] for r in group) == 1

    # the kept images are an image folder that `--images` re-scores to the same accuracy
    assert main(["eval", "shapes", "--images", str(out / "images" / "g3-best3"), "--no-progress"]) == 0
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rescored["num"] == 2 * 2 * NUM_CATEGORIES and rescored["overall"] == summary["settings"]["g3-best3"]["overall"]


def test_same_images_whatever_the_batch(suite, tmp_path):
    pipe = tiny_pipeline(with_reranker=False)
    a = evaluate_pipeline(pipe, suite, tmp_path / "a", ReportSettings(guidance=(2.0,), samples=2, batch=2),
                          show_progress=False, data_dir=tmp_path / "a-data")
    b = evaluate_pipeline(pipe, suite, tmp_path / "b", ReportSettings(guidance=(2.0,), samples=2, batch=64,
                                                                     keep_images=False), show_progress=False)
    assert a["settings"] == b["settings"] and list(a["settings"]) == ["g2"]
    assert (tmp_path / "a-data" / "images" / "g2" / "metadata.jsonl").is_file()
    assert not (tmp_path / "a" / "images").exists() and (tmp_path / "a" / "report.md").is_file()
    assert not (tmp_path / "b" / "images").exists() and (tmp_path / "b" / "grid_single.png").is_file()
    assert not (tmp_path / "b" / "accuracy_vs_guidance.svg").exists()  # one guidance value: no plot
    ra = (tmp_path / "a-data" / "results.jsonl").read_text().splitlines()
    rb = (tmp_path / "b" / "results.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "files"}  # noqa: E731
    assert [strip(x) for x in ra] == [strip(x) for x in rb]


def test_rerank_without_reranker_is_an_error(suite, tmp_path):
    with pytest.raises(VqgenError, match="reranker"):
        evaluate_pipeline(tiny_pipeline(with_reranker=False), suite, tmp_path / "r",
                          ReportSettings(rerank=2), show_progress=False)


def test_cli_several_prompt_sets_side_by_side(pipe_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "shapes", "--model", str(pipe_dir), "--prompts", "all", "--per-category", "1",
                 "--samples", "1", "--out", str(out), "--no-images", "--no-progress"]) == 0
    side = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert side == json.loads((out / "summary.json").read_text())
    assert list(side["sets"]) == ["suite", "paraphrases", "holdout"]
    for name in side["sets"]:  # each set has its own full report, and the side-by-side figure is its own
        own = json.loads((out / name / "summary.json").read_text())
        acc = own["settings"]["g3"]
        assert side["sets"][name]["g3"] == (acc["core_overall"]["accuracy"] if "core_overall" in acc else acc["overall"])
    assert "core_overall" in json.loads((out / "suite" / "summary.json").read_text())["settings"]["g3"]
    assert side["gap_holdout"] == pytest.approx(side["best"]["suite"] - side["best"]["holdout"], abs=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["--model", "{missing}", "--out", "{out}"], "does not exist"),
    (["--model", "{pipe}", "--out", "{out}", "--prompts", "suite,suite"], "repeated"),
    (["--model", "{pipe}", "--out", "{out}", "--prompts", "{bad}"], "bad.jsonl:1"),
    (["--model", "{pipe}", "--out", "{out}", "--guidance", "1,x"], "--guidance"),
    (["--model", "{pipe}", "--out", "{out}", "--samples", "0"], "samples"),
    (["--model", "{pipe}", "--out", "{out}", "--rerank", "1"], "rerank"),
    (["--model", "{pipe}"], "--out"),
])
def test_bad_input_is_one_line_error(pipe_dir, tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle", "spec": {"objects": [{"shape": "hexagon", "color": "red"}]}}\n')
    fill = {"{missing}": str(tmp_path / "nope"), "{out}": str(tmp_path / "o"), "{pipe}": str(pipe_dir),
            "{bad}": str(bad)}
    assert main(["eval", "shapes", *[fill.get(a, a) for a in argv], "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqgen: error:") and message in err[0]


def test_parse_guidance_and_settings():
    assert parse_guidance("1,3.5,5") == (1.0, 3.5, 5.0)
    with pytest.raises(VqgenError):
        parse_guidance("")
    with pytest.raises(VqgenError, match="repeat"):
        ReportSettings(guidance=(3.0, 3.0))
    with pytest.raises(VqgenError):
        select_prompts(build_suite(), per_category=0)


def test_rerank_training_augmentation_degrades_the_chosen_fraction():
    """The reranker trained for these reports sees blurred, noisy images like generated ones
    (``RerankTrainConfig.augment``); the others pass through unchanged."""
    from vqgen.data.image import to_tensor
    from vqgen.shapes.scenes import render_spec
    from vqgen.rerank.train import degrade_batch

    clean = torch.stack([to_tensor(render_spec(s["spec"], size=32, seed=i)) for i, s in enumerate(build_suite()[:16])])
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(degrade_batch(clean, 0.0, gen), clean)
    out = degrade_batch(clean, 0.5, gen)
    changed = (out != clean).flatten(1).any(1)  # (16,)
    assert 0 < int(changed.sum()) < 16 and out.shape == clean.shape and 0 <= float(out.min()) <= float(out.max()) <= 1
    strong = degrade_batch(clean, 1.0, gen)
    assert bool(((strong - clean).abs().flatten(1).amax(1) > 0.01).all())  # every image altered


def test_cli_reranker_option_replaces_the_pipelines(tmp_path, capsys):
    with_rr = tiny_pipeline()
    bare = TextToImagePipeline(with_rr.tokenizer, with_rr.transformer).save_pretrained(tmp_path / "bare")
    with_rr.reranker.save_pretrained(tmp_path / "rr")
    args = ["eval", "shapes", "--model", str(bare), "--per-category", "1", "--samples", "1", "--guidance", "2",
            "--rerank", "2", "--out", str(tmp_path / "o"), "--no-progress", "--no-images"]
    assert main(args) == 2 and "reranker" in capsys.readouterr().err
    assert main(args + ["--reranker", str(tmp_path / "rr")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(summary["settings"]) == ["g2", "g2-best2"] and summary["settings"]["g2-best2"]["n"] == NUM_CATEGORIES
    assert main(args + ["--reranker", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("vqgen: error:")
