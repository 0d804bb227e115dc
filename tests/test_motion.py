"""The motion domain: the frame-rate rule, specs and captions, deterministic clips, clip folders, the suite."""
import json

import numpy as np
import pytest

from vqgen.cli import main
from vqgen.errors import VqgenError
from vqgen.motion.captions import caption_of
from vqgen.motion.dataset import (MotionDataset, from_strip, read_clip, save_video, to_strip,
                                  write_motion_dataset)
from vqgen.motion.framerate import FRAME_RATES, choose_frame_rate, key_frames, stride_of
from vqgen.motion.suite import SUITE_PATH, build_suite, held_out_prompts, load_suite
from vqgen.motion.vocabulary import CATEGORIES, validate_spec


def obj(shape, color, action, size=None, to=None):
    return {"shape": shape, "color": color, "size": size, "action": action, "to": to}


# ----------------------------------------------------------------------------- frame-rate rule
@pytest.mark.parametrize("duration, rate", [(32, 2), (40, 2), (31, 4), (16, 4), (15, 8), (8, 8), (7, 16), (4, 16),
                                            (3, 16), (0, 16)])
def test_lowest_rate_whose_five_frames_fit_in_the_action(duration, rate):
    """The lowest rate of (2, 4, 8, 16) at 16 fps with 4 strides inside the action; the highest when none fits."""
    assert FRAME_RATES == (2, 4, 8, 16)
    assert choose_frame_rate(duration) == rate


def test_key_frames_cover_an_exact_window_and_stay_inside_the_clip():
    assert key_frames((4, 20), 33) == (4, [4, 8, 12, 16, 20])      # 16 intervals: stride 4, first and last exact
    assert key_frames((0, 32), 33) == (2, [0, 8, 16, 24, 32])
    assert key_frames((10, 30), 33) == (4, [12, 16, 20, 24, 28])   # 20 intervals: stride 4, centred
    assert key_frames((30, 31), 33) == (16, [28, 29, 30, 31, 32])  # too short for any rate: moved inside the clip
    assert choose_frame_rate(10, base_fps=32, rates=(4, 8, 16, 32), num=3) == 8  # other sets and counts
    with pytest.raises(VqgenError):
        stride_of(3)
    with pytest.raises(VqgenError):
        key_frames((5, 40), 33)


def test_every_clip_has_an_exact_action_window():
    """Motion clips' windows last 4 strides of the set: the key frames run from the action's first to its last frame."""
    data = MotionDataset(40, 64, seed=1)
    for i in range(len(data)):
        meta = data.scene(i).meta([])
        s, e = meta["window"]
        assert meta["key_frames"][0] == s and meta["key_frames"][-1] == e
        assert e - s == 4 * stride_of(meta["frame_rate"])
        assert all(s <= a <= b <= e for a, b in meta["timing"]) and any(t == [s, e] for t in meta["timing"])


# ----------------------------------------------------------------------------- specs and captions
def test_captions_in_the_shapes_vocabulary():
    assert caption_of(validate_spec({"objects": [obj("circle", "red", "move right")]})) == \
        "a red circle moves to the right"
    assert caption_of(validate_spec({"objects": [obj("square", "blue", "grow", "small"),
                                                 obj("triangle", "green", "move up")]})) == \
        "a small blue square grows while a green triangle moves up"
    assert caption_of(validate_spec({"objects": [obj("circle", "orange", "change color", to="purple"),
                                                 obj("square", "red", "appear"),
                                                 obj("triangle", "blue", "disappear", "large")]})) == \
        "an orange circle turns purple while a red square appears and a large blue triangle disappears"


@pytest.mark.parametrize("objects, words", [
    ([obj("circle", "red", "move right"), obj("circle", "blue", "grow")], "different shapes"),
    ([obj("circle", "red", "grow", "large")], "cannot grow"),
    ([obj("circle", "red", "change color")], "needs 'to'"),
    ([obj("circle", "red", "change color", to="blue"), obj("square", "blue", "appear")], "different colours"),
    ([obj("circle", "red", "move right", to="blue")], "'to' goes with"),
    ([obj("circle", "red", "jump")], "action"),
    ([], "1..3"),
])
def test_bad_specs_are_one_line_errors(objects, words):
    with pytest.raises(VqgenError, match=words):
        validate_spec({"objects": objects})


