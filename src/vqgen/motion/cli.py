"""``vqgen data motion`` and ``vqgen eval motion``: the motion domain adds its data set to the
``data`` command group and its evaluator to the ``eval`` group."""
from __future__ import annotations

import json

from vqgen.cli import add_group, nonnegative_int, positive_int


def register(sub) -> None:
    group = add_group(sub, "data", help="make and check data sets (image folder + metadata.jsonl)")
    p = group.add_parser("motion", help="render the procedural motion clips (captions + per-frame specs)",
                         description="Render clips of shapes that move, grow, shrink, change colour, appear or "
                                     "disappear, one action per object, as a clip folder: one frame-strip PNG per "
                                     "clip + metadata.jsonl (caption, spec, timing, frame rate, key frames, "
                                     "per-frame states) + motion.json (docs/motion.md).")
    p.add_argument("--out", required=True, metavar="DIR", help="output clip folder")
    p.add_argument("--num", type=positive_int, default=1000, metavar="N", help="number of clips (default 1000)")
    p.add_argument("--size", type=positive_int, default=64, metavar="S", help="frame side in pixels (default 64)")
    p.add_argument("--seed", type=nonnegative_int, default=0, metavar="K", help="random seed (default 0)")
    p.add_argument("--frames", type=positive_int, default=None, metavar="F",
                   help="frames per clip at 16 fps (default 33; at least 5)")
    p.add_argument("--mp4", action="store_true", help="also write an H.264 preview of every clip under DIR/mp4/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_data)

    group = add_group(sub, "eval", help="evaluate images and models")
    p = group.add_parser(
        "motion", help="score motion clips against their specs, or a video pipeline on the motion prompt suite",
        description="With --videos: score every clip of a clip folder against the 'spec' of its metadata.jsonl row "
                    "(objects read in every frame by the shapes evaluator, tracked across frames, scored for "
                    "object/colour, action and temporal consistency). With --model: generate --samples clips per "
                    "suite prompt and score them. With --tokenizer: score ground-truth suite clips after a tokenizer "
                    "round trip. Prints accuracy per category and the JSON summary as the last line.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", metavar="DIR", help="clip folder (e.g. made by `vqgen data motion`)")
    src.add_argument("--model", nargs="?", const="", metavar="DIR",
                     help="text-to-video pipeline directory to generate with (without DIR: the bundled video model)")
    src.add_argument("--tokenizer", metavar="DIR",
                     help="image tokenizer directory: score ground-truth clips of the suite after an encode -> decode "
                          "round trip of every frame (the ceiling of a video model writing its codes)")
    p.add_argument("--details", metavar="FILE", help="with --videos: also write one JSON line per clip here")
    p.add_argument("--prompts", metavar="FILE", default=None,
                   help="with --model/--tokenizer: prompt suite, JSON lines {prompt, spec[, category]} (default: "
                        "the shipped motion suite)")
    p.add_argument("--per-category", type=positive_int, default=None, metavar="N",
                   help="with --model/--tokenizer: only the first N prompts of each category")
    p.add_argument("--samples", type=positive_int, default=1, metavar="K",
                   help="with --model/--tokenizer: clips per prompt (default 1)")
    p.add_argument("--frames", type=positive_int, default=None, metavar="F",
                   help="with --model: frames per generated clip (default: the pipeline's); with --tokenizer: "
                        "frames per ground-truth clip (default 17)")
    p.add_argument("--fps", type=positive_int, default=None,
                   help="with --model: frame rate of the result (default: key frames at 2 fps, i.e. 2 (F-1)/4 with "
                        "--frames F, else the pipeline's)")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="with --model/--tokenizer: seed of the samples (default 0)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="with --model: write report.md, grids/<category>.png, summary.json, results.jsonl and "
                        "the clips (a clip folder) here")
    p.add_argument("--device", default="cpu", help="with --model: cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=_eval)


def _data(args) -> int:
    from vqgen.motion.dataset import write_motion_dataset
    from vqgen.motion.scenes import DEFAULT_FRAMES

    frames = args.frames or DEFAULT_FRAMES
    summary = write_motion_dataset(args.out, args.num, args.size, args.seed, frames,
                                   progress=not args.no_progress, mp4=args.mp4)
    print(f"wrote {summary['num']} motion clips ({frames} frames of {args.size}x{args.size}) to {args.out}")
    print(json.dumps(summary))
    return 0


def _eval(args) -> int:
    from vqgen.errors import VqgenError

    if args.tokenizer is not None:
        return _eval_tokenizer(args)
    if args.model is None:
        for flag in ("prompts", "per_category", "frames", "fps", "out"):
            if getattr(args, flag) is not None:
                raise VqgenError(f"--{flag.replace('_', '-')} goes with --model")
        from vqgen.motion.evaluate import score_folder, write_results

        summary, results = score_folder(args.videos, progress=not args.no_progress)
        if args.details:
            write_results(results, args.details)
    else:
        if args.details:
            raise VqgenError("--details goes with --videos; with --model, --out holds results.jsonl")
        from vqgen.eval.report import select_prompts
        from vqgen.motion.evaluate import pipeline_generator, score_generator
        from vqgen.motion.suite import load_suite
        from vqgen.pipelines.text_to_video import TextToVideoPipeline
        from vqgen.runtime import pick_device

        suite = select_prompts(load_suite(args.prompts), args.per_category)
        pipe = TextToVideoPipeline.from_pretrained(args.model or None, device=pick_device(args.device))
        fps = args.fps or (2 * (args.frames - 1) // 4 if args.frames else None)  # as `vqgen video eval`
        summary = score_generator(pipeline_generator(pipe, frames=args.frames, fps=fps), suite,
                                  samples=args.samples, seed=args.seed, out_dir=args.out,
                                  progress=not args.no_progress)
    print(f"{'category':<10} {'n':>6} {'accuracy':>9}")
    for name, c in summary["categories"].items():
        print(f"{name:<10} {c['n']:>6} {c['accuracy']:>9.4f}")
    print(f"{'overall':<10} {summary['num']:>6} {summary['overall']:>9.4f}")
    print("criteria: " + "  ".join(f"{k} {v:.4f}" for k, v in summary["criteria"].items()))
    print("actions: " + "  ".join(f"{k} {v:.4f}" for k, v in summary["actions"].items())
          + f"  frame objects {summary['frame_object_accuracy']:.4f}")
    if summary["skipped"]:
        print("skipped: " + ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()))
    if args.details:
        print(f"per-clip results: {args.details}")
    print(json.dumps(summary))
    return 0


def _eval_tokenizer(args) -> int:
    from vqgen.eval.report import select_prompts
    from vqgen.io import load_pretrained
    from vqgen.motion.evaluate import tokenizer_round_trip
    from vqgen.motion.suite import load_suite

    tokenizer = load_pretrained(args.tokenizer).eval()
    suite = select_prompts(load_suite(args.prompts), args.per_category)
    summary = tokenizer_round_trip(tokenizer, suite, samples=args.samples, seed=args.seed, frames=args.frames or 17)
    print(f"{'category':<10} {'n':>6} {'clips':>8} {'round trip':>11}")
    for name, c in summary["categories"].items():
        print(f"{name:<10} {c['n']:>6} {c['ground_truth']:>8.4f} {c['round_trip']:>11.4f}")
    print(f"{'overall':<10} {summary['num']:>6} {summary['ground_truth']:>8.4f} {summary['round_trip']:>11.4f}")
    print(json.dumps(summary))
    return 0
