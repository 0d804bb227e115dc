"""The dual-channel video model (issue 17 items 2-5): frame-rate rule, temporal masks, the
zero-gated channel = the image model, frozen weights after training, interpolation, pipeline."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from vqgen.config import apply_overrides, get_preset

CAPTIONS = ["a red circle moves to the right", "a small blue square grows", "a green triangle moves up",
            "a yellow circle disappears"] * 3
TINY = ["model.grid=4,4", "model.codebook_size=64", "model.dim=32", "model.mlp_dim=64", "model.depth=2",
        "model.text.max_len=12", "model.dropout=0"]


def tiny_image():
    """A 2-block unified model on 4x4 codes of 64 with a BPE over motion captions."""
    import vqgen.transformer.config  # noqa: F401
    from vqgen.text.bpe import TextTokenizer
    from vqgen.transformer import build_model

    torch.manual_seed(0)
    img = build_model(apply_overrides(get_preset("transformer", "unified-tiny"), TINY).model).eval()
    img.text_tokenizer = TextTokenizer.train(CAPTIONS, vocab_size=64, min_frequency=1)
    return img


def tiny_video(gates: float = 0.0):
    from vqgen.video.model import VideoTransformer

    vid = VideoTransformer.inherit(tiny_image()).eval()
    if gates:
        torch.manual_seed(1)
        for task in ("key", "interp"):
            for layer in getattr(vid, task).layers:
                torch.nn.init.normal_(layer.gate, 0.0, gates)
    return vid


def tiny_tokenizer(size: int = 16):
    import vqgen.tokenizer.config  # noqa: F401
    from vqgen.tokenizer.vit_vqgan import ViTVQGAN

    torch.manual_seed(0)
    vit = get_preset("tokenizer", "tiny").vit
    if size != 16:
        vit = replace(vit, image_size=size, patch_size=size // 4)
    return ViTVQGAN(vit).eval()


def _cond(vid, b=2):
    return vid.text_condition(CAPTIONS[:b])


# -- frame-rate rule ----------------------------------------------------------------------------
def test_encoded_clips_carry_the_seed_frame_rate_rule(tmp_path):
    """`vqgen video encode` stores each clip's rate and key frames from the rule
    (vqgen.motion.framerate.key_frames of its action window), and the key-frame batch reads them."""
    from vqgen.motion.dataset import write_motion_dataset
    from vqgen.motion.framerate import choose_frame_rate, key_frames
    from vqgen.video.train import CODES_NAME, encode_clips, load_clip_data

    write_motion_dataset(tmp_path / "clips", 6, size=32, seed=1, progress=False)
    tok = tiny_tokenizer(32)
    tok.save_pretrained(tmp_path / "tok")
    info = encode_clips(tmp_path / "clips", tmp_path / "tok", tmp_path / "codes", show_progress=False)
    assert info["clips"] == 6 and info["grid"] == [4, 4] and (tmp_path / "codes" / CODES_NAME).is_file()
    rows = [json.loads(x) for x in (tmp_path / "codes" / "clips.jsonl").read_text().splitlines()]
    for r in rows:
        s, e = r["window"]
        assert r["frame_rate"] == choose_frame_rate(e - s) and 4 * (16 // r["frame_rate"]) <= e - s
        assert (r["frame_rate"], r["key_frames"]) == key_frames((s, e), info["frames"])
        assert r["key_frames"][0] == s and r["key_frames"][-1] == e  # motion windows are exact: whole action
    vid = tiny_video()
    data = load_clip_data(tmp_path / "codes", vid, vid.config.frame_rates, 0.2, 0)
    x, cond, rate, known = data.batch(torch.arange(3), "key", vid.config.frame_rates, torch.Generator())
    assert known is None and x.shape == (3, 5, 16)
    assert [vid.config.frame_rates[i] for i in rate.tolist()] == [r["frame_rate"] for r in rows[:3]]
    assert torch.equal(x[0], data.codes[0, rows[0]["key_frames"]])


# -- masks --------------------------------------------------------------------------------------
def _blocks(mask, text_len, frames, n):
    """(F, S, F, S) view of the frame part of a temporal mask."""
    return mask[:, text_len + 1:].view(frames, n + 1, frames, n + 1)


def test_no_key_frame_sees_a_later_frame():
    from vqgen.video.masks import temporal_mask

    m = temporal_mask((4, 4), 5, text_len=3, window=3, mode="key")
    b = _blocks(m, 3, 5, 16)
    assert m[:, :4].all()  # text and frame rate: always
    for f in range(5):
        for g in range(f + 1, 5):
            assert not b[f, :, g].any()
        assert b[f, :, :f].any() if f else True
        own = b[f, :, f]  # (S, S): causal over slots
        assert not own.triu(1).any() and own.diagonal().all()
    # a query predicting cell (0, 0) sees cells within the window of earlier frames only
    cells = b[4, 0, 0, 1:].view(4, 4)
    assert cells[:2, :2].all() and not cells[2:].any() and not cells[:, 2:].any()


def test_interpolation_sees_both_neighbours_and_no_other_target():
    from vqgen.video.masks import temporal_mask

    known = torch.tensor([True, False, True, False, True])
    m = temporal_mask((4, 4), 5, text_len=3, window=7, mode="interp", known=known)  # 7: the whole 4x4 grid
    b = _blocks(m, 3, 5, 16)
    for target in (1, 3):
        assert b[target, :, target - 1, 1:].all() and b[target, :, target + 1, 1:].all()  # both neighbours, all cells
        other = 4 - target
        assert not b[target, :, other].any()
    for k in (0, 2, 4):  # given frames see only given frames
        assert not b[k, :, 1].any() and not b[k, :, 3].any()


def test_model_masks_match_the_teacher_forced_and_cached_paths():
    """Cached writing (slot by slot) gives the teacher-forced logits for both tasks."""
    vid = tiny_video(gates=1.0)
    cond, codes = _cond(vid), torch.randint(0, 64, (2, 5, 16))
    rate = vid.rate_index([2, 4])
    for task, known in (("key", None), ("interp", torch.tensor([True, False, True, False, True]))):
        ref = vid.clip_logits(codes, cond, rate, task, known)  # (2, 5, 16, V)
        cache = vid.new_video_cache(2, 5, task, known)
        vid.prefill_video(cond, rate, cache, task)
        groups = [[f] for f in range(5)]
        if known is not None:
            vid.run_slots(vid.slot_inputs(codes[:, [0, 2, 4]], 0, 17), [0, 2, 4], 0, cache, task)
            groups = [[1, 3]]
        for g in groups:
            got = torch.cat([vid.run_slots(vid.slot_inputs(codes[:, g], p, p + 1), g, p, cache, task)
                             for p in range(17)], 2)[:, :, :16]  # (2, nf, 16, V); slot 16 = the last code's keys
            torch.testing.assert_close(got, ref[:, g], rtol=1e-5, atol=1e-5)


# -- inheritance --------------------------------------------------------------------------------
def test_zero_gated_temporal_channel_is_the_image_model_exactly():
    img = tiny_image()
    from vqgen.video.model import VideoTransformer

    vid = VideoTransformer.inherit(img).eval()
    cond, codes = _cond(vid), torch.randint(0, 64, (2, 5, 16))
    rows = torch.arange(2).repeat_interleave(5)
    want = img(codes.flatten(0, 1), cond.index(rows)).logits.view(2, 5, 16, -1)
    for task, known in (("key", None), ("interp", torch.tensor([True, False, True, False, True]))):
        got = vid.clip_logits(codes, cond, vid.rate_index([2, 16]), task, known)
        assert torch.equal(got, want)
    with torch.no_grad():  # an open gate changes the later frames, not frame 0's first cell
        vid.key.layers[0].gate.fill_(0.5)
    got = vid.clip_logits(codes, cond, vid.rate_index([2, 16]))
    assert not torch.equal(got[:, 1:], want[:, 1:])


def _fake_codes(tmp_path, clips=24):
    from safetensors.torch import save_file

    (tmp_path / "codes").mkdir()
    g = torch.Generator().manual_seed(0)
    save_file({"codes": torch.randint(0, 64, (clips, 33, 4, 4), generator=g).int()},
              str(tmp_path / "codes" / "clips.safetensors"))
    rows = [{"key": str(i), "text": CAPTIONS[i % 4], "window": [0, 32], "fps": 16, "frame_rate": 2,
             "key_frames": [0, 8, 16, 24, 32]} for i in range(clips)]
    (tmp_path / "codes" / "clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "codes"


@pytest.mark.parametrize("preset,trained,frozen", [("video-key", "key.", ("image.", "interp.")),
                                                    ("video-interp", "interp.", ("image.", "key."))])
def test_frozen_weights_are_bit_identical_after_training(tmp_path, preset, trained, frozen):
    from vqgen.video.model import VideoTransformer
    from vqgen.video.train import train

    img = tiny_image()
    img.save_pretrained(tmp_path / "img")
    codes = _fake_codes(tmp_path)
    start = tmp_path / "img"
    if preset == "video-interp":
        start = tmp_path / "start"
        tiny_video(gates=0.3).save_pretrained(start)
        over = [f"train.init_from={start}"]
    else:
        over = [f"train.image_from={start}"]
    before = (VideoTransformer.inherit(img) if preset == "video-key" else VideoTransformer.from_pretrained(start))
    before = {k: v.clone() for k, v in before.state_dict().items()}
    res = train(codes, tmp_path / "run", preset, over + ["train.steps=6", "train.batch_size=4", "train.val_every=3",
                                                         "train.ckpt_every=3", "train.warmup_steps=1"],
                show_progress=False)
    after = VideoTransformer.from_pretrained(tmp_path / "run" / "model").state_dict()
    assert res.step == 6 and res.frozen > res.trainable > 0
    for name, value in after.items():
        if name.startswith(frozen):
            assert torch.equal(value, before[name]), name
    assert any(not torch.equal(after[n], before[n]) for n in after if n.startswith(trained))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in rows)


# -- interpolation, sampling, pipeline ----------------------------------------------------------
def test_interpolation_doubles_the_frame_count_and_keeps_the_given_frames():
    from vqgen.video.sample import generate_video, interpolate, passes_for

    vid = tiny_video(gates=0.5)
    cond = _cond(vid)
    key = torch.randint(0, 64, (2, 5, 16))
    nine = interpolate(vid, key, cond, 4, generator=torch.Generator().manual_seed(0))
    assert nine.shape == (2, 9, 16) and torch.equal(nine[:, ::2], key)
    seventeen = interpolate(vid, nine, cond, 8)
    assert seventeen.shape == (2, 17, 16) and torch.equal(seventeen[:, ::2], nine)
    assert [passes_for(n) for n in (5, 9, 17, 33)] == [0, 1, 2, 3]
    codes, stages = generate_video(vid, cond, frames=17, fps=8, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 17, 16) and torch.equal(codes[:, ::4], stages[0]) and torch.equal(codes[:, ::2], stages[1])


def test_rows_depend_on_their_own_seed_only():
    from vqgen.video.sample import sample_clip

    vid = tiny_video(gates=0.5)
    cond = vid.text_condition([CAPTIONS[0], CAPTIONS[1], CAPTIONS[0]])
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6, 5)]  # noqa: E731
    both = sample_clip(vid, cond, vid.rate_index([2, 2, 2]), guidance=2.0, generator=gens())
    alone = sample_clip(vid, cond.index(torch.tensor([1])), vid.rate_index([2]), guidance=2.0,
                        generator=[torch.Generator().manual_seed(6)])
    assert torch.equal(both[0], both[2]) and torch.equal(both[1], alone[0])


def tiny_video_pipeline():
    from vqgen.pipelines.text_to_video import TextToVideoPipeline
    from vqgen.sampling.settings import SamplingConfig

    return TextToVideoPipeline(tiny_tokenizer(), tiny_video(gates=0.5),
                               sampling=SamplingConfig(guidance_scale=1.5, temperature=0.8))


def test_pipeline_save_load_gives_the_same_video(tmp_path):
    from vqgen.pipelines import load_pipeline
    from vqgen.pipelines.text_to_video import TextToVideoPipeline

    pipe = tiny_video_pipeline()
    out = pipe(CAPTIONS[0], num_frames=9, fps=4, seed=3)
    assert len(out.frames[0]) == 9 and out.codes.shape == (1, 9, 4, 4) and out.frames[0][0].size == (16, 16)
    pipe.save_pretrained(tmp_path / "pipe")
    again = load_pipeline(tmp_path / "pipe")
    assert isinstance(again, TextToVideoPipeline) and again.sampling == pipe.sampling
    out2 = again(CAPTIONS[0], num_frames=9, fps=4, seed=3)
    assert torch.equal(out.codes, out2.codes) and torch.equal(out.key_codes, out2.key_codes)
    with pytest.raises(Exception, match="frames must be one of"):
        again(CAPTIONS[0], num_frames=8, fps=4)


def test_video_generate_command_writes_gif_mp4_and_strip(tmp_path, capsys):
    from PIL import Image

    from vqgen.cli import main

    tiny_video_pipeline().save_pretrained(tmp_path / "pipe")
    rc = main(["video", "generate", "a red circle moves to the right", "--model", str(tmp_path / "pipe"),
               "--frames", "9", "--fps", "4", "--out", str(tmp_path / "out")])
    assert rc == 0
    gif = Image.open(tmp_path / "out" / "video.gif")
    assert gif.n_frames >= 2 and Image.open(tmp_path / "out" / "video-strip.png").size == (9 * 16, 16)
    pytest.importorskip("av")
    assert (tmp_path / "out" / "video.mp4").stat().st_size > 0
    assert "9 frames at 4 fps" in capsys.readouterr().out


def test_the_bundled_video_model_loads_and_writes_key_frames(tmp_path):
    from vqgen.pipelines.text_to_video import TextToVideoPipeline, video_model_dir

    if not (video_model_dir() / "pipeline.json").is_file():
        pytest.skip("the bundled video model is not built (python configs/video_model.py)")
    pipe = TextToVideoPipeline.from_pretrained()
    out = pipe("a red circle moves to the right", num_frames=5, fps=2, seed=0)
    assert len(out.frames[0]) == 5 and out.frames[0][0].size == (64, 64) and out.codes.shape == (1, 5, 8, 8)
