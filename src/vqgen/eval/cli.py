"""``vqgen eval ...``: evaluation commands."""
from __future__ import annotations

import json

from vqgen.cli import add_group


def register(sub) -> None:
    group = add_group(sub, "eval", help="evaluate images and models")

    p = group.add_parser(
        "shapes", help="score images of the shapes domain against their scene specs (exact evaluator)",
        description="Score every image of a folder against the 'spec' in its metadata.jsonl with the "
                    "shapes evaluator (colour segmentation, shape features, relations); prints accuracy "
                    "per category and overall, and the JSON summary as the last line.")
    p.add_argument("--images", required=True, metavar="DIR",
                   help="image folder whose metadata.jsonl rows carry 'text' and 'spec' "
                        "(e.g. made by `vqgen data shapes`, or generated images with their prompts' specs)")
    p.add_argument("--details", metavar="FILE",
                   help="also write one JSON line per image here (file_name, text, category, passed, criteria, "
                        "per-object and per-relation results, detections)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=_shapes)


def _shapes(args) -> int:
    from vqgen.eval.shapes import score_folder, write_results

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
