"""CogVideo's claim on the motion domain: inheriting a frozen text-to-image model makes
text-to-video learnable from little video, measured against the same architecture from scratch
and full fine-tuning, at the same CPU budget each; and what recursive interpolation does to the
temporal consistency of 17-frame clips.

    OMP_NUM_THREADS=1 python bench/video_inherit.py --image-model runs/video/image_model --out runs/video

Steps (each skipped when its output exists, so an interrupted run continues):

1. 1,500 motion clips (seed 0, 64 px, 33 frames at 16 fps) and their codes (the bundled tokenizer);
2. three key-frame runs on them, each stopped by the same CPU-time limit (``--minutes``):
   (a) ``video-key`` (frozen image model, key channel trained), (b) ``video-key-scratch``,
   (c) ``video-key-full``; then the interpolation channel on (a) (``--interp-minutes``);
3. sampling settings for (a) picked on the first ``--sweep`` suite prompts (key frames only);
4. the whole motion suite (160 prompts, one clip each, seeds as ``vqgen eval motion``) with each
   model's 5 key frames (at 2 fps); for (a) also 17 frames at 8 fps, once interpolated and once
   with each key frame held (the same key frames): the evaluator's consistency criterion.

The last line holds the figures: ``video_inherit: action_a=... action_b=... ...``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

TOKENIZER = Path(__file__).resolve().parents[1] / "src/vqgen/assets/default_model/tokenizer"
VARIANTS = {"a": "video-key", "b": "video-key-scratch", "c": "video-key-full"}
SETTINGS = [(1.0, 1.0), (2.0, 0.7), (3.0, 0.5)]  # (guidance, temperature) tried for (a)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def clips_for(pipe, suite, frames: int, fps: int, seed: int = 0, batch: int = 80, **kw):
    """{(prompt, seed): (T, H, W, 3) uint8} and the key frames of each, seeds as `vqgen eval motion`."""
    from vqgen.motion.evaluate import sample_seed

    clips, keys = {}, {}
    jobs = [(sample_seed(seed, i, 0, 1), item["prompt"]) for i, item in enumerate(suite)]
    for j in range(0, len(jobs), batch):
        part = jobs[j:j + batch]
        out = pipe([p for _, p in part], num_frames=frames, fps=fps, output_type="np",
                   generator=[torch.Generator().manual_seed(s) for s, _ in part], **kw)
        key_images = pipe.decode(out.key_codes.flatten(0, 1)).mul(255).round().byte().permute(0, 2, 3, 1)  # (N*5, H, W, 3)
        key_images = key_images.view(len(part), -1, *key_images.shape[1:]).numpy()
        for (s, p), f, k in zip(part, out.frames, key_images):
            clips[(p, s)], keys[(p, s)] = np.stack(f), k
    return clips, keys


def strips(pipes, full, suite, path: Path, guidance: float, temperature: float, per_category: int = 1) -> None:
    """One row per (prompt, model): the 5 key frames of (a), (b), (c) (under the frames they become)
    and the 17 frames of (a) with interpolation, for the first prompt of each suite category (seed 0)."""
    from PIL import Image, ImageDraw

    picked, seen = [], {}
    for item in suite:
        if seen.get(item["category"], 0) < per_category:
            seen[item["category"]] = seen.get(item["category"], 0) + 1
            picked.append(item["prompt"])
    rows = []
    for prompt in picked:
        for name, pipe, frames, fps in (("(a)", pipes["a"], 5, 2), ("(b)", pipes["b"], 5, 2), ("(c)", pipes["c"], 5, 2),
                                        ("(a)+interp", full, 17, 8)):
            out = pipe(prompt, num_frames=frames, fps=fps, seed=0, guidance_scale=guidance, temperature=temperature)
            rows.append((f"{name} {prompt}", out.frames[0]))
    size = rows[0][1][0].size[0]
    label = 14
    sheet = Image.new("RGB", (17 * size, len(rows) * (size + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (text, frames) in enumerate(rows):
        y = i * (size + label)
        draw.text((2, y + 1), text, fill=(0, 0, 0))
        step = 16 // (len(frames) - 1)  # key frames under the interpolated frames they become
        for j, f in enumerate(frames):
            sheet.paste(f, (j * step * size, y + label))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def score(table, suite, seed: int = 0, out_dir=None) -> dict:
    from vqgen.motion.evaluate import score_generator

    return score_generator(lambda p, s: table[(p, s)], suite, seed=seed, out_dir=out_dir, progress=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-model", required=True, help="the inherited unified model (directory)")
    ap.add_argument("--out", default="runs/video")
    ap.add_argument("--clips", type=int, default=1500)
    ap.add_argument("--minutes", type=float, default=6.0, help="CPU minutes of each key-frame run")
    ap.add_argument("--interp-minutes", type=float, default=4.0, help="CPU minutes of the interpolation run")
    ap.add_argument("--sweep", type=int, default=40, help="suite prompts of the sampling-settings sweep")
    ap.add_argument("--suite-limit", type=int, default=None, help="first N suite prompts only (a dry run)")
    args = ap.parse_args(argv)
    from vqgen.motion.dataset import write_motion_dataset
    from vqgen.motion.suite import load_suite
    from vqgen.pipelines.text_to_video import TextToVideoPipeline
    from vqgen.runtime import model_dir
    from vqgen.sampling.settings import SamplingConfig
    from vqgen.video.train import encode_clips, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def save():
        results_path.write_text(json.dumps(results, indent=1))

    if not (out / "motion" / "metadata.jsonl").is_file():
        log(f"motion clips: {write_motion_dataset(out / 'motion', args.clips, 64, 0, progress=False)}")
    if not (out / "codes" / "info.json").is_file():
        log(f"encode: {encode_clips(out / 'motion', TOKENIZER, out / 'codes', show_progress=False)}")
    image = out / "image_model"
    if not image.is_dir():
        source = model_dir(args.image_model)
        shutil.copytree(source, image)
        results["image_model"] = str(source)
        save()
        log(f"inherited image model: {source}")
    common = ["train.steps=100000", "train.val_every=100", "train.ckpt_every=100", "train.log_every=10"]
    for v, preset in VARIANTS.items():
        run = out / f"key-{v}"
        if not (run / "model").is_dir():
            t0 = time.process_time()
            res = train(out / "codes", run, preset, [f"train.image_from={image}", f"train.cpu_limit_min={args.minutes}",
                                                     *common], show_progress=False)
            results[f"train_{v}"] = {"steps": res.step, "val_loss": res.val_loss, "trainable": res.trainable,
                                     "frozen": res.frozen, "cpu_s": round(time.process_time() - t0, 1)}
            save()
            log(f"({v}) {preset}: {results[f'train_{v}']}")
    if not (out / "interp" / "model").is_dir():
        t0 = time.process_time()
        res = train(out / "codes", out / "interp", "video-interp",
                    [f"train.init_from={out / 'key-a'}", f"train.cpu_limit_min={args.interp_minutes}", *common],
                    show_progress=False)
        results["train_interp"] = {"steps": res.step, "val_loss": res.val_loss, "trainable": res.trainable,
                                   "cpu_s": round(time.process_time() - t0, 1)}
        save()
        log(f"interp: {results['train_interp']}")
    suite = load_suite()[: args.suite_limit]
    pipes = {v: TextToVideoPipeline.from_components(model_dir(TOKENIZER), model_dir(out / f"key-{v}"))
             for v in VARIANTS}
    full = TextToVideoPipeline.from_components(model_dir(TOKENIZER), model_dir(out / "interp"))
    if "settings" not in results:
        sweep = {}
        for g, temp in SETTINGS:
            table, _ = clips_for(pipes["a"], suite[: args.sweep], 5, 2, guidance_scale=g, temperature=temp)
            s = score(table, suite[: args.sweep])
            sweep[f"g{g}_t{temp}"] = {"overall": s["overall"], "action": s["action_accuracy"],
                                      "frame_object": s["frame_object_accuracy"]}
            log(f"sweep g={g} T={temp}: {sweep[f'g{g}_t{temp}']}")
        best = max(SETTINGS, key=lambda gt: (sweep[f"g{gt[0]}_t{gt[1]}"]["action"], sweep[f"g{gt[0]}_t{gt[1]}"]["overall"]))
        results["sweep"], results["settings"] = sweep, {"guidance": best[0], "temperature": best[1]}
        save()
    g, temp = results["settings"]["guidance"], results["settings"]["temperature"]
    for v in VARIANTS:
        if f"eval_{v}" not in results:
            t0 = time.process_time()
            table, _ = clips_for(pipes[v], suite, 5, 2, guidance_scale=g, temperature=temp)
            results[f"eval_{v}"] = score(table, suite, out_dir=out / f"eval-{v}")
            results[f"eval_{v}"]["cpu_s"] = round(time.process_time() - t0, 1)
            save()
            log(f"({v}) suite, 5 key frames: action {results[f'eval_{v}']['action_accuracy']}, frame objects "
                f"{results[f'eval_{v}']['frame_object_accuracy']}, overall {results[f'eval_{v}']['overall']}")
    if "eval_17_interp" not in results:
        t0 = time.process_time()
        table, keys = clips_for(full, suite, 17, 8, guidance_scale=g, temperature=temp)
        held = {k: v[np.round(np.arange(17) / 4).astype(int)] for k, v in keys.items()}  # each key frame held
        results["eval_17_interp"] = score(table, suite, out_dir=out / "eval-17-interp")
        results["eval_17_held"] = score(held, suite, out_dir=out / "eval-17-held")
        results["eval_17_interp"]["cpu_s"] = round(time.process_time() - t0, 1)
        save()
    figure = Path(__file__).resolve().parents[1] / "docs" / "img" / "cogvideo_abc.png"
    if not figure.is_file():
        strips(pipes, full, suite, figure, g, temp)
        log(f"figure: {figure}")
    r = results
    line = (f"video_inherit: action_a={r['eval_a']['action_accuracy']} action_b={r['eval_b']['action_accuracy']} "
            f"action_c={r['eval_c']['action_accuracy']} frame_object_a={r['eval_a']['frame_object_accuracy']} "
            f"frame_object_b={r['eval_b']['frame_object_accuracy']} frame_object_c={r['eval_c']['frame_object_accuracy']} "
            f"overall_a={r['eval_a']['overall']} overall_b={r['eval_b']['overall']} overall_c={r['eval_c']['overall']} "
            f"steps_a={r['train_a']['steps']} steps_b={r['train_b']['steps']} steps_c={r['train_c']['steps']} "
            f"consistency_17_interp={r['eval_17_interp']['criteria']['consistency']} "
            f"consistency_17_held={r['eval_17_held']['criteria']['consistency']} "
            f"action_17_interp={r['eval_17_interp']['action_accuracy']} guidance={g} temperature={temp}")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
