"""``vqgen edit``: text-guided editing of an image's box with a CogLM model; ``vqgen eval edits``:
the shapes edit suite scored (adds itself to the eval group; its handler loads ``vqgen.eval.edit``
on use, as a command module sits above every layer)."""
from __future__ import annotations

import json

from vqgen.cli import add_group, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "edit", help="regenerate a box of an image for a text prompt (CogLM infill; PNGs and a before/after grid)",
        description="Text-guided editing (CogView2): the image is centre-cropped to a square, resized to the "
                    "pipeline's size and encoded; the code cells under --box (partial cells included) are written "
                    "again by a CogLM-trained model from PROMPT and every other code, which is kept. Writes -n edited "
                    "PNGs and a before/after grid (source with the box, the tokenizer's round trip, the edits). "
                    "PROMPT best describes the whole edited image, e.g. \"a blue square to the left of a red circle\". "
                    "Needs a pipeline whose transformer was trained with model.coglm_mix > 0 (the bundled Parti "
                    "model cannot fill a region).")
    p.add_argument("image", metavar="IMAGE", help="the image to edit (PNG, JPEG, ...)")
    p.add_argument("prompt", metavar="PROMPT", help="what the edited image shows")
    p.add_argument("--box", required=True, metavar="x0,y0,x1,y1",
                   help="the region to regenerate, in IMAGE's pixels (x1, y1 exclusive)")
    p.add_argument("--out", default="out", metavar="DIR", help="output folder (default ./out)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="pipeline directory with a CogLM-trained transformer; default: the bundled model")
    p.add_argument("-n", "--num", type=positive_int, default=4, metavar="N", help="edited images (default 4, at most 64)")
    p.add_argument("--rerank", type=int, default=None, metavar="K",
                   help="draw K candidates per image, keep the reranker's best for PROMPT (default: the pipeline's; 1 = off)")
    p.add_argument("--guidance", type=float, default=None, metavar="λ",
                   help="classifier-free guidance scale of the infill, 0..100 (default: the pipeline's; 1 = off)")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the K most likely codes (0 = off)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="device (default cpu; 'auto' picks a GPU)")
    p.set_defaults(func=_edit)

    group = add_group(sub, "eval", help="evaluate images and models")
    e = group.add_parser(
        "edits", help="edit the shapes edit suite with a CogLM pipeline and score the edits",
        description="For every edit of the suite (a rendered scene, one object's box, the scene with that "
                    "object's colour or shape changed as the prompt), edit the scene with the pipeline and report "
                    "the share of edits the shapes evaluator reads as the new spec (goal >= 0.8) and the PSNR of "
                    "the pixels outside the box against the source, beside the tokenizer's own round trip (goal: "
                    "within 1 dB). Prints a table and the JSON summary as the last line.")
    e.add_argument("--model", required=True, metavar="DIR", help="pipeline directory with a CogLM-trained transformer")
    e.add_argument("--prompts", default=None, metavar="FILE", help="edit suite (default: the shipped shapes_edits.jsonl)")
    e.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N edits of each category")
    e.add_argument("--samples", type=positive_int, default=1, metavar="K", help="edited images per edit (default 1)")
    e.add_argument("--rerank", type=int, default=None, metavar="R",
                   help="candidates per edited image, the reranker keeps the best (default: the pipeline's; 1 = off)")
    e.add_argument("--guidance", type=float, default=None, metavar="λ", help="guidance scale (default: the pipeline's)")
    e.add_argument("--temperature", type=float, default=None, metavar="T", help="temperature (default: the pipeline's)")
    e.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the edits (default 0)")
    e.add_argument("--out", default=None, metavar="DIR", help="also write results.jsonl, summary.json and grid.png here")
    e.add_argument("--device", default="cpu", metavar="DEV", help="device (default cpu)")
    e.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    e.set_defaults(func=_eval_edits)


MAX_EDITS = 64


