"""``vqgen generate``: images from any pipeline directory (default: the bundled model);
``vqgen pipeline build|clusters``: assemble a pipeline from trained components, fit its clusters."""
from __future__ import annotations

import re

from vqgen.cli import add_group, positive_int

MAX_IMAGES = 10_000  # per command: more is a loop of commands (each image is written as its batch ends)


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate images for a prompt, a class or nothing (PNGs, and a grid with --grid)",
        description="Generate images with a pipeline directory (default: the bundled shapes model) and write them "
                    "as PNGs. The pipeline's type says what it takes: a text PROMPT (text-to-image), a class "
                    "(--class NAME, or PROMPT; class-conditional) or nothing (unconditional). Any type can complete "
                    "an image: --prefix-image IMG --prefix-rows R keeps the image's first R rows of codes and "
                    "writes the rest. Images are drawn in batches of --batch-size; image i depends only on --seed "
                    "and i (the server's `seed` gives the same images).")
    p.add_argument("prompt", metavar="PROMPT", nargs="?", default=None,
                   help='the text prompt, e.g. "a red circle above a blue square" (a class name for a '
                        "class-conditional pipeline; none for an unconditional one)")
    p.add_argument("--class", dest="class_label", default=None, metavar="NAME",
                   help="the class to draw, by name or index (class-conditional pipelines)")
    p.add_argument("-n", "--num", type=positive_int, default=4, metavar="N",
                   help=f"number of images (default 4, at most {MAX_IMAGES})")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="pipeline directory (pipeline.json + components); default: the bundled model")
    p.add_argument("--out", default="out", metavar="DIR", help="output folder (default ./out)")
    p.add_argument("--decoder", "--sampler", default=None, metavar="NAME",
                   help="the decoder that writes the codes: autoregressive (KV-cached, one code a step), sjd "
                        "(speculative Jacobi decoding: a window of codes a step, the same distribution; fastest "
                        "for a few images a call) or naive (the full-recompute reference); default: the pipeline's")
    p.add_argument("--sjd-window", type=positive_int, default=None, metavar="L",
                   help="with --decoder sjd: codes guessed and checked per forward pass (default: the pipeline's, 16)")
    p.add_argument("--guidance", type=float, default=None, metavar="λ",
                   help="classifier-free guidance scale, 0..100 (default: the pipeline's; 1 = off)")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the K most likely codes (0 = off)")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling mass (1 = off)")
    p.add_argument("--cluster", type=int, default=None, metavar="N",
                   help="CogView2 cluster sampling: keep the N most likely codebook clusters (needs a pipeline with "
                        "clusters, see `vqgen pipeline clusters`; 0 = off; default: the pipeline's)")
    p.add_argument("--rerank", type=int, default=None, metavar="K",
                   help="draw K candidates per image and keep the reranker's best (needs a reranker; "
                        "default: the pipeline's, 8 for the bundled model; 1 = off)")
    p.add_argument("--prefix-image", default=None, metavar="IMG",
                   help="complete this image: keep its first --prefix-rows code rows, write the rest")
    p.add_argument("--prefix-rows", type=positive_int, default=None, metavar="R",
                   help="code rows of --prefix-image to keep")
    p.add_argument("--super-resolution", action="store_true", help="upsample with the pipeline's upsampler")
    p.add_argument("--upscale", nargs="?", const="", default=None, metavar="DIR",
                   help="upsample the results: alone, with the pipeline's upsampler (= --super-resolution); with "
                        "DIR, with that super-resolution model (e.g. a diffusion SR stage after a token pipeline)")
    p.add_argument("--thresholding", choices=("none", "static", "dynamic"), default=None,
                   help="diffusion pipelines: clip the predicted image at each step (Imagen's static = [-1, 1]; "
                        "dynamic = per-sample percentile); default: the pipeline's")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed, 0..2^63-1 (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="B",
                   help="images per sampling loop (default 16; memory grows with B x rerank)")
    p.add_argument("--grid", action="store_true", help="also write all images as one grid PNG")
    p.add_argument("--device", default="cpu", metavar="DEV", help="device (default cpu; 'auto' picks a GPU)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=_generate)

    group = add_group(sub, "pipeline", help="assemble pipeline directories and fit their codebook clusters")
    b = group.add_parser("build", help="assemble a pipeline directory from trained components",
                         description="Write a pipeline directory (pipeline.json + one folder per component) from "
                                     "saved models or training runs. Its type follows the transformer: text, "
                                     "class (give --class-names) or unconditional.")
    b.add_argument("--tokenizer", required=True, metavar="DIR", help="image tokenizer (a model or run directory)")
    b.add_argument("--transformer", required=True, metavar="DIR", help="token transformer (a model or run directory)")
    b.add_argument("--reranker", default=None, metavar="DIR", help="optional reranker (CLIP, or a caption scorer)")
    b.add_argument("--upsampler", default=None, metavar="DIR", help="optional super-resolution model")
    b.add_argument("--class-names", default=None, metavar="A,B,...",
                   help="class names of a class-conditional transformer, comma-separated, in index order")
    b.add_argument("--out", required=True, metavar="DIR", help="pipeline directory to write")
    b.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a default sampling setting, e.g. --set guidance_scale=2 --set rerank=8 (repeatable)")
    b.set_defaults(func=_build)
    c = group.add_parser("clusters", help="fit codebook clusters for cluster sampling and store them in a pipeline",
                         description="Cluster the tokenizer's codebook embeddings (seeded k-means) and store the "
                                     "assignment as clusters.safetensors in the pipeline directory, so --cluster N "
                                     "works with it (CogView2's cluster sampling).")
    c.add_argument("model", metavar="DIR", help="pipeline directory")
    c.add_argument("--num", type=positive_int, required=True, metavar="C", help="number of clusters")
    c.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    c.set_defaults(func=_clusters)


def slug(prompt: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].rstrip("-") or "image"


def _load_prefix(path: str | None):
    """The --prefix-image as an RGB PIL image (None without one); a one-line error if unusable."""
    if path is None:
        return None
    from vqgen.data.image import decode_image
    from vqgen.errors import VqgenError

    try:
        return decode_image(path)
    except VqgenError as e:
        raise VqgenError(f"cannot read --prefix-image {path}: {e}") from None


def _generate(args) -> int:
    import time

    from vqgen.errors import VqgenError
    from vqgen.io import make_dir
    from vqgen.pipelines import load_pipeline
    from vqgen.runtime import pick_device, progress
    from vqgen.sampling import image_generators
    from vqgen.sampling.settings import check_seed

    t0 = time.time()
    seed = check_seed(args.seed)
    if args.num > MAX_IMAGES:
        raise VqgenError(f"-n {args.num} is more than {MAX_IMAGES} images in one command; run several commands "
                         "with different --seed")
    if args.class_label is not None and args.prompt is not None:
        raise VqgenError("give the class as --class or as PROMPT, not both")
    folder = make_dir(args.out)  # before any model is loaded
    prefix = _load_prefix(args.prefix_image)
    pipe = load_pipeline(args.model, device=pick_device(args.device))
    if args.upscale:
        from vqgen.pipelines.base import load_components

        pipe = pipe.with_components(upsampler=load_components({"upsampler": _model_dir(args.upscale)},
                                                              pipe.device)["upsampler"])
    super_resolution = args.super_resolution or args.upscale is not None
    label = args.class_label if args.class_label is not None else args.prompt
    if pipe.pipeline_type == "unconditional" and label is not None:
        raise VqgenError("this pipeline is unconditional: leave PROMPT and --class out")
    if pipe.pipeline_type != "unconditional" and label is None:
        raise VqgenError("give a PROMPT" + (" or --class NAME" if pipe.pipeline_type == "class_conditional" else ""))
    if args.class_label is not None and pipe.pipeline_type != "class_conditional":
        raise VqgenError(f"--class needs a class-conditional pipeline; this one is {pipe.pipeline_type}")
    text = pipe.validate_prompt(label)
    settings = pipe.check_settings(pipe.sampling.merged(
        guidance_scale=args.guidance, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        cluster=args.cluster, rerank=args.rerank, decoder=args.decoder, sjd_window=args.sjd_window,
        thresholding=args.thresholding))
    if super_resolution and pipe.upsample_scale is None:
        raise VqgenError("--super-resolution/--upscale needs a pipeline with an upsampler/ component, "
                         "or --upscale DIR")
    name = slug(text) if text else "image"
    paths, images = [], []
    bar = progress(total=args.num, desc="images", enabled=not args.no_progress and args.num > args.batch_size)
    for start in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - start)
        out = pipe([label] * n, num_images=1, settings=settings, prefix_image=prefix, prefix_rows=args.prefix_rows,
                   super_resolution=super_resolution, generator=image_generators(seed, n, first=start),
                   progress=not args.no_progress and args.num <= args.batch_size)
        for i, im in enumerate(out.images, start):
            path = folder / f"{name}-s{seed}-{i}.png"
            im.save(path)
            paths.append(path)
            print(path)
        if args.grid:
            images += out.images
        bar.update(n)
    bar.close()
    if args.grid:
        from vqgen.data.image import image_grid

        path = folder / f"{name}-s{seed}-grid.png"
        image_grid(images).save(path)
        print(path)
    what = f"{text!r}" if text else "unconditional samples"
    print(f"{len(paths)} images of {what} in {folder} ({time.time() - t0:.1f} s)")
    return 0


