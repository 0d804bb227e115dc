"""``vqgen tokenizer ...``: train, evaluate, pre-tokenize (encode) and decode with an image tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

from vqgen.cli import add_group, add_set_argument, positive_int
from vqgen.errors import ConfigError, VqgenError



def register(sub) -> None:
    group = add_group(sub, "tokenizer", help="train and use image tokenizers (ViT-VQGAN, CNN-VQGAN)",
                      description="Stage 1: images ⇄ grids of discrete codes.")

    p = group.add_parser("train", help="train a tokenizer on images (resumes an existing RUN)",
                         description="Train a tokenizer. On an existing RUN the same command continues from the "
                                     "latest checkpoint with the run's saved config (only steps, intervals and time "
                                     "limits may change). Under `torchrun` it trains with DDP (FSDP: --set "
                                     "fsdp=true). An image folder is read into memory; WebDataset shards stream "
                                     "(split by rank and worker, --set shuffle_buffer=N, --set stream_workers=N; "
                                     "the position is in each checkpoint; the held-out images, by key, are read "
                                     "into memory).")
    p.add_argument("--data", required=True, metavar="DATA",
                   help="image folder (metadata.jsonl + images), or WebDataset shards to stream (a folder of .tar, "
                        "one .tar, a pattern such as 'shards/{00000..00099}.tar', a file: or pipe: URL)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="config preset (tiny, tiny-cnn, emoji, emoji-plain, emoji-cnn, small, base, large, "
                        "small-large); required for a new RUN")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N", help="total training steps (default: the preset's)")
    p.add_argument("--text-encoder", default=None, metavar="DIR",
                   help="a local Hugging Face text-encoder directory (for cond.kind=text; mean-pooled)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_argument(p)
    p.set_defaults(func=_train)

    p = group.add_parser("eval", help="reconstruction quality and codebook health on an image folder",
                         description="Prints PSNR, SSIM, MS-SSIM, codebook usage, perplexity, dead codes and "
                                     "rFID (null without --fid-features); the JSON summary is the last line.")
    p.add_argument("run", metavar="RUN", help="a training run (RUN/model or its latest checkpoint) or a model dir")
    p.add_argument("--data", required=True, metavar="DATA", help="image folder or WebDataset shards")
    p.add_argument("--split", choices=["heldout", "train", "all"], default="heldout",
                   help="which images: the run's held-out split (default), its training split, or all")
    p.add_argument("--fid-features", default=None, metavar="PATH",
                   help="feature network for rFID: a TorchScript file or a saved model directory")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="B", help="batch size (default 64)")
    p.add_argument("--device", default="auto", help="device (default: auto)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the summary JSON here")
    p.set_defaults(func=_eval)

    p = group.add_parser("encode", help="pre-tokenize an image folder into code shards (for stage 2)")
    p.add_argument("run", metavar="RUN", help="a training run or a model directory")
    p.add_argument("--data", required=True, metavar="DATA", help="image folder or WebDataset shards (streamed)")
    p.add_argument("--out", required=True, metavar="CODES", help="output code directory")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="B", help="batch size (default 64)")
    p.add_argument("--shard-size", type=positive_int, default=10000, metavar="N", help="records per shard (default 10000)")
    p.add_argument("--device", default="auto", help="device (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_encode)

    p = group.add_parser("decode", help="turn a code directory back into an image folder")
    p.add_argument("run", metavar="RUN", help="a training run or a model directory")
    p.add_argument("--codes", required=True, metavar="CODES", help="code directory (from `tokenizer encode`)")
    p.add_argument("--out", required=True, metavar="DIR", help="output image folder")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="decode only the first N")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="B", help="batch size (default 64)")
    p.add_argument("--device", default="auto", help="device (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_decode)


def hf_text_encoder(directory: str):
    """Captions → mean-pooled last hidden states (N, D) of a local Hugging Face encoder (no download)."""
    import torch

    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise VqgenError("--text-encoder needs the `transformers` package (pip install vqgen[text])") from None
    if not Path(directory).is_dir():
        raise VqgenError(f"text encoder directory {directory} not found")
    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModel.from_pretrained(directory, local_files_only=True).eval()

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 64):
            batch = tok(texts[i:i + 64], padding=True, truncation=True, return_tensors="pt")
            h = model(**batch).last_hidden_state  # (B, T, D)
            mask = batch["attention_mask"][..., None].float()  # (B, T, 1)
            out.append((h * mask).sum(1) / mask.sum(1).clamp(min=1))  # (B, D)
        return torch.cat(out)

    return encode


def _train(args) -> int:
    from vqgen.runtime import requested_config
    from vqgen.tokenizer.config import TokenizerTrainConfig
    from vqgen.tokenizer.train import train_tokenizer

    steps = [f"steps={args.steps}"] if args.steps is not None else []
    cfg = requested_config(TokenizerTrainConfig, "tokenizer", args.out, args.preset, list(args.overrides) + steps)
    text_encoder = hf_text_encoder(args.text_encoder) if args.text_encoder else None
    train_tokenizer(cfg, args.data, args.out, text_encoder=text_encoder, show_progress=not args.no_progress)
    return 0


def _eval(args) -> int:
    from vqgen.io import load_config
    from vqgen.metrics.fid import load_feature_extractor
    from vqgen.runtime import pick_device
    from vqgen.tokenizer.config import TokenizerTrainConfig
    import torch

    from vqgen.data.stream import is_stream_source
    from vqgen.tokenizer.data import heldout_key, holdout_split, load_image_set
    from vqgen.tokenizer.encode import load_tokenizer
    from vqgen.tokenizer.evaluate import evaluate_tokenizer

    device = pick_device(args.device)
    model = load_tokenizer(args.run, device=device)
    if model.config.cond.kind != "none":
        raise VqgenError("eval of a conditioned tokenizer needs its conditions; use evaluate_tokenizer() from Python")
    data = load_image_set(args.data, model.config.image_size)
    every = 0
    if args.split != "all":
        run_cfg = Path(args.run) / "config.json"
        try:
            every = load_config(TokenizerTrainConfig, run_cfg).holdout_every
        except ConfigError:
            raise VqgenError(f"--split {args.split} needs the run's config.json ({run_cfg}); use --split all") from None
    if is_stream_source(args.data):  # shards hold out by key, as training did
        held = torch.tensor([heldout_key(k, every) for k in data.keys], dtype=torch.bool)  # (N,)
        train_idx, held_idx = torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()
    else:
        train_idx, held_idx = holdout_split(len(data), every)
    idx = held_idx if args.split == "heldout" else train_idx
    feature_fn = load_feature_extractor(args.fid_features, device) if args.fid_features else None
    stats = evaluate_tokenizer(model, data.images[idx], batch_size=args.batch_size, feature_fn=feature_fn,
                               device=device)
    stats.update({"split": args.split, "codebook_size": model.config.quantizer.codebook_size,
                  "model_type": model.model_type})
    line = json.dumps(stats)
    if args.out:
        from vqgen.io import atomic_write_text
        atomic_write_text(args.out, line + "\n")
    print(line)
    return 0


def _encode(args) -> int:
    from vqgen.runtime import pick_device
    from vqgen.tokenizer.encode import encode_folder, load_tokenizer

    device = pick_device(args.device)
    model = load_tokenizer(args.run, device=device)
    summary = encode_folder(model, args.data, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                            tokenizer_dir=_model_dir(args.run), device=device, show_progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


def _decode(args) -> int:
    from vqgen.runtime import pick_device
    from vqgen.tokenizer.encode import decode_codes, load_tokenizer

    device = pick_device(args.device)
    model = load_tokenizer(args.run, device=device)
    n = decode_codes(model, args.codes, args.out, batch_size=args.batch_size, limit=args.limit, device=device,
                     show_progress=not args.no_progress)
    print(json.dumps({"images": n, "out": args.out}))
    return 0


def _model_dir(run: str) -> str:
    path = Path(run)
    return str(path / "model") if (path / "model" / "config.json").is_file() else str(path)
