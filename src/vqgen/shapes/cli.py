"""``vqgen data shapes``: the shapes domain adds its data set to the ``data`` command group."""
from __future__ import annotations

import json

from vqgen.cli import add_group, nonnegative_int, positive_int


def register(sub) -> None:
    group = add_group(sub, "data", help="make and check data sets (image folder + metadata.jsonl)")

    p = group.add_parser("shapes", help="render the procedural shapes data set (captions + scene specs)")
    p.add_argument("--out", required=True, metavar="DIR", help="output image folder")
    p.add_argument("--num", type=positive_int, default=10000, metavar="N", help="number of images (default 10000)")
    p.add_argument("--size", type=positive_int, default=64, metavar="S", help="image side in pixels (default 64)")
    p.add_argument("--seed", type=nonnegative_int, default=0, metavar="K", help="random seed (default 0)")
    p.add_argument("--captions", type=positive_int, default=1, metavar="K",
                   help="captions per scene: the canonical one, then K-1 other wordings (synonyms, digits, orders, "
                        "templates) stored as `texts` in metadata.jsonl for training to sample from (default 1: "
                        "the canonical caption only)")
    p.add_argument("--typo-rate", type=_typo_rate, default=0.0, metavar="P",
                   help="with --captions K > 1: misspell each word of 4+ letters of the extra wordings with "
                        "probability P (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_shapes)


def _typo_rate(text: str) -> float:
    """argparse type: a probability in [0, 1)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return value


def _shapes(args) -> int:
    from vqgen.shapes.dataset import write_shapes_dataset

    summary = write_shapes_dataset(args.out, args.num, args.size, args.seed, progress=not args.no_progress,
                                   captions=args.captions, typo_rate=args.typo_rate)
    print(f"wrote {summary.get('num', args.num)} shapes images ({args.size}x{args.size}) to {args.out}")
    print(json.dumps(summary))
    return 0