def _build(args) -> int:
    from vqgen.config import apply_overrides
    from vqgen.errors import VqgenError
    from vqgen.pipelines.base import load_components, pipeline_class
    from vqgen.sampling import SamplingConfig
    from vqgen.transformer.base import TokenModel

    sampling = apply_overrides(SamplingConfig(), args.set)
    models = load_components({"tokenizer": _model_dir(args.tokenizer), "transformer": _model_dir(args.transformer),
                              "reranker": _model_dir(args.reranker), "upsampler": _model_dir(args.upsampler)}, "cpu")
    transformer: TokenModel = models["transformer"]
    kind = {"text": "text_to_image", "class": "class_conditional", "none": "unconditional"}[transformer.cond_kind]
    options = {}
    if args.class_names is not None:
        if kind != "class_conditional":
            raise VqgenError("--class-names goes with a class-conditional transformer")
        options["class_names"] = [c.strip() for c in args.class_names.split(",")]
    pipe = pipeline_class(kind)(**models, sampling=sampling, **options)
    pipe.save_pretrained(args.out)
    print(f"{kind} pipeline: {args.out}")
    return 0


def _model_dir(path: str | None):
    """A model directory, or a training run's ``model/`` folder."""
    from pathlib import Path

    if path is None:
        return None
    p = Path(path)
    return p / "model" if (p / "model" / "config.json").is_file() else p


def _clusters(args) -> int:
    from vqgen.pipelines import load_pipeline
    from vqgen.sampling import fit_clusters
    from vqgen.sampling.settings import check_seed

    check_seed(args.seed)
    pipe = load_pipeline(args.model)
    clusters = fit_clusters(pipe.tokenizer.codebook_embeddings(), num_clusters=args.num, seed=args.seed)
    pipe.with_components(clusters=clusters).save_pretrained(args.model)
    sizes = clusters.bincount(minlength=args.num)
    print(f"{args.num} clusters of the {clusters.numel()} codes (sizes {int(sizes.min())}..{int(sizes.max())}) "
          f"stored in {args.model}; use --cluster N")
    return 0
