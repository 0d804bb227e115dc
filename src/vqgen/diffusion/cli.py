"""``vqgen diffusion ...``: train Imagen-style diffusion models and assemble their cascade."""
from __future__ import annotations

from vqgen.cli import add_group, add_set_argument, positive_int

PRESETS = "tiny, base-small, base-64 (base models); sr-tiny, sr-128 (super-resolution x2)"


def register(sub) -> None:
    group = add_group(sub, "diffusion", help="text-conditional diffusion (Imagen): train base and super-resolution "
                                             "models, assemble a cascade pipeline",
                      description="A U-Net (diffusers blocks) conditioned on a frozen text encoder's embeddings "
                                  "(cross-attention + pooled vector), classifier-free guidance with static/dynamic "
                                  "thresholding, and super-resolution stages with noise-conditioning augmentation.")
    p = group.add_parser("train", help="train a base or super-resolution model (resumes an existing RUN)",
                         description="Train on an image folder with captions (e.g. `vqgen data shapes`). A base "
                                     "preset leaves a pipeline at RUN/pipeline for `vqgen generate`; a "
                                     "super-resolution preset (data at its higher size) leaves RUN/model for "
                                     "`vqgen diffusion pipeline --sr` or `vqgen generate --upscale`.")
    p.add_argument("--data", required=True, metavar="DIR", help="image folder (metadata.jsonl with text) or shards")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help=f"config preset: {PRESETS} (default: tiny for a new RUN, the saved config for an existing one)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N", help="total training steps")
    p.add_argument("--text", choices=["auto", "minilm", "bpe"], default=None,
                   help="text encoder: the frozen MiniLM from its local package, or a BPE + small transformer "
                        "trained with the model (default auto: MiniLM when installed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_argument(p)
    p.set_defaults(func=_train)

    b = group.add_parser("pipeline", help="assemble a diffusion pipeline (base + optional SR stage)",
                         description="Write a pipeline directory from a base run (or model) and optionally a "
                                     "super-resolution run as its upsampler stage (the cascade).")
    b.add_argument("--base", required=True, metavar="RUN", help="base model: a run (RUN/model) or a model directory")
    b.add_argument("--sr", default=None, metavar="RUN", help="super-resolution model (diffusion or conv superres)")
    b.add_argument("--out", required=True, metavar="DIR", help="pipeline directory to write")
    b.add_argument("--guidance", type=float, default=None, metavar="λ", help="default guidance scale")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="a default diffusion setting: steps, scheduler, eta, thresholding, percentile, sr_steps, "
                        "sr_aug_level, sr_guidance (repeatable)")
    b.set_defaults(func=_pipeline)


def _train(args) -> int:
    import time

    from vqgen.diffusion.train import FAMILY, DiffusionTrainConfig, train_diffusion
    from vqgen.runtime import requested_config

    t0 = time.time()
    sets = list(args.overrides) + ([f"steps={args.steps}"] if args.steps is not None else []) + \
        ([f"text_encoder={args.text}"] if args.text is not None else [])
    cfg = requested_config(DiffusionTrainConfig, FAMILY, args.out, args.preset, sets, default_preset="tiny")
    result = train_diffusion(cfg, args.data, args.out, show_progress=not args.no_progress)
    print(f"step {result.step}: held-out loss {result.heldout_loss:.4f}; model: {args.out}/model")
    if result.model.config.sr_scale == 1:
        from vqgen.pipelines.diffusion import DiffusionTextToImagePipeline

        pipe = DiffusionTextToImagePipeline(result.model)
        pipe = pipe.with_components(sampling=pipe.sampling.merged(guidance_scale=cfg.guidance))
        pipe.save_pretrained(f"{args.out}/pipeline")
        print(f"pipeline: {args.out}/pipeline ({time.time() - t0:.0f} s)")
    return 0


def _pipeline(args) -> int:
    from vqgen.config import apply_overrides
    from vqgen.diffusion.sampling import DiffusionSampling
    from vqgen.io import load_pretrained
    from vqgen.pipelines.diffusion import DiffusionTextToImagePipeline
    from vqgen.runtime import model_dir

    unet = load_pretrained(model_dir(args.base))
    upsampler = load_pretrained(model_dir(args.sr)) if args.sr else None
    pipe = DiffusionTextToImagePipeline(unet, upsampler, diffusion=apply_overrides(DiffusionSampling(), args.overrides))
    if args.guidance is not None:
        pipe = pipe.with_components(sampling=pipe.sampling.merged(guidance_scale=args.guidance))
    pipe.save_pretrained(args.out)
    size = f"{pipe.image_size} px" + (f" → {pipe.image_size * pipe.upsample_scale} px" if upsampler is not None else "")
    print(f"diffusion pipeline ({size}): {args.out}")
    return 0
