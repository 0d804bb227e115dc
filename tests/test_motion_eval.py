"""The motion evaluator: ground truth passes (33 frames and the 5 key frames), wrong clips fail, bad clips
are counted, generators are scored on suite prompts."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vqgen.cli import main
from vqgen.errors import VqgenError
from vqgen.motion.dataset import MotionDataset, write_clip_folder, write_motion_dataset
from vqgen.motion.evaluate import pipeline_generator, score_folder, score_generator
from vqgen.motion.evaluator import score_clip
from vqgen.motion.scenes import render_spec
from vqgen.motion.suite import load_suite


def obj(shape, color, action, size=None, to=None):
    return {"shape": shape, "color": color, "size": size, "action": action, "to": to}


def spec(*objects):
    return {"objects": list(objects)}


def test_ground_truth_clips_pass():
    data = MotionDataset(16, 64, seed=3)
    scores = [score_clip(c.frames, c.meta["spec"]) for c in data]
    assert np.mean([s.passed for s in scores]) >= 0.99
    assert all(all(s.frame_objects) for s in scores)


def test_key_frames_alone_show_the_action():
    """The 5 key frames of the frame-rate rule pass as a clip of their own (what the key-frame model learns)."""
    data = MotionDataset(16, 64, seed=7)
    passed = [score_clip(c.frames[c.meta["key_frames"]], c.meta["spec"]).passed for c in data]
    assert np.mean(passed) >= 0.99


@pytest.mark.parametrize("drawn, asked, failing", [
    (obj("circle", "red", "move left"), obj("circle", "red", "move right"), "action"),      # wrong direction
    (obj("circle", "red", "move up"), obj("circle", "red", "move right"), "action"),        # wrong axis
    (obj("square", "blue", "move up"), obj("square", "green", "move up"), "object"),        # wrong colour
    (obj("square", "blue", "move up"), obj("triangle", "blue", "move up"), "object"),       # wrong shape
    (obj("square", "blue", "move up", "small"), obj("square", "blue", "move up", "large"), "object"),  # wrong size
    (obj("triangle", "green", "shrink"), obj("triangle", "green", "grow"), "action"),
    (obj("circle", "red", "change color", to="yellow"), obj("circle", "red", "change color", to="blue"), "object"),
    (obj("circle", "red", "disappear"), obj("circle", "red", "appear"), "action"),
    (obj("circle", "red", "appear"), obj("circle", "red", "move down"), "object"),
])
def test_wrong_clips_fail(drawn, asked, failing):
    frames, _ = render_spec(spec(drawn), seed=1)
    assert score_clip(frames, spec(drawn)).passed
    verdict = score_clip(frames, spec(asked))
    assert not verdict.passed and not verdict.criteria[failing]


def test_time_and_identity_errors_fail():
    grow = spec(obj("square", "purple", "grow"))
    frames, _ = render_spec(grow, seed=2)
    assert not score_clip(frames[::-1], grow).criteria["action"]            # played backwards: it shrinks
    move = spec(obj("circle", "orange", "move right"))
    frames, _ = render_spec(move, seed=3)
    assert not score_clip(np.repeat(frames[:1], len(frames), 0), move).criteria["action"]  # frozen first frame
    shuffled = frames[np.random.default_rng(0).permutation(len(frames))]
    assert not score_clip(shuffled, move).criteria["consistency"]          # jumps back and forth
    flicker = frames.copy()
    flicker[len(frames) // 2] = 255                                         # one blank frame mid-clip
    assert not score_clip(flicker, move).criteria["consistency"]
    misread_end = frames.copy()
    misread_end[-1] = 255                                                   # the last frame lost: an object error,
    verdict = score_clip(misread_end, move)                                 # the move itself was seen
    assert not verdict.criteria["object"] and verdict.criteria["action"]


def test_two_objects_each_scored():
    both = spec(obj("circle", "red", "move down"), obj("square", "blue", "shrink", "large"))
    frames, _ = render_spec(both, seed=4)
    assert score_clip(frames, both).passed
    swapped = spec(obj("circle", "red", "move down"), obj("square", "blue", "grow"))
    verdict = score_clip(frames, swapped)
    assert [o.passed for o in verdict.objects] == [True, False]


def test_accepts_tensors_and_pil_frames():
    move = spec(obj("triangle", "yellow", "move left"))
    frames, _ = render_spec(move, seed=5)
    as_tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W) in [0, 1]
    from PIL import Image

    assert score_clip(as_tensor, move).passed and score_clip([Image.fromarray(f) for f in frames], move).passed


def test_bad_clips_are_skipped_and_counted(tmp_path, capsys):
    root = tmp_path / "clips"
    write_motion_dataset(root, 7, 64, seed=2, frames=9, progress=False)
    (root / "000000.png").write_bytes((root / "000000.png").read_bytes()[:300])     # truncated
    (root / "000001.png").write_bytes(b"not a png at all")                           # unreadable
    from PIL import Image

    with Image.open(root / "000002.png") as im:                                      # wrong frame count
        im.crop((0, 0, 64 * 8, 64)).save(root / "000002.png")
    (root / "000003.png").unlink()                                                   # missing
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    del rows[4]["spec"]                                                              # no spec
    rows[5]["spec"] = {"objects": [obj("circle", "red", "grow", "large")]}           # invalid spec
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    summary, results = score_folder(root, progress=False)
    assert summary["num"] == 1 and len(results) == 1 and summary["overall"] == 1.0
    assert summary["skipped"] == {"bad_metadata": 1, "bad_spec": 1, "corrupt": 1, "missing_file": 1,
                                  "missing_spec": 1, "truncated": 1, "wrong_frame_count": 1}
    assert main(["eval", "motion", "--videos", str(root), "--no-progress"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["overall"] == 1.0 and last["skipped"]["wrong_frame_count"] == 1
    (root / "000006.png").unlink()
    assert main(["eval", "motion", "--videos", str(root), "--no-progress"]) == 2         # nothing usable: one line
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqgen: error:") and "\n" not in err


def test_generators_are_scored_on_suite_prompts(tmp_path):
    from vqgen.eval.report import select_prompts

    suite = select_prompts(load_suite(), 1)  # 6 prompts, one per category
    by_prompt = {item["prompt"]: item["spec"] for item in suite}

    def truth(prompt, seed):
        return render_spec(by_prompt[prompt], frames=17, seed=seed)[0]

    summary = score_generator(truth, suite, samples=2, seed=1, out_dir=tmp_path / "out", progress=False)
    assert summary["num"] == 12 and summary["overall"] >= 0.99
    again, _ = score_folder(tmp_path / "out" / "clips", progress=False)     # the written clips score the same
    assert again["overall"] == summary["overall"] and again["num"] == 12
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| **overall** | 12 |" in report and report.count("](grids/") == 6  # a grid per category
    from PIL import Image

    assert Image.open(tmp_path / "out" / "grids" / "three.png").size == (4 + 9 * 64, 2 * 66)  # 2 clips, 9 frames

    def still(prompt, seed):
        return np.repeat(truth(prompt, seed)[:1], 17, 0)  # nothing happens

    assert score_generator(still, suite, progress=False)["action_accuracy"] <= 0.2
    broken = score_generator(lambda p, s: np.zeros((64, 64, 3), np.uint8), suite, progress=False)
    assert broken["num"] == 0 and broken["skipped"] == {"bad_frames": 6}


def test_pipeline_outputs_are_unwrapped():
    move = spec(obj("circle", "green", "move up"))
    frames, _ = render_spec(move, frames=17, seed=6)
    from PIL import Image

    calls = []

    def pipe(prompt, seed, **options):  # a TextToVideoPipeline's output: frames[i] = video i as PIL images
        calls.append((prompt, seed, options))
        return SimpleNamespace(frames=[[Image.fromarray(f) for f in frames]])

    generate = pipeline_generator(pipe, frames=17, fps=8)
    assert score_clip(generate("a green circle moves up", 3), move).passed
    assert calls == [("a green circle moves up", 3, {"num_frames": 17, "fps": 8})]


def test_clip_folders_need_metadata(tmp_path):
    with pytest.raises(VqgenError, match="metadata.jsonl"):
        score_folder(tmp_path, progress=False)
    write_clip_folder([], tmp_path / "empty", progress=False)
    with pytest.raises(VqgenError, match="no usable clip"):
        score_folder(tmp_path / "empty", progress=False)


def test_tokenizer_round_trip_command(capsys):
    """Ground-truth suite clips through the bundled tokenizer: the ceiling of a video model on its codes."""
    from vqgen.pipelines import default_model_dir

    assert main(["eval", "motion", "--tokenizer", str(default_model_dir() / "tokenizer"), "--per-category", "1",
                 "--frames", "5", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num"] == 6 and summary["ground_truth"] == 1.0 and 0.0 <= summary["round_trip"] <= 1.0
    assert main(["eval", "motion", "--videos", "x", "--frames", "5"]) == 2  # a --model/--tokenizer flag: one line


def test_eval_motion_model_command(tmp_path, capsys):
    """`vqgen eval motion --model DIR` plugs a TextToVideoPipeline into the suite scorer (the tiny one of test_video)."""
    tiny = pytest.importorskip("tests.test_video")
    tiny.tiny_video_pipeline().save_pretrained(tmp_path / "pipe")
    assert main(["eval", "motion", "--model", str(tmp_path / "pipe"), "--per-category", "1", "--frames", "5",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num"] == 6 and 0.0 <= summary["overall"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["frames"] for r in rows] == [5] * 6 and [r["seed"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert (tmp_path / "out" / "clips" / "metadata.jsonl").is_file()
