"""``vqgen generate "PROMPT"``: images for a prompt with a text-to-image pipeline (default: the bundled model)."""
from __future__ import annotations

import re

from vqgen.cli import positive_int


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate images for a text prompt (PNGs, and a grid with --grid)",
                       description="Generate images for PROMPT with a text-to-image pipeline directory "
                                   "(default: the bundled shapes model), write them as PNGs and print where.")
    p.add_argument("prompt", metavar="PROMPT", help='the text prompt, e.g. "a red circle above a blue square"')
    p.add_argument("-n", "--num", type=positive_int, default=4, metavar="N", help="number of images (default 4)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="pipeline directory (pipeline.json + components); default: the bundled model")
    p.add_argument("--out", default="out", metavar="DIR", help="output folder (default ./out)")
    p.add_argument("--guidance", type=float, default=None, metavar="λ",
                   help="classifier-free guidance scale (default: the pipeline's; 1 = off)")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="sampling temperature")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the K most likely codes (0 = off)")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling mass (1 = off)")
    p.add_argument("--rerank", type=positive_int, default=None, metavar="K",
                   help="draw K candidates per image and keep the reranker's best (needs a reranker; "
                        "default: the pipeline's, 8 for the bundled model; 1 = off)")
    p.add_argument("--super-resolution", action="store_true", help="upsample with the pipeline's superres model")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--grid", action="store_true", help="also write all images as one grid.png")
    p.add_argument("--device", default="cpu", metavar="DEV", help="device (default cpu; 'auto' picks a GPU)")
    p.set_defaults(func=_generate)


def slug(prompt: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].rstrip("-") or "image"


def make_grid(images: list, cols: int | None = None, pad: int = 2):
    """PIL images of one size → one PIL grid image (white padding)."""
    from PIL import Image

    cols = cols or min(len(images), 8)
    rows = -(-len(images) // cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return grid


def _generate(args) -> int:
    import time
    from pathlib import Path

    import torch

    from vqgen.pipelines import TextToImagePipeline
    from vqgen.runtime import pick_device

    t0 = time.time()
    pipe = TextToImagePipeline.from_pretrained(args.model, device=pick_device(args.device))
    prompt = pipe.validate_prompt(args.prompt)
    out = pipe(prompt, num_images=args.num, guidance_scale=args.guidance, temperature=args.temperature,
               top_k=args.top_k, top_p=args.top_p, rerank=args.rerank, super_resolution=args.super_resolution,
               generator=torch.Generator().manual_seed(args.seed))
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    name = slug(prompt)
    for i, im in enumerate(out.images):
        path = folder / f"{name}-s{args.seed}-{i}.png"
        im.save(path)
        print(path)
    if args.grid:
        path = folder / f"{name}-s{args.seed}-grid.png"
        make_grid(out.images).save(path)
        print(path)
    print(f"{len(out.images)} images of {prompt!r} in {folder} ({time.time() - t0:.1f} s)")
    return 0
