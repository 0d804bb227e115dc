"""Build the hierarchical (CogView2) text-to-image pipeline on the ``shapes`` domain with vqgen's own commands.

    python configs/hierarchical_model.py --out runs/cogview2

Steps (each is skipped when its output already exists, so an interrupted run continues; the
training steps run through ``/tmp/coord/cpu_slot`` when that exists, i.e. on the shared machine):

1. ``vqgen data shapes``          8,000 scenes at 64 px (seed 0; the prompt suite is never a caption);
2. ``vqgen tokenizer train``      the high-resolution tokenizer: a ViT-VQGAN with 4x4 patches ->
                                  16x16 codes of a 512-entry codebook (lookup dim 8, dead-code
                                  restart), stopped by a CPU-time limit (``--tokenizer-minutes``);
3. ``vqgen tokenizer encode``     the scenes -> 8x8 codes with the bundled tokenizer (the low
                                  resolution the bundled transformer writes) and -> 16x16 codes;
4. ``vqgen hierarchical train``   the super-resolution transformer (``small`` preset: width 128, 4
                                  blocks, 5x5 local window, 3x3 cross-resolution window) on the
                                  paired codes, with the bundled transformer's BPE, stopped by
                                  ``--sr-minutes`` of CPU time;
5. ``vqgen hierarchical build``   bundled transformer (stage 1, 8x8) + super-resolution model +
                                  16x16 tokenizer + bundled CLIP reranker -> a
                                  ``hierarchical_text_to_image`` pipeline with the sampling below.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "vqgen" / "assets" / "default_model"
CPU_SLOT = Path("/tmp/coord/cpu_slot")

NUM_SCENES = 8000
TOKENIZER = ["--preset", "emoji", "--set", "vit.patch_size=4", "--set", "vit.quantizer.codebook_size=512",
             "--set", "vit.quantizer.lookup_dim=8", "--set", "codebook.restart_dead=true",
             "--set", "codebook.dead_after=10", "--set", "codebook.restart_every=10", "--set", "optim.batch_size=16",
             "--set", "optim.warmup_steps=20", "--set", "optim.min_lr_ratio=0.1", "--set", "eval_every=0",
             "--set", "sample_every=250", "--set", "ckpt_every=100", "--set", "log_every=20", "--steps", "1600"]
SR = ["--preset", "small", "--steps", "450", "--set", "train.batch_size=32", "--set", "train.warmup_steps=30",
      "--set", "train.val_every=100", "--set", "train.val_batches=4", "--set", "train.ckpt_every=50"]
# Default sampling: the bundled model's low stage (guidance 2, temperature 0.5, best of 8 by the
# CLIP reranker), then direct super-resolution and LoPAR (docs/cogview2.md has the sweep).
SAMPLING = ["guidance_scale=2.0", "temperature=0.5", "rerank=8", "sr_temperature=0.5", "lopar_remask=0.5",
            "lopar_window=4"]


def vqgen(*args: str, heavy: bool = False) -> None:
    """Run one ``vqgen`` command, echoing it; stop on failure (training holds a CPU slot if there is one)."""
    cmd = [sys.executable, "-m", "vqgen", *args]
    if heavy and CPU_SLOT.exists():
        cmd = [str(CPU_SLOT), *cmd]
    print("+ vqgen " + " ".join(args), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work directory (data, runs, the assembled pipeline)")
    p.add_argument("--tokenizer-minutes", type=float, default=13.0, help="CPU minutes of tokenizer training")
    p.add_argument("--sr-minutes", type=float, default=16.0, help="CPU minutes of super-resolution training")
    p.add_argument("--stage1", default=str(BUNDLED / "transformer"), help="the low-resolution text-to-code model")
    p.add_argument("--low-tokenizer", default=str(BUNDLED / "tokenizer"), help="its tokenizer (8x8 codes)")
    p.add_argument("--reranker", default=str(BUNDLED / "reranker"), help="the reranker of the pipeline")
    p.add_argument("--sampling", action="append", default=[], help="extra default sampling settings FIELD=VALUE")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, tok, low, high, sr = out / "data", out / "tok16", out / "codes8", out / "codes16", out / "sr"
    if not (data / "metadata.jsonl").is_file():
        vqgen("data", "shapes", "--out", str(data), "--num", str(NUM_SCENES), "--size", "64", "--no-progress")
    if not (tok / "model").is_dir():
        vqgen("tokenizer", "train", "--data", str(data), "--out", str(tok), "--no-progress", *TOKENIZER,
              "--set", f"cpu_limit_min={args.tokenizer_minutes}", heavy=True)
    if not (low / "info.json").is_file():
        vqgen("tokenizer", "encode", args.low_tokenizer, "--data", str(data), "--out", str(low), "--no-progress",
              heavy=True)
    if not (high / "info.json").is_file():
        vqgen("tokenizer", "encode", str(tok), "--data", str(data), "--out", str(high), "--no-progress", heavy=True)
    if not (sr / "model").is_dir():
        vqgen("hierarchical", "train", "--low-codes", str(low), "--high-codes", str(high), "--stage1", args.stage1,
              "--out", str(sr), "--no-progress", "--cpu-minutes", str(args.sr_minutes), *SR, heavy=True)
    pipe = out / "pipeline"
    if pipe.exists():
        shutil.rmtree(pipe)
    settings = [x for s in SAMPLING + args.sampling for x in ("--sampling", s)]
    vqgen("hierarchical", "build", "--tokenizer", str(tok), "--sr", str(sr), "--stage1", args.stage1,
          "--reranker", args.reranker, "--out", str(pipe), *settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
