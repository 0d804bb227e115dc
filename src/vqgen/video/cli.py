"""``vqgen video encode|train|build|generate|eval``: the text-to-video commands."""
from __future__ import annotations

import json
from pathlib import Path

from vqgen.cli import add_group, add_set_argument, nonnegative_int, positive_int


def register(sub) -> None:
    group = add_group(sub, "video", help="text-to-video (CogVideo): encode clips, train, build, generate, evaluate")

    p = group.add_parser("encode", help="tokenize every frame of a motion clip folder (vqgen data motion)")
    p.add_argument("--data", required=True, metavar="DIR", help="clip folder written by `vqgen data motion`")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="image tokenizer directory")
    p.add_argument("--out", required=True, metavar="CODES", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_encode)

    p = group.add_parser("train", help="train the dual-channel video model (resumes an existing RUN)",
                         description="Presets: video-key (inherit the image model, train the key-frame temporal "
                                     "channel only), video-key-full (train everything), video-key-scratch (fresh "
                                     "image weights), video-interp (from a key run: the interpolation channel). "
                                     "Name the image model with --set train.image_from=DIR (a unified model, run or "
                                     "pipeline) or the video model with --set train.init_from=RUN.")
    p.add_argument("--codes", required=True, metavar="CODES", help="encoded clips (vqgen video encode)")
    p.add_argument("--preset", default=None, metavar="NAME", help="video-key | video-key-full | video-key-scratch | "
                                                                   "video-interp (default video-key for a new run)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (resumed if it exists)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_argument(p)
    p.set_defaults(func=_train)

    p = group.add_parser("build", help="assemble a video pipeline directory from a tokenizer and a video run")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="image tokenizer directory")
    p.add_argument("--transformer", required=True, metavar="RUN", help="video model (a run or its model/)")
    p.add_argument("--out", required=True, metavar="DIR", help="pipeline directory to write")
    p.add_argument("--guidance", type=float, default=1.0, metavar="G", help="default guidance scale (1 = none)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="default temperature (0 = greedy)")
    p.add_argument("--top-k", type=nonnegative_int, default=0, metavar="K", help="default top-k (0 = off)")
    p.set_defaults(func=_build)

    p = group.add_parser("generate", help="write a clip for a prompt: GIF, MP4 (with PyAV) and a frame strip PNG")
    p.add_argument("prompt", help="what happens, e.g. 'a red circle moves to the right'")
    p.add_argument("--model", default=None, metavar="DIR", help="video pipeline directory (default: the bundled one)")
    p.add_argument("--frames", type=positive_int, default=17, metavar="N", help="frames: 5, 9, 17 or 33 (default 17)")
    p.add_argument("--fps", type=positive_int, default=8, metavar="R", help="frame rate of the result (default 8)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=nonnegative_int, default=0, metavar="S", help="seed (default 0)")
    p.add_argument("--guidance", type=float, default=None, metavar="G", help="guidance scale (default: the pipeline's)")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="temperature (default: the pipeline's)")
    p.add_argument("--top-k", type=nonnegative_int, default=None, metavar="K", help="top-k (default: the pipeline's)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="device (default cpu)")
    p.set_defaults(func=_generate)

    p = group.add_parser("eval", help="score a video pipeline on the motion suite (batched; same seeds as "
                                      "`vqgen eval motion --model`)")
    p.add_argument("--model", default=None, metavar="DIR", help="video pipeline directory (default: the bundled one)")
    p.add_argument("--frames", type=positive_int, default=5, metavar="N", help="frames per clip (5 = key frames only)")
    p.add_argument("--fps", type=positive_int, default=None, metavar="R",
                   help="frame rate of the result (default: 2 x 2^passes, i.e. key frames at 2 fps)")
    p.add_argument("--seed", type=nonnegative_int, default=0, metavar="S", help="first seed (default 0)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="first N suite prompts only")
    p.add_argument("--batch", type=positive_int, default=64, metavar="B", help="clips written at once (default 64)")
    p.add_argument("--out", default=None, metavar="DIR", help="write summary.json, results.jsonl and the clips here")
    p.add_argument("--guidance", type=float, default=None, metavar="G", help="guidance scale (default: the pipeline's)")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="temperature (default: the pipeline's)")
    p.add_argument("--top-k", type=nonnegative_int, default=None, metavar="K", help="top-k (default: the pipeline's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)


def _encode(args) -> int:
    from vqgen.video.train import encode_clips

    info = encode_clips(args.data, args.tokenizer, args.out, show_progress=not args.no_progress)
    print(json.dumps(info))
    return 0


def _train(args) -> int:
    from vqgen.video.train import train

    res = train(args.codes, args.out, preset=args.preset, overrides=args.overrides,
                show_progress=not args.no_progress)
    print(f"step {res.step}: val_loss {res.val_loss:.4f} nats/code; {res.trainable} parameters trained, "
          f"{res.frozen} frozen; model in {res.run_dir / 'model'}")
    return 0


def _build(args) -> int:
    from vqgen.pipelines.text_to_video import TextToVideoPipeline
    from vqgen.runtime import model_dir
    from vqgen.sampling.settings import SamplingConfig

    settings = SamplingConfig(guidance_scale=args.guidance, temperature=args.temperature, top_k=args.top_k)
    pipe = TextToVideoPipeline.from_components(model_dir(args.tokenizer), model_dir(args.transformer), sampling=settings)
    pipe.save_pretrained(args.out)
    print(f"video pipeline written to {args.out}")
    return 0


def write_clip_files(frames, out: Path, fps: int, name: str = "video") -> list[str]:
    """``out/NAME.gif`` (Pillow), ``out/NAME.mp4`` (PyAV through imageio, when installed) and
    ``out/NAME-strip.png`` (the frames left to right); returns notes on what was not written."""
    from PIL import Image

    from vqgen.io import make_dir

    out = make_dir(out)
    frames[0].save(out / f"{name}.gif", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    w, h = frames[0].size
    strip = Image.new("RGB", (w * len(frames), h), "white")
    for i, f in enumerate(frames):
        strip.paste(f, (i * w, 0))
    strip.save(out / f"{name}-strip.png")
    try:
        import av  # noqa: F401
        import imageio.v3 as iio
    except ImportError:
        return [f"no MP4: PyAV/imageio are not installed (pip install 'vqgen[video]'); wrote {name}.gif and "
                f"{name}-strip.png"]
    import numpy as np

    arr = np.stack([np.asarray(f.convert("RGB")) for f in frames])  # (T, H, W, 3)
    arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # even sides for 4:2:0
    iio.imwrite(out / f"{name}.mp4", arr, plugin="pyav", codec="libx264", fps=fps)
    return []


def _generate(args) -> int:
    from vqgen.pipelines.text_to_video import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(args.model, device=args.device)
    out = pipe(args.prompt, num_frames=args.frames, fps=args.fps, seed=args.seed, guidance_scale=args.guidance,
               temperature=args.temperature, top_k=args.top_k)
    notes = write_clip_files(out.frames[0], Path(args.out), args.fps)
    for note in notes:
        print(f"vqgen: {note}")
    written = sorted(p.name for p in Path(args.out).iterdir() if p.stem.startswith("video"))
    print(f"{args.frames} frames at {args.fps} fps in {args.out}: {', '.join(written)}")
    return 0


def _eval(args) -> int:
    from vqgen.motion.evaluate import sample_seed, score_generator
    from vqgen.motion.suite import load_suite
    from vqgen.pipelines.text_to_video import TextToVideoPipeline
    from vqgen.runtime import progress
    from vqgen.video.sample import passes_for

    pipe = TextToVideoPipeline.from_pretrained(args.model)
    suite = load_suite()[: args.limit]
    fps = args.fps or 2 * 2 ** passes_for(args.frames)
    import numpy as np
    import torch

    table = {}
    jobs = [(sample_seed(args.seed, i, 0, 1), item["prompt"]) for i, item in enumerate(suite)]
    for j in progress(range(0, len(jobs), args.batch), desc="writing clips", enabled=not args.no_progress):
        part = jobs[j:j + args.batch]
        gens = [torch.Generator().manual_seed(s) for s, _ in part]
        out = pipe([p for _, p in part], num_frames=args.frames, fps=fps, generator=gens, output_type="np",
                   guidance_scale=args.guidance, temperature=args.temperature, top_k=args.top_k)
        table.update({(p, s): np.stack(frames) for (s, p), frames in zip(part, out.frames)})
    summary = score_generator(lambda prompt, seed: table[(prompt, seed)], suite, seed=args.seed, out_dir=args.out,
                              progress=False)
    print(json.dumps(summary))
    return 0
