"""``vqgen superres ...``: train the super-resolution module on a frozen tokenizer."""
from __future__ import annotations

import json

from vqgen.cli import add_group, add_set_argument, positive_int


def register(sub) -> None:
    group = add_group(sub, "superres", help="train the super-resolution module (x2, x4) on a frozen tokenizer",
                      description="Convolutional residual layers mapping tokenizer reconstructions to a higher "
                                  "resolution, trained with the tokenizer's losses (L2, MS-SSIM).")
    p = group.add_parser("train", help="train on images at the higher size (resumes an existing RUN)",
                         description="Inputs: the frozen tokenizer's reconstructions of the images downsampled "
                                     "to its size. Targets: the images at scale x that size, so make the data "
                                     "at the higher size (e.g. `vqgen data shapes --size 128` for a 64px "
                                     "tokenizer and --scale 2). Prints held-out PSNR against bicubic upsampling. "
                                     "An image folder is read into memory; WebDataset shards stream, each batch "
                                     "reconstructed as it arrives (split by rank and worker, --set shuffle_buffer=N, "
                                     "--set stream_workers=N; the position is in each checkpoint).")
    p.add_argument("--data", required=True, metavar="DATA",
                   help="image folder, or WebDataset shards to stream (a folder of .tar, a brace pattern, a file: or "
                        "pipe: URL), at the higher resolution")
    p.add_argument("--tokenizer", required=True, metavar="TOKRUN",
                   help="a tokenizer run (RUN/model, else its latest checkpoint) or a saved tokenizer directory")
    p.add_argument("--scale", type=int, choices=[2, 4], default=None, help="upsampling factor (default: the preset's, 2)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="config preset: tiny, small (default: small for a new RUN, the saved config for an existing one)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N", help="total training steps (default: the preset's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_argument(p)
    p.set_defaults(func=_train)


def _train(args) -> int:
    from vqgen.runtime import requested_config
    from vqgen.superres.train import FAMILY, SuperResTrainConfig, train_superres
    from vqgen.tokenizer.encode import load_tokenizer

    sets = list(args.overrides) + ([f"model.scale={args.scale}"] if args.scale is not None else []) + \
        ([f"steps={args.steps}"] if args.steps is not None else [])
    cfg = requested_config(SuperResTrainConfig, FAMILY, args.out, args.preset, sets, default_preset="small")
    tokenizer = load_tokenizer(args.tokenizer)
    _, m = train_superres(cfg, tokenizer, args.data, args.out, show_progress=not args.no_progress)
    print(f"held-out PSNR x{cfg.model.scale}: super-resolved {m['psnr_sr']:.2f} dB, bicubic {m['psnr_bicubic']:.2f} dB "
          f"(of the same reconstructions); bicubic of the downsampled originals {m['psnr_bicubic_original']:.2f} dB")
    print(json.dumps(m))
    return 0