# ----------------------------------------------------------------------------- clips
def test_clips_are_deterministic_per_seed():
    a, b, c = MotionDataset(6, 64, seed=5), MotionDataset(6, 64, seed=5), MotionDataset(6, 64, seed=6)
    for i in range(6):
        x, y = a[i], b[i]
        assert x.text == y.text and x.meta == y.meta and np.array_equal(x.frames, y.frames)
    assert [a[i].text for i in range(6)] != [c[i].text for i in range(6)]
    assert a[3].meta == MotionDataset(9, 64, seed=5)[3].meta  # clip i depends on (seed, i) only


def test_states_are_the_full_spec_per_frame():
    clip = MotionDataset(3, 64, seed=2, frames=17)[0]
    states, spec = clip.meta["states"], clip.meta["spec"]
    assert clip.frames.shape == (17, 64, 64, 3) and len(states) == 17
    assert all(len(frame) == len(spec["objects"]) for frame in states)
    assert all(st["shape"] == spec["objects"][st["entry"]]["shape"] for frame in states for st in frame)


def test_folder_written_twice_is_identical(tmp_path):
    stats = write_motion_dataset(tmp_path / "a", 5, 64, seed=4, frames=9, progress=False)
    write_motion_dataset(tmp_path / "b", 5, 64, seed=4, frames=9, progress=False)
    assert stats["num"] == 5 and stats["frame_rates"] == [2, 4, 8, 16] and stats["frames"] == 9
    for name in ["metadata.jsonl", "motion.json"] + [f"{i:06d}.png" for i in range(5)]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    row = json.loads((tmp_path / "a" / "metadata.jsonl").read_text().splitlines()[0])
    frames = read_clip(tmp_path / "a" / row["file_name"], row["frames"])
    assert np.array_equal(frames, MotionDataset(5, 64, seed=4, frames=9)[0].frames)
    assert json.loads((tmp_path / "a" / "motion.json").read_text())["fps"] == 16


def test_strips_gif_and_mp4_round_trip(tmp_path):
    frames = MotionDataset(1, 64, seed=0, frames=9)[0].frames
    assert np.array_equal(from_strip(to_strip(frames), 9), frames)
    with pytest.raises(VqgenError, match="not 8 frames"):
        from_strip(to_strip(frames), 8)
    for suffix in (".gif", ".mp4"):
        back = read_clip(save_video(frames, tmp_path / f"clip{suffix}", fps=8), frames=9)
        assert back.shape == frames.shape
        assert np.abs(back.astype(int) - frames).mean() < 8  # lossy, but the same clip


def test_data_motion_command(tmp_path, capsys):
    assert main(["data", "motion", "--out", str(tmp_path / "m"), "--num", "3", "--seed", "1", "--frames", "9",
                 "--mp4", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num"] == 3 and sum(summary["categories"].values()) == 3
    assert sorted(p.name for p in (tmp_path / "m" / "mp4").iterdir()) == ["000000.mp4", "000001.mp4", "000002.mp4"]


# ----------------------------------------------------------------------------- suite
def test_suite_file_parses_with_150_prompts_in_categories():
    suite = load_suite()
    assert len(suite) >= 150
    counts = {c: sum(1 for item in suite if item["category"] == c) for c in CATEGORIES}
    assert all(n >= 20 for n in counts.values()), counts
    assert len({item["prompt"] for item in suite}) == len(suite)
    assert all(caption_of(item["spec"]) == item["prompt"] for item in suite)
    assert [json.loads(line) for line in SUITE_PATH.read_text().splitlines()] == build_suite()  # file up to date


def test_training_captions_avoid_the_suite():
    data = MotionDataset(300, 64, seed=0)
    assert not {data.scene(i).caption for i in range(300)} & held_out_prompts()
