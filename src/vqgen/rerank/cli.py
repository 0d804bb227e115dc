"""``vqgen rerank ...``: train a text–image reranker and measure how well it picks."""
from __future__ import annotations

import json

from vqgen.cli import add_group, add_set_argument, positive_int


def register(sub) -> None:
    group = add_group(sub, "rerank", help="train and evaluate the contrastive text-image reranker",
                      description="A small CLIP-style dual encoder that keeps the best k of n samples per prompt.")

    p = group.add_parser("train", help="train a reranker on images with captions (resumes an existing RUN)",
                         description="Train a BPE tokenizer on the captions, then the dual encoder (symmetric "
                                     "InfoNCE, learned temperature, optional one-edit hard negatives). Prints the "
                                     "held-out caption->image R@1 at the end; the model goes to RUN/model/. An image "
                                     "folder is read into memory; WebDataset shards stream (split by rank and "
                                     "worker, --set shuffle_buffer=N, --set stream_workers=N; the position is in "
                                     "each checkpoint; the held-out pairs, by key, are read into memory).")
    p.add_argument("--data", required=True, metavar="DATA",
                   help="image folder (metadata.jsonl with captions), or WebDataset shards to stream: a folder of "
                        ".tar, a brace pattern data/{00000..00099}.tar, a file: or pipe: URL")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="config preset: tiny, small (default: small for a new RUN, the saved config for an existing one)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N", help="total training steps (default: the preset's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_argument(p)
    p.set_defaults(func=_train)

    p = group.add_parser("eval", help="held-out retrieval and evaluator-judged picks on shapes prompts",
                         description="With --data: caption->image R@1 among --group images and hard-negative "
                                     "accuracy on the folder's held-out split. Always: for --prompts suite "
                                     "prompts, pick one of --candidates renders and ask the exact shapes evaluator "
                                     "whether the pick satisfies the prompt. The JSON summary is the last line.")
    p.add_argument("run", metavar="RUN", help="a reranker run or model directory")
    p.add_argument("--data", default=None, metavar="DATA",
                   help="image folder or WebDataset shards for retrieval (the held-out split the run trained without)")
    p.add_argument("--group", type=int, default=32, metavar="N", help="retrieval among N images (default 32)")
    p.add_argument("--prompts", type=int, default=100, metavar="N", help="suite prompts to test (default 100)")
    p.add_argument("--candidates", type=int, default=8, metavar="N", help="renders per prompt (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts, distractors and layouts (default 0)")
    p.add_argument("--suite", default="suite", metavar="NAME",
                   help="prompt set of the picks: suite, paraphrases, holdout (unfamiliar wording) or a path")
    p.set_defaults(func=_eval)


def _train(args) -> int:
    from vqgen.rerank.train import FAMILY, RerankTrainConfig, train_reranker
    from vqgen.runtime import requested_config

    cfg = requested_config(RerankTrainConfig, FAMILY, args.out, args.preset,
                           list(args.overrides) + ([f"steps={args.steps}"] if args.steps is not None else []),
                           default_preset="small")
    _, metrics = train_reranker(cfg, args.data, args.out, show_progress=not args.no_progress)
    print(f"held-out caption->image R@1 among {cfg.retrieval_group}: {metrics['heldout_r1']:.3f} "
          f"(chance {metrics['heldout_r1_chance']:.3f})")
    if "heldout_hard_neg_acc" in metrics:
        print(f"held-out hard-negative accuracy: {metrics['heldout_hard_neg_acc']:.3f} (chance 0.5)")
    print(json.dumps(metrics))
    return 0


def _holdout_every(run: str) -> int:
    """The run's held-out split (its saved training config), else every 10th pair."""
    from pathlib import Path

    from vqgen.io import load_config
    from vqgen.errors import ConfigError
    from vqgen.rerank.train import RerankTrainConfig

    try:
        return load_config(RerankTrainConfig, Path(run) / "config.json").holdout_every
    except ConfigError:
        return 10


def _eval(args) -> int:
    from vqgen.errors import VqgenError
    from vqgen.rerank import ClipReranker
    from vqgen.shapes.rerank_eval import hard_negative_accuracy, retrieval_at_1, shapes_pick
    from vqgen.rerank.train import load_pairs, load_reranker

    if args.group < 2 or args.prompts < 1 or args.candidates < 2:
        raise VqgenError("--group and --candidates must be >= 2, --prompts >= 1")
    model = load_reranker(args.run)
    if not isinstance(model, ClipReranker):
        raise VqgenError(f"{args.run}: `vqgen rerank eval` measures CLIP rerankers; score a text-after-image "
                         "model with `vqgen eval shapes --model PIPELINE --rerank N --reranker RUN`")
    summary: dict = {}
    if args.data:
        data = load_pairs(args.data, model.config.image_size, _holdout_every(args.run), show_progress=False)
        imgs = data.images[data.heldout_idx]
        texts = [data.texts[i] for i in data.heldout_idx.tolist()]
        summary["heldout_r1"] = retrieval_at_1(model, imgs, texts, args.group)
        summary["group"] = args.group
        try:
            summary["heldout_hard_neg_acc"] = hard_negative_accuracy(model, imgs, texts, seed=args.seed)
        except VqgenError:
            pass
    for kind in ("hard", "random"):
        r = shapes_pick(model, args.prompts, args.candidates, kind, size=model.config.image_size, seed=args.seed,
                        suite=args.suite)
        summary[f"pick_{kind}"] = r.to_dict()
        print(f"{kind} distractors: pick satisfies the prompt {r.pick_passed:.3f} (chance {r.chance:.3f}), "
              f"true render picked {r.true_picked:.3f}, AUC {r.auc:.3f}  [{r.prompts} prompts x {r.candidates}]")
    print(json.dumps(summary))
    return 0
