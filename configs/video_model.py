"""Build the bundled text-to-video model (CogVideo on the ``motion`` domain) with vqgen's commands.

    OMP_NUM_THREADS=1 python configs/video_model.py --out runs/video_model \
        --image-model runs/edit/coglm --install src/vqgen/assets/video_model

Steps (each is skipped when its output already exists, so an interrupted run continues):

1. the inherited text-to-image model: ``--image-model DIR`` (a unified model, run or pipeline), or
   trained here as the CogLM shapes model of issue 13: ``vqgen data shapes`` (10,000 scenes, seed 0),
   ``vqgen tokenizer encode`` with the bundled tokenizer, ``vqgen train --preset unified-small``
   with ``model.coglm_mix=0.5`` for ``--image-steps`` steps;
2. ``vqgen data motion``     1,500 clips at 64 px, 33 frames at 16 fps (seed 0);
3. ``vqgen video encode``    every frame through the bundled tokenizer (8x8 codes of 256);
4. ``vqgen video train``     ``video-key``: the image model frozen, the key-frame temporal channel
                             trained for ``--key-steps`` steps (constant learning rate);
5. ``vqgen video train``     ``video-interp`` from step 4: the interpolation channel only;
6. ``vqgen video build``     tokenizer + the step-5 model -> a ``TextToVideoPipeline`` with the
                             default sampling below; ``--install`` copies it into the package.

The shipped model inherits the final model of the CogLM run of issue 13 (``runs/edit/coglm``: step
1's command with 2,000 steps), so step 1 rebuilds the same image model; the key and interpolation
runs use a constant learning rate, so ``--key-steps``/``--interp-steps`` reproduce the CPU-limited
runs of ``bench/video_inherit.py`` that the shipped model comes from.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "src/vqgen/assets/default_model/tokenizer"
CLIPS = 1500
IMAGE = ["--preset", "unified-small", "--set", "model.coglm_mix=0.5", "--set", "model.dropout=0.0",
         "--set", "train.batch_size=64", "--set", "train.val_every=250", "--set", "train.ckpt_every=250",
         "--set", "train.log_every=20", "--set", "train.warmup_steps=50"]
KEY_STEPS = 140        # what 3 CPU-minutes gave the (a) run of bench/video_inherit.py (2026-12-03)
INTERP_STEPS = 71      # what 1.5 CPU-minutes gave its interpolation run
# default sampling of the bundled pipeline: the best of bench/video_inherit.py's sweep (docs/cogvideo.md)
GUIDANCE = 2.0
TEMPERATURE = 0.7


def vqgen(*args: str) -> None:
    """Run one ``vqgen`` command, echoing it; stop on failure."""
    print("+ vqgen " + " ".join(args), flush=True)
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "vqgen", *args], check=True)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work directory")
    p.add_argument("--image-model", default=None, help="the unified text-to-image model to inherit (else trained)")
    p.add_argument("--image-steps", type=int, default=2000, help="steps of the image model trained in step 1")
    p.add_argument("--key-steps", type=int, default=KEY_STEPS)
    p.add_argument("--interp-steps", type=int, default=INTERP_STEPS)
    p.add_argument("--guidance", type=float, default=GUIDANCE)
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--install", default=None, help="also copy the pipeline here (the package's bundled video model)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = args.image_model
    if image is None:
        shapes, codes, image = out / "shapes", out / "shapes-codes", out / "image"
        if not (shapes / "metadata.jsonl").is_file():
            vqgen("data", "shapes", "--out", str(shapes), "--num", "10000", "--seed", "0", "--no-progress")
        if not (codes / "info.json").is_file():
            vqgen("tokenizer", "encode", str(TOKENIZER), "--data", str(shapes), "--out", str(codes), "--no-progress")
        if not (image / "model").is_dir():
            vqgen("train", "--codes", str(codes), "--out", str(image), "--steps", str(args.image_steps),
                  "--no-progress", *IMAGE)
    motion, clips, key, interp, pipe = (out / n for n in ("motion", "clips", "key", "interp", "pipeline"))
    if not (motion / "metadata.jsonl").is_file():
        vqgen("data", "motion", "--out", str(motion), "--num", str(CLIPS), "--size", "64", "--seed", "0",
              "--no-progress")
    if not (clips / "info.json").is_file():
        vqgen("video", "encode", "--data", str(motion), "--tokenizer", str(TOKENIZER), "--out", str(clips),
              "--no-progress")
    common = ["--set", "train.val_every=100", "--set", "train.ckpt_every=100", "--set", "train.log_every=10"]
    if not (key / "model").is_dir():
        vqgen("video", "train", "--codes", str(clips), "--preset", "video-key", "--out", str(key), "--no-progress",
              "--set", f"train.image_from={image}", "--set", f"train.steps={args.key_steps}", *common)
    if not (interp / "model").is_dir():
        vqgen("video", "train", "--codes", str(clips), "--preset", "video-interp", "--out", str(interp),
              "--no-progress", "--set", f"train.init_from={key}", "--set", f"train.steps={args.interp_steps}", *common)
    vqgen("video", "build", "--tokenizer", str(TOKENIZER), "--transformer", str(interp), "--out", str(pipe),
          "--guidance", str(args.guidance), "--temperature", str(args.temperature))
    if args.install:
        dest = Path(args.install)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(pipe, dest)
        print(f"installed {pipe} -> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
