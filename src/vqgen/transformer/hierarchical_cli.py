"""``vqgen hierarchical train`` and ``vqgen hierarchical build``: the CogView2 hierarchy's model and pipeline."""
from __future__ import annotations

import json

from vqgen.cli import add_group, add_set_argument, positive_int


def register(sub) -> None:
    group = add_group(sub, "hierarchical", help="hierarchical text-to-image: super-resolution model and pipeline")
    p = group.add_parser("train", help="train the super-resolution transformer on paired 8x8 / 16x16 code shards",
                         description="Train text + low-resolution codes -> high-resolution codes (direct "
                                     "super-resolution and LoPAR's model) on two code directories of the same images. "
                                     "Re-running the same command on an existing RUN resumes it.")
    p.add_argument("--low-codes", required=True, metavar="CODES", help="low-resolution codes (vqgen tokenizer encode)")
    p.add_argument("--high-codes", required=True, metavar="CODES", help="high-resolution codes of the same records")
    p.add_argument("--stage1", required=True, metavar="MODEL",
                   help="the low-resolution text-to-code model (its BPE tokenizer is shared)")
    p.add_argument("--preset", default=None, metavar="NAME", help="config preset (tiny, small); required for a new run")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (resumed if it exists)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N", help="total optimisation steps")
    p.add_argument("--cpu-minutes", type=float, default=0.0, metavar="M",
                   help="stop after this many minutes of CPU time (0: no limit; continued across resumes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_argument(p)
    p.set_defaults(func=_train)

    p = group.add_parser("build", help="assemble a hierarchical pipeline directory",
                         description="High-resolution tokenizer + super-resolution model + stage-1 model (+ reranker) "
                                     "-> a hierarchical_text_to_image pipeline directory.")
    p.add_argument("--tokenizer", required=True, metavar="MODEL", help="the high-resolution tokenizer (model or run)")
    p.add_argument("--sr", required=True, metavar="MODEL", help="the super-resolution model (model or run)")
    p.add_argument("--stage1", required=True, metavar="MODEL", help="the low-resolution text-to-code model")
    p.add_argument("--reranker", default=None, metavar="MODEL", help="optional reranker (CLIP or caption scorer)")
    p.add_argument("--out", required=True, metavar="DIR", help="pipeline directory to write")
    p.add_argument("--sampling", dest="sampling", action="append", default=[], metavar="FIELD=VALUE",
                   help="a default sampling setting, e.g. lopar_remask=0.5 (repeatable; decoder defaults to lopar)")
    p.set_defaults(func=_build)


def _train(args) -> int:
    from vqgen.transformer.hierarchical_train import train

    res = train(args.low_codes, args.high_codes, args.stage1, args.out, preset=args.preset, overrides=args.overrides,
                steps=args.steps, cpu_minutes=args.cpu_minutes, show_progress=not args.no_progress)
    print(f"step {res['step']}: val_loss {res['val_loss']:.4f}, val_dsr_loss {res['val_dsr_loss']:.4f} nats/code; "
          f"model in {args.out}/model")
    return 0


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _build(args) -> int:
    from vqgen.errors import ConfigError
    from vqgen.io import load_pretrained
    from vqgen.pipelines.hierarchical import HierarchicalTextToImagePipeline
    from vqgen.runtime import model_dir
    from vqgen.sampling.settings import SamplingConfig

    settings = {"decoder": "lopar"}
    for item in args.sampling:
        if "=" not in item:
            raise ConfigError(f"--sampling takes FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        settings[key.strip()] = _value(value.strip())
    sampling = SamplingConfig().merged(**settings)
    sr = load_pretrained(model_dir(args.sr)).attach_low(load_pretrained(model_dir(args.stage1)))
    reranker = load_pretrained(model_dir(args.reranker)).eval() if args.reranker else None
    pipe = HierarchicalTextToImagePipeline(load_pretrained(model_dir(args.tokenizer)).eval(), sr.eval(), reranker,
                                           sampling=sampling)
    print(f"pipeline: {pipe.save_pretrained(args.out)}")
    return 0
