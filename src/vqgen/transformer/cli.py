"""``vqgen train``, ``vqgen probe`` and ``vqgen transformer presets``."""
from __future__ import annotations

import json

from vqgen.cli import add_group, add_set_argument, positive_int



def register(sub) -> None:
    p = sub.add_parser("train", help="train a token transformer on pre-tokenized codes (resumes an existing RUN)",
                       description="Train VIM / Parti / unified transformers on CODES written by "
                                   "`vqgen tokenizer encode`. Runs on CPU, a GPU, or under torchrun (DDP; FSDP "
                                   "with --set train.fsdp=true: built on the meta device, sharded checkpoints; `vqgen export` "
                                   "gathers one). Re-running the same command on an existing RUN "
                                   "resumes it (only steps, intervals and time limits may change). Fine-tune with "
                                   "--set train.init_from=MODEL_OR_RUN and keep parameters fixed with "
                                   "--set train.freeze='blocks.0.*,tok_emb*' (name patterns).")
    p.add_argument("--codes", required=True, metavar="CODES",
                   help="code directory (info.json + shards), or WebDataset code shards to stream: a folder of "
                        ".tar (vqgen data code-shards), a brace pattern, a file: or pipe: URL (docs/scaling.md)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="config preset (see `vqgen transformer presets`); required for a new run")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (resumed if it exists)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N", help="total optimisation steps")
    p.add_argument("--text-tokenizer", default=None, metavar="PATH",
                   help="use this tokenizer.json instead of training a BPE on the captions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_argument(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("probe", help="linear probe: frozen mean-pooled block features -> linear classifier accuracy")
    p.add_argument("run", metavar="RUN", help="training run directory (uses RUN/model) or a model directory")
    p.add_argument("--data", required=True, metavar="DIR", help="labelled code directory (vqgen tokenizer encode)")
    p.add_argument("--layer", required=True, type=positive_int, metavar="L", help="block whose output is probed (1-based)")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="seed of the train/test split (default 0)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="device (default cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_probe)

    group = add_group(sub, "transformer", help="token transformer presets and models")
    p = group.add_parser("presets", help="list presets with parameter counts (built on the meta device)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override fields before counting, e.g. model.grid=16,16")
    p.set_defaults(func=_presets)


def _train(args) -> int:
    from vqgen.transformer.train import train

    res = train(args.codes, args.out, preset=args.preset, overrides=args.overrides, steps=args.steps,
                text_tokenizer=args.text_tokenizer, show_progress=not args.no_progress)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"step {res.step}: val_loss {res.val_loss:.4f} nats/code (unigram baseline {res.unigram_val_loss:.4f}), "
              f"skipped steps {res.skipped_steps}; model in {res.run_dir / 'model'}")
    return 0


def _probe(args) -> int:
    from vqgen.metrics.probe import probe_run

    res = probe_run(args.run, args.data, args.layer, device=args.device, seed=args.seed)
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"layer {res.layer}/{res.num_blocks}: accuracy {res.accuracy:.4f} "
              f"({res.num_test} held out, {res.num_train} train, {res.num_classes} classes)")
    return 0


def _presets(args) -> int:
    import torch

    from vqgen.config import apply_overrides, get_preset, preset_names
    from vqgen.transformer import build_model
    from vqgen.transformer.config import FAMILY

    for name in preset_names(FAMILY):
        cfg = apply_overrides(get_preset(FAMILY, name), args.overrides)
        m = cfg.model
        if getattr(m, "text", None) is not None and m.text.encoder == "pretrained":
            print(f"{name:14s} (pretrained text encoder: not counted)")
            continue
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(m).parameters())
        extra = f" enc {m.encoder_depth}" if m.family == "parti" else ""
        print(f"{name:14s} {m.family:8s} {n / 1e6:10.1f}M  dim {m.dim} depth {m.depth}{extra} heads {m.heads} "
              f"mlp {m.mlp_dim} grid {'x'.join(map(str, m.grid))} K {m.codebook_size}")
    return 0