def _edit(args) -> int:
    import time

    from vqgen.data.image import decode_image, image_grid, to_pil
    from vqgen.errors import VqgenError
    from vqgen.io import make_dir
    from vqgen.pipelines import load_pipeline
    from vqgen.pipelines.cli import slug
    from vqgen.pipelines.edit import box_overlay, check_infill, parse_box
    from vqgen.runtime import pick_device
    from vqgen.sampling import image_generators
    from vqgen.sampling.settings import check_seed

    t0 = time.time()
    seed = check_seed(args.seed)
    if args.num > MAX_EDITS:
        raise VqgenError(f"-n {args.num} is more than {MAX_EDITS} edits in one command")
    box = parse_box(args.box)
    try:
        image = decode_image(args.image)
    except VqgenError as e:
        raise VqgenError(f"cannot read {args.image}: {e}") from None
    folder = make_dir(args.out)
    pipe = load_pipeline(args.model, device=pick_device(args.device))
    if pipe.pipeline_type != "text_to_image":
        raise VqgenError(f"editing needs a text-to-image pipeline with a CogLM-trained transformer; this one is "
                         f"{pipe.pipeline_type}")
    check_infill(pipe.transformer)
    out = pipe.edit(image, box, args.prompt, num_images=args.num, rerank=args.rerank, guidance_scale=args.guidance,
                    temperature=args.temperature, top_k=args.top_k,
                    generator=image_generators(seed, args.num), output_type="pt")
    name = slug(out.prompts[0])
    for i, im in enumerate(out.images):
        path = folder / f"{name}-s{seed}-{i}.png"
        to_pil(im).save(path)
        print(path)
    trip = pipe.decode(out.source_codes.to(pipe.device)).clamp(0, 1).cpu()[0]  # (3, S, S)
    grid = image_grid([to_pil(t) for t in (box_overlay(out.source, out.box, out.cells), trip, *out.images)],
                      cols=2 + len(out.images))
    path = folder / f"{name}-s{seed}-before-after.png"
    grid.save(path)
    print(path)
    print(f"{len(out.images)} edits of {int(out.cells.sum())} code cells for {out.prompts[0]!r} in {folder} "
          f"({time.time() - t0:.1f} s)")
    return 0


def _eval_edits(args) -> int:
    from vqgen.errors import VqgenError
    from vqgen.eval.edit import EditSettings, evaluate_edits, load_edit_suite
    from vqgen.eval.report import select_prompts
    from vqgen.pipelines import TextToImagePipeline
    from vqgen.pipelines.edit import check_infill
    from vqgen.runtime import pick_device
    from vqgen.sampling.settings import check_seed

    suite = select_prompts(load_edit_suite(args.prompts), args.limit)
    pipe = TextToImagePipeline.from_pretrained(args.model, device=pick_device(args.device))
    check_infill(pipe.transformer)
    if args.rerank is not None and args.rerank < 1:
        raise VqgenError(f"--rerank must be >= 1 (1 = off), got {args.rerank}")
    settings = EditSettings(samples=args.samples, rerank=args.rerank, guidance=args.guidance,
                            temperature=args.temperature, seed=check_seed(args.seed))
    s = evaluate_edits(pipe, suite, settings, out_dir=args.out, show_progress=not args.no_progress)
    print(f"{'group':<20} {'n':>4} {'accuracy':>9} {'ceiling':>8}")
    for name, g in s["groups"].items():
        print(f"{name:<20} {g['n']:>4} {g['accuracy']:>9.4f} {g['target_ceiling']:>8.4f}")
    print(f"{'overall':<20} {s['edits']:>4} {s['accuracy']:>9.4f} {s['target_ceiling']:>8.4f}  "
          f"(goal {s['accuracy_goal']}: {'met' if s['accuracy_met'] else 'missed'}; not editing reads the new spec "
          f"in {s['unedited_reads_new']:.4f})")
    print(f"outside the box: PSNR {s['psnr_outside_db']:.2f} dB edited vs {s['psnr_roundtrip_outside_db']:.2f} dB round "
          f"trip, gap {s['psnr_gap_db']:.2f} dB (goal <= {s['psnr_goal_db']}: {'met' if s['psnr_met'] else 'missed'}); "
          f"codes outside kept in {s['codes_outside_kept']:.4f} of edits")
    if args.out:
        print(f"results: {args.out}")
    print(json.dumps(s))
    return 0
