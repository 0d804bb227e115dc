"""``vqgen eval ...``: evaluation commands."""
from __future__ import annotations

import json
from pathlib import Path

from vqgen.cli import add_group
from vqgen.errors import VqgenError


def register(sub) -> None:
    group = add_group(sub, "eval", help="evaluate images and models")

    p = group.add_parser(
        "shapes", help="score shapes images against their specs, or generate the prompt suite with a model and "
                       "write an evaluation report",
        description="With --images: score every image of a folder against the 'spec' in its metadata.jsonl with "
                    "the shapes evaluator (colour segmentation, shape features, relations). With --model: generate "
                    "--samples images for every prompt of the suite at each --guidance value (optionally the "
                    "reranker's best of --rerank N candidates vs a random pick of the same candidates), score them, "
                    "and write a report folder (--out): report.md, summary.json, results.jsonl, a sample grid per "
                    "category, a plot of accuracy vs guidance, and the kept images as image folders. Prints accuracy "
                    "per category and the JSON summary as the last line.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR",
                     help="image folder whose metadata.jsonl rows carry 'text' and 'spec' "
                          "(e.g. made by `vqgen data shapes`, or a report's images/<setting>/)")
    src.add_argument("--model", metavar="DIR", help="text-to-image pipeline directory to generate with")
    src.add_argument("--tokenizer", metavar="DIR",
                     help="image tokenizer directory: score the suite's ground-truth renders after an encode -> "
                          "decode round trip (the ceiling of any generator on its codes)")
    p.add_argument("--details", metavar="FILE",
                   help="with --images: also write one JSON line per image here (file_name, text, category, passed, "
                        "criteria, per-object and per-relation results, detections)")
    p.add_argument("--prompts", metavar="FILE|NAME[,...]", default=None,
                   help="with --model: prompt suite, JSON lines {prompt, spec[, category]}, or a shipped suite by "
                        "name: suite (default), paraphrases (words the captions never use) or holdout (the "
                        "held-out wordings of docs/captions.md); several, comma-separated, are each reported "
                        "in a sub-folder of --out and side by side (all = suite,paraphrases,holdout)")
    p.add_argument("--per-category", type=int, default=None, metavar="N",
                   help="with --model: only the first N prompts of each category (a quicker, balanced subset)")
    p.add_argument("--samples", type=int, default=4, metavar="K",
                   help="with --model: images kept per prompt (default 4)")
    p.add_argument("--guidance", default=None, metavar="G[,G...]",
                   help="with --model: classifier-free guidance scales to compare, e.g. 1,3,5 "
                        "(default: the pipeline's own)")
    p.add_argument("--rerank", type=int, default=0, metavar="N",
                   help="with --model: draw N candidates per kept image and report the reranker's best against a "
                        "random pick of the same candidates (needs a pipeline with a reranker)")
    p.add_argument("--reranker", metavar="DIR", default=None,
                   help="with --model: use this reranker (a model or `vqgen rerank train` run directory, or a text-after-image "
                        "unified model/run for CogView's caption-perplexity post-selection) instead of "
                        "the pipeline's own")
    p.add_argument("--temperature", type=float, default=None,
                   help="with --model: sampling temperature (default: the pipeline's)")
    p.add_argument("--top-k", type=int, default=None, help="with --model: top-k sampling (default: the pipeline's)")
    p.add_argument("--top-p", type=float, default=None, help="with --model: top-p sampling (default: the pipeline's)")
    p.add_argument("--cluster", type=int, default=None, metavar="N",
                   help="with --model: CogView2 cluster sampling, keep the N most likely codebook clusters "
                        "(needs a pipeline with clusters; 0 = off; default: the pipeline's)")
    p.add_argument("--decoder", "--sampler", default=None, metavar="NAME",
                   help="with --model: the decoder that writes the codes: autoregressive, sjd or naive (default: "
                        "the pipeline's)")
    p.add_argument("--sjd-window", type=int, default=None, metavar="L",
                   help="with --model --decoder sjd: codes guessed per forward pass (default: the pipeline's)")
    p.add_argument("--thresholding", choices=("none", "static", "dynamic"), default=None,
                   help="with a diffusion --model: x0 thresholding at each step (default: the pipeline's)")
    p.add_argument("--out", metavar="REPORT_DIR", default=None, help="with --model: report folder to write (required)")
    p.add_argument("--data-out", metavar="DIR", default=None,
                   help="with --model: write results.jsonl and images/ here instead of into REPORT_DIR "
                        "(keeps a report under docs/ small)")
    p.add_argument("--no-images", action="store_true",
                   help="with --model: do not keep the generated images in the report (grids, tables and plot only)")
    p.add_argument("--seed", type=int, default=0, help="with --model: seed of the samples and random picks (default 0)")
    p.add_argument("--batch", type=int, default=64, metavar="B",
                   help="with --model: images generated per call, prompts batched together (default 64)")
    p.add_argument("--device", default="cpu", help="with --model: cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=_shapes)


def _shapes(args) -> int:
    if args.model is not None:
        return _shapes_model(args)
    if args.tokenizer is not None:
        return _shapes_tokenizer(args)
    from vqgen.shapes.evaluate import score_folder, write_results

    result = score_folder(args.images, progress=not args.no_progress)
    print(f"{'category':<10} {'n':>6} {'accuracy':>9}")
    for name, c in result.categories.items():
        print(f"{name:<10} {c['n']:>6} {c['accuracy']:>9.4f}")
    print(f"{'overall':<10} {result.num:>6} {result.overall:>9.4f}")
    print("criteria: " + "  ".join(f"{k} {v:.4f}" for k, v in result.criteria.items()))
    if result.skipped:
        print("skipped: " + ", ".join(f"{k} {v}" for k, v in result.skipped.items()))
    if args.details:
        write_results(result.results, args.details)
        print(f"per-image results: {args.details}")
    print(json.dumps(result.summary()))
    return 0


def _shapes_tokenizer(args) -> int:
    from vqgen.shapes.suite import load_suite
    from vqgen.eval.report import select_prompts
    from vqgen.shapes.evaluate import tokenizer_round_trip
    from vqgen.io import load_pretrained

    tokenizer = load_pretrained(args.tokenizer)
    suite = select_prompts(load_suite(args.prompts), args.per_category)
    summary = tokenizer_round_trip(tokenizer, suite, samples=args.samples, seed=args.seed)
    print(f"{'category':<10} {'n':>6} {'renders':>8} {'round trip':>11}")
    for name, c in summary["categories"].items():
        print(f"{name:<10} {c['n']:>6} {c['ground_truth']:>8.4f} {c['round_trip']:>11.4f}")
    print(f"{'overall':<10} {summary['num']:>6} {summary['ground_truth']:>8.4f} {summary['round_trip']:>11.4f}")
    print(json.dumps(summary))
    return 0


def _shapes_model(args) -> int:
    from vqgen.shapes.suite import load_suite
    from vqgen.eval.report import (ReportSettings, evaluate_pipeline, markdown_tables, parse_guidance,
                                   select_prompts)
    from vqgen.pipelines import TextToImagePipeline
    from vqgen.runtime import pick_device

    if args.out is None:
        raise VqgenError("--model needs --out REPORT_DIR (where the report is written)")
    if args.details:
        raise VqgenError("--details goes with --images; with --model the report holds results.jsonl")
    names = _prompt_sets(args.prompts)
    suites = {name: select_prompts(load_suite(name), args.per_category) for name in names}  # every file checked first
    device = pick_device(args.device)
    pipe = TextToImagePipeline.from_pretrained(args.model, device=device)
    if args.reranker:
        from vqgen.rerank.train import load_reranker

        pipe = pipe.with_components(reranker=load_reranker(args.reranker, device).eval())
    sampling = pipe.check_settings(pipe.sampling.merged(temperature=args.temperature, top_k=args.top_k,
                                                        top_p=args.top_p, cluster=args.cluster,
                                                        decoder=args.decoder, sjd_window=args.sjd_window,
                                                        thresholding=args.thresholding))
    guidance = parse_guidance(args.guidance) if args.guidance else (sampling.guidance_scale,)
    settings = ReportSettings(guidance=guidance, samples=args.samples, rerank=args.rerank, sampling=sampling,
                              seed=args.seed, batch=args.batch, keep_images=not args.no_images)
    several = len(suites) > 1

    def folder(root, name):  # several sets: each its own sub-folder
        return root if root is None or not several else str(Path(root) / Path(name).stem)

    summaries = {}
    for name, suite in suites.items():
        out = folder(args.out, name)
        if several:
            print(f"== prompts: {name} ({len(suite)})", flush=True)
        summaries[name] = summary = evaluate_pipeline(
            pipe, suite, out, settings, show_progress=not args.no_progress,
            meta={"model": str(args.model), "command": _command(args, guidance), "prompts": name},
            data_dir=folder(args.data_out, name))
        print(markdown_tables(summary), end="")
        print(f"report: {out} ({summary['images_generated']} images in {summary['seconds']} s)")
    if not several:
        print(json.dumps(summaries[names[0]]))
        return 0
    side = side_by_side(summaries)
    Path(args.out, "summary.json").write_text(json.dumps(side, indent=1) + "\n")
    print(side_by_side_table(side), end="")
    print(json.dumps(side))
    return 0


def _prompt_sets(value: str | None) -> list[str]:
    """``--prompts``: one suite, or several comma-separated (``all``: the three shipped ones)."""
    if value is None:
        return ["suite"]
    names = ["suite", "paraphrases", "holdout"] if value == "all" else [v.strip() for v in value.split(",")]
    if any(not n for n in names) or len({Path(n).stem for n in names}) < len(names):
        raise VqgenError(f"--prompts {value!r}: empty or repeated suite names")
    return names


def side_by_side(summaries: dict[str, dict]) -> dict:
    """Overall accuracy of every setting for each prompt set (over the five core categories when a set
    has others too): ``{"sets": {name: {setting: accuracy}}, "best": ...}`` plus ``gap_<name>``, how far
    each other set's best setting falls below the first set's."""
    sets = {name: {setting: acc["core_overall"]["accuracy"] if "core_overall" in acc else acc["overall"]
                   for setting, acc in s["settings"].items()} for name, s in summaries.items()}
    first = next(iter(sets))
    best = {name: max(v.values()) for name, v in sets.items()}
    return {"sets": sets, "best": best,
            **{f"gap_{Path(n).stem}": round(best[first] - best[n], 4) for n in sets if n != first},
            "prompts": {name: s["prompts"] for name, s in summaries.items()}}


def side_by_side_table(side: dict) -> str:
    """A markdown table: one row per setting, one column per prompt set."""
    names = list(side["sets"])
    settings = list(next(iter(side["sets"].values())))
    lines = ["| setting | " + " | ".join(f"{n} ({side['prompts'][n]})" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for setting in settings:
        lines.append(f"| {setting} | " + " | ".join(f"{side['sets'][n].get(setting, float('nan')):.3f}"
                                                    for n in names) + " |")
    return "\n".join(lines) + "\n"


def _command(args, guidance: tuple[float, ...]) -> str:
    """The report's command line, rebuilt from the parsed options (defaults spelled out)."""
    parts = ["vqgen eval shapes", f"--model {args.model}", f"--out {args.out}", f"--samples {args.samples}",
             "--guidance " + ",".join(f"{g:g}" for g in guidance), f"--seed {args.seed}"]
    for flag, value in (("--prompts", args.prompts), ("--per-category", args.per_category),
                        ("--rerank", args.rerank or None), ("--reranker", args.reranker),
                        ("--data-out", args.data_out),
                        ("--temperature", args.temperature), ("--top-k", args.top_k), ("--top-p", args.top_p),
                        ("--cluster", args.cluster), ("--decoder", args.decoder),
                        ("--sjd-window", args.sjd_window), ("--thresholding", args.thresholding)):
        if value is not None:
            parts.append(f"{flag} {value}")
    if args.no_images:
        parts.append("--no-images")
    return " ".join(parts)
