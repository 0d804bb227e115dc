"""``vqgen data ...``: make and check image-folder data sets."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqgen.cli import add_group, nonnegative_int, positive_int
from vqgen.errors import VqgenError


def _colour(text: str) -> tuple[int, int, int]:
    try:
        rgb = tuple(int(c) for c in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise argparse.ArgumentTypeError(f"{text!r} is not R,G,B with values 0-255")
    return rgb


def register(sub) -> None:
    group = add_group(sub, "data", help="make and check data sets (image folder + metadata.jsonl)",
                      description="Every source is written as an image folder: PNGs + metadata.jsonl "
                                  "(file_name, text, label, extra columns) + classes.json.")

    p = group.add_parser("emoji", help="emoji artwork from emoji-datasource-<style> npm packages",
                         description="Captions from the emoji's name and short names, label from its category. "
                                     "Get a package with `npm pack emoji-datasource-google` (a .tgz).")
    p.add_argument("--package", required=True, action="append", metavar="PATH",
                   help="an emoji-datasource-* package: the .tgz from `npm pack` or its extracted directory "
                        "(repeat for several styles)")
    p.add_argument("--out", required=True, metavar="DIR", help="output image folder")
    p.add_argument("--styles", default=None, metavar="S1,S2",
                   help="comma-separated styles, e.g. google,twitter (default: every style in the packages)")
    p.add_argument("--size", type=positive_int, default=64, metavar="S", help="image side in pixels (default 64)")
    p.add_argument("--skin-tones", action="store_true",
                   help="also include the skin-tone variations (near-duplicates; left out by default)")
    p.add_argument("--background", type=_colour, default=(255, 255, 255), metavar="R,G,B",
                   help="colour under transparent pixels (default 255,255,255)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_emoji)

    p = group.add_parser("digits", help="scikit-learn's 1,797 handwritten digits (labels 0-9, no download)")
    p.add_argument("--out", required=True, metavar="DIR", help="output image folder")
    p.add_argument("--size", type=positive_int, default=32, metavar="S", help="image side in pixels (default 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_digits)

    p = group.add_parser("check", help="count good and skipped records (by reason) of an image folder or tar shards",
                         description="Reads every record the way training would and reports what would be "
                                     "skipped, by reason; the last line is a JSON summary.")
    p.add_argument("path", metavar="DIR", help="an image folder, a directory of .tar shards, or one .tar")
    p.add_argument("--size", type=positive_int, default=None, metavar="S", help="also resize to S x S (default: no resize)")
    p.add_argument("--require-text", action="store_true", help="count records without a caption as skipped")
    p.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                   help="skip images with more pixels than N (default 64000000)")
    p.add_argument("--show", type=nonnegative_int, default=10, metavar="K", help="print up to K skipped records (default 10)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when anything was skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_check)

    p = group.add_parser("code-shards", help="write a code folder (vqgen tokenizer encode) as WebDataset tar shards",
                         description="Each record becomes KEY.codes.npy (its code grid) and KEY.json (text, label, "
                                     "meta, original key) in codes-00000.tar, ...: the shards stage-2 training "
                                     "can stream from a path or URL (docs/streaming.md).")
    p.add_argument("codes", metavar="CODES", help="a code folder (info.json + shard-*.safetensors)")
    p.add_argument("out", metavar="OUT", help="output folder for the .tar shards")
    p.add_argument("--shard-size", type=positive_int, default=1000, metavar="N", help="records per shard (default 1000)")
    p.set_defaults(func=_code_shards)


def _emoji(args) -> int:
    from vqgen.data.emoji import write_emoji_dataset

    for pkg in args.package:
        if not Path(pkg).exists():
            raise VqgenError(f"emoji package {pkg} does not exist (make one with `npm pack emoji-datasource-google`)")
    styles = [s.strip() for s in args.styles.split(",") if s.strip()] if args.styles else None
    summary = write_emoji_dataset(args.package, args.out, styles, args.size, args.skin_tones, args.background,
                                  progress=not args.no_progress)
    skipped = sum(summary["skipped"].values())
    print(f"wrote {summary['count']} emoji images ({args.size}x{args.size}; "
          + ", ".join(f"{s}: {n}" for s, n in summary["styles"].items())
          + f"; {len(summary['classes'])} categories; {skipped} skipped) to {args.out}")
    print(json.dumps(summary))
    return 0


def _digits(args) -> int:
    from vqgen.data.digits import write_digits_dataset

    summary = write_digits_dataset(args.out, args.size, progress=not args.no_progress)
    print(f"wrote {summary['count']} digit images ({args.size}x{args.size}) to {args.out}")
    print(json.dumps(summary))
    return 0


def _code_shards(args) -> int:
    from vqgen.data.stream import write_code_shards

    paths = write_code_shards(args.codes, args.out, args.shard_size)
    print(f"wrote {len(paths)} code shards to {args.out}")
    return 0


def _check(args) -> int:
    from vqgen.data.image import DEFAULT_MAX_PIXELS, SKIP_REASONS

    path = Path(args.path)
    if not path.exists():
        raise VqgenError(f"{path} does not exist")
    if not path.is_dir() and path.suffix != ".tar":
        raise VqgenError(f"{path} is neither an image folder nor a .tar shard")
    opts = dict(size=args.size, require_text=args.require_text, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    is_shards = path.suffix == ".tar" or (path.is_dir() and not (path / "metadata.jsonl").is_file()
                                          and any(path.glob("*.tar")))
    if is_shards:
        from vqgen.data.webdataset import ShardDataset
        from vqgen.runtime import progress

        ds = ShardDataset(path, rank=0, world_size=1, **opts)
        good = sum(1 for _ in progress(ds, desc=f"checking {path.name}", enabled=not args.no_progress))
        kind, class_names = "webdataset", None
    else:
        from vqgen.data.folder import ImageFolder

        ds = ImageFolder(path, progress=not args.no_progress, **opts)
        good, kind, class_names = len(ds), "imagefolder", ds.class_names
    skipped = dict(sorted(ds.skipped.items()))
    print(f"{path}: {kind}, {good} good, {sum(skipped.values())} skipped")
    for reason, n in skipped.items():
        print(f"  {reason:<22} {n:>7}  {SKIP_REASONS.get(reason, '')}")
    for key, reason, detail in ds.problems[:max(args.show, 0)]:
        print(f"  - {key}: {reason}" + (f" ({detail})" if detail else ""))
    summary = {"path": str(path), "format": kind, "good": good, "skipped": skipped,
               "num_classes": len(class_names) if class_names is not None else None}
    print(json.dumps(summary))
    return 1 if args.strict and skipped else 0
